// WatchAnomalies: fan-out of flagged samples with bounded, dropping buffers.
#include "anomaly_feed.h"

namespace aeserve::server {

AnomalyWatcher::AnomalyWatcher(AnomalyFeed* feed, const v1::WatchAnomaliesRequest& req,
                               size_t buffer, grpc::Status denied)
    : feed_(feed), model_(req.model()), min_severity_(req.min_severity()), buffer_(buffer) {
  if (!denied.ok()) {
    absl::MutexLock lock(&mu_);
    finished_ = true;
    Finish(denied);
    return;
  }
  subscribed_ = true;
  feed_->Subscribe(this);
}

bool AnomalyWatcher::Wants(const std::string& model, uint32_t severity) const {
  return (model_.empty() || model_ == model) && severity >= min_severity_;
}

void AnomalyWatcher::Offer(const v1::AnomalyEvent& e) {
  absl::MutexLock lock(&mu_);
  if (done_) return;
  uint64_t carried = 0;  // events dropped before `e`
  if (queue_.size() >= buffer_) {
    carried = queue_.front().dropped_before() + 1;
    queue_.pop_front();
    feed_->CountDropped(1);
    if (!queue_.empty()) {
      queue_.front().set_dropped_before(queue_.front().dropped_before() + carried);
      carried = 0;
    }
  }
  queue_.push_back(e);
  queue_.back().set_dropped_before(carried);
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
    sending_ = std::move(queue_.front());
    queue_.pop_front();
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

void AnomalyFeed::Publish(const std::vector<v1::AnomalyEvent>& events) {
  absl::MutexLock lock(&mu_);
  for (AnomalyWatcher* w : watchers_) {
    for (const auto& e : events) {
      if (w->Wants(e.model(), e.severity())) w->Offer(e);
    }
  }
}

void AnomalyFeed::Subscribe(AnomalyWatcher* w) {
  absl::MutexLock lock(&mu_);
  if (closed_) {
    w->Close();
    return;
  }
  watchers_.insert(w);
  watchers_count_.store(static_cast<int>(watchers_.size()));
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
