// WatchAnomalies: flagged samples fan out to subscribed watchers. A scoring call only copies its
// flagged rows into the feed's queue (bounded; the oldest batch is dropped and counted when full);
// one fan-out thread offers each batch to the watchers as one shared object whose events are
// serialized once, when a watcher first sends from it (anomaly_events.h), so scoring pays neither
// for event building nor for the number of watchers. Each watcher buffers at most
// kWatcherBuffer events; past it the oldest waiting ones are dropped and counted, and the next
// event the watcher receives carries how many were dropped before it. At most --max_watchers
// watch at once.
//
// A stalled watcher (its buffer full and a write its client has not taken) is parked: the feed
// stops offering it batches and only counts, per batch and per kind of watcher, the events every
// parked watcher drops, so parked watchers cost nothing per batch however many there are. When
// its write completes it catches up from the feed's recent batches (the newest events up to its
// buffer; the rest counted as dropped), exactly as if it had been offered every batch, as long as
// those batches are still among the last 4 x kWatcherBuffer events the feed keeps.
#pragma once

#include <array>
#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "grpcpp/support/slice.h"
#include "server/anomaly_events.h"
#include "server/executor.h"
#include "server/model_registry.h"
#include "server/server_metrics.h"

namespace aeserve::server {

class AnomalyFeed;

// One WatchAnomalies call. Lock order: AnomalyFeed::mu_ before AnomalyWatcher::mu_.
// The call is a stream for gRPC's core (see ScoringService: registered with StreamServerSide), so
// its request is read only after `gate` (the token check) passed; then it subscribes.
class AnomalyWatcher : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  AnomalyWatcher(AnomalyFeed* feed, size_t buffer, const grpc::Status& gate);
  struct Offered {
    uint64_t dropped = 0;  // events dropped from the buffer (the feed counts them)
    bool parked = false;   // the watcher is stalled: offer it nothing until it says so
  };
  // Called by the feed: queue the batch's events this watcher wants, dropping the oldest waiting
  // ones past the buffer.
  Offered Offer(const std::shared_ptr<const EventBatch>& batch);
  // Called by the feed when a parked watcher's write completed: `batches` (oldest first) are the
  // newest of the `missed` events it was not offered; the others count as dropped before them.
  void CatchUp(const std::vector<std::shared_ptr<const EventBatch>>& batches, uint64_t missed);
  // Ends the watch (server shutdown): UNAVAILABLE.
  void Close();
  bool WantsModel(const std::string& model) const;
  // The model it watches ("" = every model) and the list of events it takes from each batch.
  const std::string& model() const { return model_; }
  EventBatch::List list() const;

  void OnReadDone(bool ok) override;  // the request: parse it, then subscribe
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  struct Waiting {  // events [begin, end) of one batch's list
    std::shared_ptr<const EventBatch> batch;
    EventBatch::List list;
    size_t begin, end;
  };
  friend class AnomalyFeed;
  uint64_t Queue(const std::shared_ptr<const EventBatch>& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
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
  bool parked_ ABSL_GUARDED_BY(mu_) = false;  // set by Offer, cleared by CatchUp
  // The feed's bookkeeping (guarded by AnomalyFeed::mu_): parked, since which batch, and how
  // many events of its kind had been published then.
  bool in_parked_ = false;
  uint64_t parked_seq_ = 0;
  uint64_t parked_published_ = 0;
};

class AnomalyFeed {
 public:
  static constexpr size_t kWatcherBuffer = 1024;  // events each watcher buffers

  // `max_watchers` bounds concurrent watchers; `max_queued` bounds events waiting for fan-out.
  AnomalyFeed(ServerMetrics* metrics, int max_watchers = 1024, size_t max_queued = 65536);
  ~AnomalyFeed();  // stops the fan-out thread

  // Cheap check for the scoring path: are there any watchers at all?
  bool HasWatchers() const { return watchers_count_.load(std::memory_order_relaxed) > 0; }
  int watchers() const { return watchers_count_.load(std::memory_order_relaxed); }
  int stalled() const { return parked_count_.load(std::memory_order_relaxed); }
  // Queues a scored batch's flagged rows for fan-out and returns at once.
  void Publish(FlaggedRows rows);
  // Queues a stream batch's incident changes for incident watchers.
  void PublishIncidents(const ModelHandle& handle,
                        const google::protobuf::RepeatedPtrField<v1::Incident>& incidents);
  // False when --max_watchers watch already (or the feed is closed: the watcher is then closed).
  bool Subscribe(AnomalyWatcher* w);
  // A parked watcher's write completed: it catches up and is offered batches again.
  void Unpark(AnomalyWatcher* w);
  void Unsubscribe(AnomalyWatcher* w);
  void CloseAll();
  int max_watchers() const { return max_watchers_; }
  void CountDropped(uint64_t n) {
    if (metrics_ != nullptr) metrics_->RecordDroppedEvents(n);
  }

 private:
  void FanOut();
  // How many events of `w`'s kind have been published so far.
  uint64_t Published(const AnomalyWatcher& w) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Park(AnomalyWatcher* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Remember(const std::shared_ptr<const EventBatch>& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ServerMetrics* metrics_;
  const int max_watchers_;
  const size_t max_queued_;
  std::atomic<int> watchers_count_{0};
  std::atomic<int> parked_count_{0};
  absl::Mutex mu_;
  std::vector<AnomalyWatcher*> watchers_ ABSL_GUARDED_BY(mu_);  // offered batches, any order
  std::vector<AnomalyWatcher*> parked_ ABSL_GUARDED_BY(mu_);    // stalled
  // Parked watchers by (model, list): each drops every event of its kind a batch brings.
  std::map<std::pair<std::string, EventBatch::List>, uint64_t> parked_kinds_ ABSL_GUARDED_BY(mu_);
  // Events published per model and list, and for all models; the recent batches, numbered.
  std::map<std::string, std::array<uint64_t, 3>> published_ ABSL_GUARDED_BY(mu_);
  std::array<uint64_t, 3> published_all_ ABSL_GUARDED_BY(mu_) = {0, 0, 0};
  std::deque<std::pair<uint64_t, std::shared_ptr<const EventBatch>>> recent_ ABSL_GUARDED_BY(mu_);
  size_t recent_events_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t seq_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // Events waiting for the fan-out thread (its own lock, so Publish never waits for fan-out).
  absl::Mutex queue_mu_;
  std::deque<FlaggedRows> queue_ ABSL_GUARDED_BY(queue_mu_);
  size_t queued_rows_ ABSL_GUARDED_BY(queue_mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread fan_out_;
};

}  // namespace aeserve::server
