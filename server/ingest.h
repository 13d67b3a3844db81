// Ingest: series pushed to aeserve (Prometheus remote write, remote_write.h) become rows of the
// models they are bound to and are scored as they arrive — no client code. Per model, a binding
// (IngestBinding, stored with the model in file INGEST) names the series that fill each feature;
// rows are assembled per entity (ingest_rows.h), scored by the entity's model or the generic one on
// the scoring workers, and their results go to /metrics (aeserve_ingest_error / _anomalous /
// _severity per model and entity), to WatchAnomalies and to the autopilot's retention.
#pragma once

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/admin.pb.h"
#include "aeserve/v1/model.pb.h"
#include "engine/window.h"
#include "server/ingest_rows.h"
#include "server/ingest_selector.h"
#include "server/metrics/metrics.h"
#include "server/retention.h"
#include "server/write_view.h"
#include "spdlog/logger.h"

namespace aeserve::server {

class AnomalyFeed;
class Autopilot;
class Executor;
class ModelRegistry;
class TrainingJobs;

// What one write request did with its samples.
struct IngestCounts {
  uint64_t accepted = 0;   // joined a row
  uint64_t unmatched = 0;  // no binding selects the series (ignored)
  uint64_t late = 0;       // at or before a row already scored (or a repeated sample)
  uint64_t limited = 0;    // over --ingest_max_entities or the series bound
  uint64_t invalid = 0;    // NaN/Inf values (Prometheus's stale markers among them)
  uint64_t rows = 0;       // rows handed to scoring
};

class Ingest {
 public:
  struct Config {
    IngestLimits limits;
    uint32_t max_batch_rows = 1 << 20;
    int max_queue = 1024;  // the scoring queue's bound: writes are refused when half full
    // Values (rows x features) of the rows waiting for scoring, per model (the oldest dropped).
    size_t max_queued_values = 64u << 20;
    double flush_tick_seconds = 1;
    uint64_t max_training_values = 256u << 20;  // a job from a recording holds at most this many
  };
  // `metrics` may be null (no /metrics); `feed` and `autopilot` may be null.
  Ingest(ModelRegistry* registry, Executor* executor, AnomalyFeed* feed, Autopilot* autopilot,
         TrainingJobs* jobs, metrics::Registry* metrics, Config config,
         std::shared_ptr<spdlog::logger> log);
  ~Ingest();

  // Reads the bindings in the store and starts the flush thread.
  void Start();
  // Writes are refused (UNAVAILABLE) from here on; stops the flush thread. Rows still being
  // assembled are not scored.
  void Stop();
  // Picks up bindings other replicas changed (the store poll).
  void Reload();

  absl::StatusOr<v1::IngestStatus> SetBinding(const std::string& model,
                                              const v1::IngestBinding& binding, bool clear);
  // False when the model has no binding.
  bool Status(const std::string& model, v1::IngestStatus* out) const;
  // Checks and defaults (INVALID_ARGUMENT naming the field).
  static absl::StatusOr<v1::IngestBinding> Resolve(const v1::IngestBinding& b);

  // Recording (a training set made on the server from the ingested rows).
  absl::StatusOr<v1::IngestStatus> Record(const std::string& model, double seconds,
                                          uint64_t max_rows, bool stop);
  absl::StatusOr<v1::TrainingJob> TrainFromRecording(const v1::TrainingJobHeader& header,
                                                     const std::string& actor);

  // One decoded write request: its samples join rows, and the rows that are ready are scored
  // before this returns. UNAVAILABLE (nothing taken) when the scoring queue is too full.
  // With `wait` false (OTLP, on a gRPC thread) the rows are handed to the workers and not waited
  // for.
  absl::StatusOr<IngestCounts> Write(const WriteView& request, bool wait = true);

 private:
  struct Bound;
  struct Index;     // metric name -> (bound model, feature)
  struct Recorder;  // a model's recording: its state file and its rows

  std::shared_ptr<Bound> Find(const std::string& model) const;
  // The model's recorder, read from the store when first asked for.
  std::shared_ptr<Recorder> RecorderOf(const std::string& model);
  // Takes the rows that are ready (Take, or with `flush` also the quiet ones) and queues them for
  // scoring, and for the recording while one runs. Returns the rows taken; `pending` is set when
  // the model has rows queued.
  size_t TakeReady(Bound& b, bool flush, int64_t now_ms, bool* pending);
  absl::Status WriteRecording(const std::string& model, Recorder& r);

  // Applies a resolved binding read from (or just written to) the store.
  absl::Status Apply(const std::string& model, const v1::IngestBinding& b, std::string bytes);
  void Unbind(const std::string& model);
  // Marks a binding that leaves (Bound::retired) and waits for its current users.
  void Retire(Bound& b);
  // The metric-name index of every bound model, made again after a change.
  void RebuildIndex() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An entity's result gauges leave /metrics (metrics on).
  void RemoveGauges(const std::string& model, const std::string& entity);
  std::shared_ptr<const Index> index() const;
  // Scores what `b` has queued, in order; on a worker.
  void ScoreQueued(Bound& b, class Worker& worker);
  // Queues scoring of every bound model in `touched` and (when `wait`) waits for it.
  bool Schedule(const std::vector<std::shared_ptr<Bound>>& touched, bool wait);
  void FlushLoop();
  std::string FileOf(const std::string& model) const;

  ModelRegistry* const registry_;
  Executor* const executor_;
  AnomalyFeed* const feed_;
  Autopilot* const autopilot_;
  TrainingJobs* const jobs_;
  const Config config_;
  const std::shared_ptr<spdlog::logger> log_;

  absl::Mutex apply_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // one Apply or Unbind at a time
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Bound>> bound_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const Index> index_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Recorder>> recorders_ ABSL_GUARDED_BY(mu_);

  metrics::Family<metrics::Counter>* samples_ = nullptr;  // by result
  metrics::Family<metrics::Gauge>* error_ = nullptr;      // by model, entity
  metrics::Family<metrics::Gauge>* anomalous_ = nullptr;
  metrics::Family<metrics::Gauge>* severity_ = nullptr;
  metrics::Family<metrics::Gauge>* alarm_ = nullptr;
  metrics::Family<metrics::Counter>* rows_ = nullptr;     // by model, result
  metrics::Family<metrics::Counter>* flagged_ = nullptr;  // by model

  absl::Mutex stop_mu_;
  bool stopping_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread flusher_;
};

}  // namespace aeserve::server
