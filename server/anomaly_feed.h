// WatchAnomalies: flagged samples fan out to subscribed watchers as they are scored. Publishing
// never waits for a watcher: each has a bounded buffer; when it is full, the oldest waiting event
// makes room for the newest, and the event that becomes the oldest carries the count of those
// dropped before it — so a watcher that resumes always learns what it lost.
#pragma once

#include <atomic>
#include <deque>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "server_metrics.h"

namespace aeserve::server {

class AnomalyFeed;

// One WatchAnomalies call. Lock order: AnomalyFeed::mu_ before AnomalyWatcher::mu_.
class AnomalyWatcher : public grpc::ServerWriteReactor<v1::AnomalyEvent> {
 public:
  AnomalyWatcher(AnomalyFeed* feed, const v1::WatchAnomaliesRequest& req, size_t buffer,
                 grpc::Status denied);
  // Called by the feed: queue the event, dropping (and counting) the oldest waiting one if full.
  void Offer(const v1::AnomalyEvent& e);
  // Ends the watch (server shutdown).
  void Close();
  bool Wants(const std::string& model, uint32_t severity) const;

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  void Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  AnomalyFeed* feed_;
  const std::string model_;
  const uint32_t min_severity_;
  const size_t buffer_;
  bool subscribed_ = false;
  absl::Mutex mu_;
  std::deque<v1::AnomalyEvent> queue_ ABSL_GUARDED_BY(mu_);
  v1::AnomalyEvent sending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

class AnomalyFeed {
 public:
  explicit AnomalyFeed(ServerMetrics* metrics) : metrics_(metrics) {}
  // Cheap check for the scoring path: are there any watchers at all?
  bool HasWatchers() const { return watchers_count_.load(std::memory_order_relaxed) > 0; }
  void Publish(const std::vector<v1::AnomalyEvent>& events);
  void Subscribe(AnomalyWatcher* w);
  void Unsubscribe(AnomalyWatcher* w);
  void CloseAll();
  void CountDropped(uint64_t n) {
    if (metrics_ != nullptr) metrics_->RecordDroppedEvents(n);
  }

 private:
  ServerMetrics* metrics_;
  std::atomic<int> watchers_count_{0};
  absl::Mutex mu_;
  std::set<AnomalyWatcher*> watchers_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace aeserve::server
