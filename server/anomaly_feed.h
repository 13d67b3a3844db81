// WatchAnomalies: flagged samples fan out to subscribed watchers. A scoring call only copies its
// flagged rows into the feed's queue (bounded; the oldest batch is dropped and counted when full);
// one fan-out thread builds the events (top features, with its own scoring context) and offers
// each batch to the watchers as one shared, immutable object, so scoring pays neither for event
// building nor for the number of watchers, and a watcher costs O(1) per batch however far behind
// it is. Each watcher buffers at most `buffer` events; past it the oldest waiting ones are dropped
// and counted, and the next event the watcher receives carries how many were dropped before it.
// At most --max_watchers watch at once.
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "grpcpp/support/slice.h"
#include "server/executor.h"
#include "server/model_registry.h"
#include "server/server_metrics.h"

namespace aeserve::server {

class AnomalyFeed;

// The flagged rows of one scored batch, as the scoring call hands them over.
struct FlaggedRows {
  ModelHandle handle;
  std::string stream_id;
  int64_t server_time_ms = 0;
  float threshold = 0;
  std::vector<float> values;          // the flagged rows, row-major
  std::vector<float> feature_errors;  // their per-feature errors (scaled units)
  std::vector<float> errors, scores, p_values;
  std::vector<std::string> ids;         // empty when the batch had none
  std::vector<int64_t> timestamps_ms;   // empty when the batch had none
  std::vector<v1::Incident> incidents;  // incident changes (then the rows above are empty)
};

// The events of one batch, serialized once and shared by every watcher that takes them.
struct EventBatch {
  std::string model;
  std::vector<grpc::Slice> all, critical, incidents;
};

// One WatchAnomalies call. Lock order: AnomalyFeed::mu_ before AnomalyWatcher::mu_.
// The call is a stream for gRPC's core (see ScoringService: registered with StreamServerSide), so
// its request is read only after `gate` (the token check) passed; then it subscribes.
class AnomalyWatcher : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  AnomalyWatcher(AnomalyFeed* feed, size_t buffer, const grpc::Status& gate);
  // Called by the feed: queue the batch's events this watcher wants, dropping (and counting) the
  // oldest waiting ones past the buffer.
  void Offer(const std::shared_ptr<const EventBatch>& batch);
  // Ends the watch (server shutdown): UNAVAILABLE.
  void Close();
  bool WantsModel(const std::string& model) const;

  void OnReadDone(bool ok) override;  // the request: parse it, then subscribe
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  struct Waiting {  // events [begin, end) of one batch's list
    std::shared_ptr<const EventBatch> batch;
    const std::vector<grpc::Slice>* list;
    size_t begin, end;
  };
  void Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  AnomalyFeed* feed_;
  // From the request, set before the watcher subscribes (the feed reads them after that).
  std::string model_;
  uint32_t min_severity_ = 0;
  bool incidents_ = false;  // incident events instead of per-sample ones
  const size_t buffer_;
  grpc::ByteBuffer request_;
  bool subscribed_ = false;
  absl::Mutex mu_;
  std::deque<Waiting> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_ ABSL_GUARDED_BY(mu_) = 0;     // events in queue_
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;  // dropped since the last event sent
  grpc::ByteBuffer sending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

class AnomalyFeed {
 public:
  // `max_watchers` bounds concurrent watchers; `max_queued` bounds events waiting for fan-out.
  AnomalyFeed(ServerMetrics* metrics, int max_watchers = 1024, size_t max_queued = 65536);
  ~AnomalyFeed();  // stops the fan-out thread

  // Cheap check for the scoring path: are there any watchers at all?
  bool HasWatchers() const { return watchers_count_.load(std::memory_order_relaxed) > 0; }
  int watchers() const { return watchers_count_.load(std::memory_order_relaxed); }
  // Queues a scored batch's flagged rows for fan-out and returns at once.
  void Publish(FlaggedRows rows);
  // Queues a stream batch's incident changes for incident watchers.
  void PublishIncidents(const ModelHandle& handle,
                        const google::protobuf::RepeatedPtrField<v1::Incident>& incidents);
  // False when --max_watchers watch already (or the feed is closed: the watcher is then closed).
  bool Subscribe(AnomalyWatcher* w);
  void Unsubscribe(AnomalyWatcher* w);
  void CloseAll();
  int max_watchers() const { return max_watchers_; }
  void CountDropped(uint64_t n) {
    if (metrics_ != nullptr) metrics_->RecordDroppedEvents(n);
  }

 private:
  void FanOut();
  std::shared_ptr<const EventBatch> BuildEvents(const FlaggedRows& rows);

  ServerMetrics* metrics_;
  const int max_watchers_;
  const size_t max_queued_;
  std::atomic<int> watchers_count_{0};
  absl::Mutex mu_;
  std::set<AnomalyWatcher*> watchers_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // Events waiting for the fan-out thread (its own lock, so Publish never waits for fan-out).
  absl::Mutex queue_mu_;
  std::deque<FlaggedRows> queue_ ABSL_GUARDED_BY(queue_mu_);
  size_t queued_rows_ ABSL_GUARDED_BY(queue_mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread fan_out_;
};

}  // namespace aeserve::server
