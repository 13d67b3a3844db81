// Rows from ingested samples: one model's bound series, per entity, gathered into rows of its
// features by timestamp. No gRPC and no clock of its own (time is passed in), so it is tested
// with worked examples.
//
// - A sample joins the entity's pending row whose timestamp is within `tolerance_ms` of its own,
//   else starts a row at its timestamp.
// - Several series bound to one feature for one entity (e.g. one per CPU) are summed; a series
//   contributes once to a row: its sample again at the same timestamp is a duplicate (dropped), a
//   later one within tolerance (a scrape interval shorter than the tolerance) starts a new row.
// - A `rate` feature is the per-second increase of each series since its previous sample (a
//   decrease is a counter reset: the new value counts from zero); a series' first sample gives no
//   value, so that feature is missing (NaN) in the row.
// - Readiness is decided after each request (Take), so a request's order of series and samples
//   does not matter. A row is ready when every feature has as many series as in the entity's
//   previous row (so, in a steady state, as soon as the scrape's last series arrives); or when the
//   entity has a sample `flush_ms` newer; or `flush_ms` after its first sample arrived (wall
//   clock, Flush, for an entity that went quiet). Ready rows leave in timestamp order: a ready row
//   takes every older pending row of its entity with it, missing features as NaN. An entity holds
//   at most max_pending_rows rows: one more hands out its oldest at once (even within a request);
//   a sample older than all it holds is then late.
// - A sample at or before (within tolerance) a row already handed out is late: dropped, counted.
#pragma once

#include <climits>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"

namespace aeserve::server {

struct IngestRow {
  std::string entity;
  int64_t timestamp_ms = 0;
  std::vector<float> values;  // one per feature; NaN = missing
};

struct IngestLimits {
  size_t max_entities = 10000;   // per model; samples of further entities are dropped
  size_t max_series = 1000000;   // rate states per model; samples of further series dropped
  size_t max_pending_rows = 64;  // per entity; the oldest leaves when exceeded
  // Values (rows x features) of the rows held for all entities; a sample that would start a row
  // beyond it is refused (kRowLimit).
  size_t max_pending_values = 32u << 20;
  // An entity (and a counter series) with no sample for this long is forgotten, freeing its slot.
  int64_t idle_ms = 3600 * 1000;
};

class RowAssembler {
 public:
  // kDuplicate: the series already has a sample at this timestamp (a retried request); kInvalid:
  // a rate beyond float range.
  enum class Outcome {
    kAccepted,
    kFirstOfRate,
    kLate,
    kDuplicate,
    kInvalid,
    kEntityLimit,
    kSeriesLimit,
    kRowLimit
  };

  RowAssembler(size_t num_features, int64_t tolerance_ms, int64_t flush_ms, IngestLimits limits);

  // One sample of series `series` (a hash of its labels) bound to `feature`. `now_ms` is the
  // wall clock when it arrived (for Flush).
  Outcome Add(std::string_view entity, uint64_t series, size_t feature, bool rate,
              int64_t timestamp_ms, double value, int64_t now_ms);
  // The rows that are ready among those of entities that got samples since the last Take.
  void Take(std::vector<IngestRow>* out);
  // Besides: rows whose first sample arrived `flush_ms` or more before `now_ms`. Entities idle
  // for limits.idle_ms (nothing pending) are forgotten and named in `forgotten`.
  void Flush(int64_t now_ms, std::vector<IngestRow>* out,
             std::vector<std::string>* forgotten = nullptr);

  size_t entities() const { return entities_.size(); }
  // Rows started so far (a request's share is the difference; its memory is bounded by it).
  uint64_t rows_created() const { return rows_created_; }

 private:
  struct Pending {
    std::vector<double> sums;
    std::vector<uint32_t> counts;
    absl::flat_hash_set<uint64_t> series;  // the series that contributed (each at most once)
    int64_t arrived_ms = 0;                // wall clock of its first sample
  };
  struct Entity {
    std::map<int64_t, Pending> rows;  // by timestamp (Rows)
    std::vector<uint32_t> expected;   // series per feature in the last row handed out
    int64_t last_out_ms = INT64_MIN;  // timestamp of the last row handed out
    int64_t newest_ms = INT64_MIN;    // of any sample accepted
    int64_t seen_ms = 0;              // wall clock of the last sample accepted
    bool any_out = false;
    bool touched = false;  // in touched_
  };
  using Entities = absl::node_hash_map<std::string, Entity>;  // node: touched_ points into it
  using Rows = std::map<int64_t, Pending>;
  struct RateState {
    int64_t timestamp_ms;
    double value;
    int64_t seen_ms;  // wall clock
  };

  bool Complete(const Entity& e, const Pending& p) const;
  // Moves the rows Add handed out (full entities) to `out`; they come before any other.
  void TakeHanded(std::vector<IngestRow>* out);
  // Hands out every row of `e` up to and including the one at `upto`.
  void TakeUpTo(const std::string& name, Entity& e, Rows::iterator upto,
                std::vector<IngestRow>* out);

  const size_t num_features_;
  const int64_t tolerance_ms_, flush_ms_;
  const IngestLimits limits_;
  Entities entities_;
  std::vector<Entities::value_type*> touched_;  // entities with samples since the last Take
  // Rows handed out, kept (with their vectors' capacity) for the next rows to reuse.
  std::vector<Rows::node_type> spare_;
  std::vector<IngestRow> handed_;  // out of full entities since the last Take or Flush
  uint64_t rows_created_ = 0;
  size_t pending_rows_ = 0;     // held, all entities
  int64_t rates_swept_ms_ = 0;  // wall clock of the last sweep of idle rate states
  absl::flat_hash_map<uint64_t, RateState> rates_;
};

}  // namespace aeserve::server
