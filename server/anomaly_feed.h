// WatchAnomalies: flagged samples fan out to subscribed watchers. The scoring call only hands its
// events to the feed's queue (bounded; the oldest batch is dropped and counted when full); one
// fan-out thread offers them to the watchers, so scoring never pays for the number of watchers.
// Events are shared, immutable objects: a watcher's buffer holds pointers, and a stalled watcher
// costs O(1) per event. Each watcher has a bounded buffer; when it is full the oldest waiting
// event makes room for the newest, and the event that becomes the oldest carries the count of
// those dropped before it, so a watcher that resumes always learns what it lost. At most
// --max_watchers watch at once.
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
#include "server_metrics.h"

namespace aeserve::server {

class AnomalyFeed;
using SharedEvent = std::shared_ptr<const v1::AnomalyEvent>;

// One WatchAnomalies call. Lock order: AnomalyFeed::mu_ before AnomalyWatcher::mu_.
class AnomalyWatcher : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  AnomalyWatcher(AnomalyFeed* feed, const v1::WatchAnomaliesRequest& req, size_t buffer,
                 grpc::Status denied);
  // Called by the feed: queue the event, dropping (and counting) the oldest waiting one if full.
  void Offer(const SharedEvent& e);
  // Ends the watch (server shutdown): UNAVAILABLE.
  void Close();
  bool Wants(const std::string& model, uint32_t severity) const;

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  struct Waiting {
    SharedEvent event;
    uint64_t dropped_before = 0;
  };
  void Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  AnomalyFeed* feed_;
  const std::string model_;
  const uint32_t min_severity_;
  const size_t buffer_;
  bool subscribed_ = false;
  absl::Mutex mu_;
  std::deque<Waiting> queue_ ABSL_GUARDED_BY(mu_);
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
  // Queues events for fan-out and returns at once.
  void Publish(std::vector<v1::AnomalyEvent> events);
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

  ServerMetrics* metrics_;
  const int max_watchers_;
  const size_t max_queued_;
  std::atomic<int> watchers_count_{0};
  absl::Mutex mu_;
  std::set<AnomalyWatcher*> watchers_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // Events waiting for the fan-out thread (its own lock, so Publish never waits for fan-out).
  absl::Mutex queue_mu_;
  std::deque<SharedEvent> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread fan_out_;
};

}  // namespace aeserve::server
