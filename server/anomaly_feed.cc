// WatchAnomalies: a queue, one fan-out thread, and bounded, dropping watcher buffers.
#include "anomaly_feed.h"

#include "absl/strings/str_cat.h"
#include "raw_call.h"

namespace aeserve::server {

AnomalyWatcher::AnomalyWatcher(AnomalyFeed* feed, const v1::WatchAnomaliesRequest& req,
                               size_t buffer, grpc::Status denied)
    : feed_(feed), model_(req.model()), min_severity_(req.min_severity()), buffer_(buffer) {
  if (denied.ok()) {
    subscribed_ = feed_->Subscribe(this);
    if (!subscribed_) {
      denied = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            absl::StrCat("too many anomaly watchers (limit ", feed_->max_watchers(),
                                         ", --max_watchers)"));
    }
  }
  if (!denied.ok()) {
    absl::MutexLock lock(&mu_);
    finished_ = true;
    Finish(denied);
  }
}

bool AnomalyWatcher::Wants(const std::string& model, uint32_t severity) const {
  return (model_.empty() || model_ == model) && severity >= min_severity_;
}

void AnomalyWatcher::Offer(const SharedEvent& e) {
  absl::MutexLock lock(&mu_);
  if (done_) return;
  uint64_t carried = 0;  // events dropped before `e`
  if (queue_.size() >= buffer_) {
    carried = queue_.front().dropped_before + 1;
    queue_.pop_front();
    feed_->CountDropped(1);
    if (!queue_.empty()) {
      queue_.front().dropped_before += carried;
      carried = 0;
    }
  }
  queue_.push_back(Waiting{e, carried});
  Pump();
}

void AnomalyWatcher::Close() {
  absl::MutexLock lock(&mu_);
  done_ = true;
  shutting_down_ = true;
  Pump();
}

void AnomalyWatcher::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  writing_ = false;
  if (!ok) done_ = true;
  Pump();
}

void AnomalyWatcher::OnCancel() {
  absl::MutexLock lock(&mu_);
  done_ = true;
  queue_.clear();
  Pump();
}

void AnomalyWatcher::OnDone() {
  if (subscribed_) feed_->Unsubscribe(this);
  delete this;
}

void AnomalyWatcher::Pump() {
  if (finished_ || writing_) return;
  if (!queue_.empty() && !done_) {
    v1::AnomalyEvent e = *queue_.front().event;
    e.set_dropped_before(queue_.front().dropped_before);
    queue_.pop_front();
    SerializeMessage(e, &sending_);
    writing_ = true;
    StartWrite(&sending_);
    return;
  }
  if (done_) {
    finished_ = true;
    Finish(shutting_down_ ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down")
                          : grpc::Status(grpc::StatusCode::CANCELLED, "anomaly watch ended"));
  }
}

AnomalyFeed::AnomalyFeed(ServerMetrics* metrics, int max_watchers, size_t max_queued)
    : metrics_(metrics), max_watchers_(max_watchers), max_queued_(max_queued) {
  fan_out_ = std::thread([this] { FanOut(); });
}

AnomalyFeed::~AnomalyFeed() {
  {
    absl::MutexLock lock(&queue_mu_);
    stopping_ = true;
  }
  fan_out_.join();
}

void AnomalyFeed::Publish(std::vector<v1::AnomalyEvent> events) {
  uint64_t dropped = 0;
  {
    absl::MutexLock lock(&queue_mu_);
    for (auto& e : events) queue_.push_back(std::make_shared<const v1::AnomalyEvent>(std::move(e)));
    while (queue_.size() > max_queued_) {
      queue_.pop_front();
      ++dropped;
    }
  }
  if (dropped > 0) CountDropped(dropped);
}

void AnomalyFeed::FanOut() {
  for (;;) {
    std::deque<SharedEvent> batch;
    {
      absl::MutexLock lock(&queue_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) { return stopping_ || !queue_.empty(); };
      queue_mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      batch.swap(queue_);
    }
    absl::MutexLock lock(&mu_);
    for (AnomalyWatcher* w : watchers_) {
      for (const SharedEvent& e : batch) {
        if (w->Wants(e->model(), e->severity())) w->Offer(e);
      }
    }
  }
}

bool AnomalyFeed::Subscribe(AnomalyWatcher* w) {
  absl::MutexLock lock(&mu_);
  if (closed_) {
    w->Close();
    return true;  // subscribed in name: the watcher finishes as closed
  }
  if (watchers_.size() >= static_cast<size_t>(max_watchers_)) return false;
  watchers_.insert(w);
  watchers_count_.store(static_cast<int>(watchers_.size()));
  return true;
}

void AnomalyFeed::Unsubscribe(AnomalyWatcher* w) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(w);
  watchers_count_.store(static_cast<int>(watchers_.size()));
}

void AnomalyFeed::CloseAll() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  for (AnomalyWatcher* w : watchers_) w->Close();
}

}  // namespace aeserve::server
