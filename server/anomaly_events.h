// The events of WatchAnomalies: what a scoring call hands to the feed (the flagged rows of one
// batch, or a stream's incident changes) and the serialized events built from it. A batch is
// serialized once, by the first watcher that sends from it, and shared by every watcher; a batch
// that every watcher drops unsent (all of them stalled behind a full buffer) is never serialized,
// so a stalled watcher costs one O(1) offer per batch and no event building.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "aeserve/v1/scoring.pb.h"
#include "grpcpp/support/slice.h"
#include "server/model_registry.h"

namespace aeserve::server {

// The flagged rows of one scored batch, as the scoring call hands them over.
struct FlaggedRows {
  ModelHandle handle;
  std::string stream_id;
  std::string source_entity;  // the entity the rows came from (AnomalyEvent.source_entity)
  std::vector<std::string> source_entities;  // or one per flagged row
  int64_t server_time_ms = 0;
  float threshold = 0;
  std::vector<float> values;          // the flagged rows, row-major
  std::vector<float> feature_errors;  // their per-feature errors (scaled units)
  std::vector<float> errors, scores, p_values;
  std::vector<std::string> ids;         // empty when the batch had none
  std::vector<int64_t> timestamps_ms;   // empty when the batch had none
  std::vector<v1::Incident> incidents;  // incident changes (then the rows above are empty)
};

// One batch's events in three lists: every flagged row, the critical ones (severity 2), and the
// incident changes. Sizes are known at once; the serialized events on first use. Thread-safe.
class EventBatch {
 public:
  enum List { kAll = 0, kCritical = 1, kIncidents = 2 };

  explicit EventBatch(FlaggedRows rows);
  const std::string& model() const { return model_; }
  size_t size(List list) const { return sizes_[list]; }
  // The serialized events of `list` (one AnomalyEvent each, the top 3 features of each row);
  // the first call builds every list, and later calls return them as built.
  const std::vector<grpc::Slice>& events(List list) const;
  bool built() const { return built_.load(std::memory_order_acquire); }

 private:
  void Build() const;

  std::string model_;
  size_t sizes_[3] = {0, 0, 0};
  // std::call_once, not absl::call_once: its waiters block in pthread_once, which ThreadSanitizer
  // sees; absl's wait loop is inside Debian's uninstrumented libabsl (a false race in `make tsan`).
  mutable std::once_flag once_;
  mutable FlaggedRows rows_;  // released once built
  mutable std::vector<grpc::Slice> lists_[3];
  mutable std::atomic<bool> built_{false};
};

}  // namespace aeserve::server
