// WatchAnomalies: a queue, one fan-out thread, and bounded, dropping watcher buffers.
#include "server/anomaly_feed.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "server/raw_call.h"

namespace aeserve::server {

AnomalyWatcher::AnomalyWatcher(AnomalyFeed* feed, size_t buffer, const grpc::Status& gate)
    : feed_(feed), buffer_(buffer) {
  absl::MutexLock lock(&mu_);
  if (!gate.ok()) {
    finished_ = true;
    Finish(gate);
    return;
  }
  StartRead(&request_);
}

void AnomalyWatcher::OnReadDone(bool ok) {
  v1::WatchAnomaliesRequest req;
  grpc::Status st = ok ? ParseMessage(&request_, &req)
                       : grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                      "the call ended before its request message");
  if (st.ok()) {
    model_ = req.model();
    min_severity_ = req.min_severity();
    incidents_ = req.incidents();
    subscribed_ = feed_->Subscribe(this);
    if (!subscribed_) {
      st = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("too many anomaly watchers (limit ", feed_->max_watchers(),
                                     ", --max_watchers)"));
    }
  }
  absl::MutexLock lock(&mu_);
  if (finished_ || st.ok()) return;  // (finished: cancelled while the request was on its way)
  finished_ = true;
  Finish(st);
}

bool AnomalyWatcher::WantsModel(const std::string& model) const {
  return model_.empty() || model_ == model;
}

void AnomalyWatcher::Offer(const std::shared_ptr<const EventBatch>& batch) {
  const std::vector<grpc::Slice>* list =
      incidents_ ? &batch->incidents : (min_severity_ >= 2 ? &batch->critical : &batch->all);
  if (list->empty()) return;
  absl::MutexLock lock(&mu_);
  if (done_) return;
  queue_.push_back(Waiting{batch, list, 0, list->size()});
  queued_ += list->size();
  uint64_t dropped = 0;
  while (queued_ > buffer_) {  // drop the oldest waiting events
    Waiting& w = queue_.front();
    const size_t n = std::min(w.end - w.begin, queued_ - buffer_);
    w.begin += n;
    queued_ -= n;
    dropped += n;
    if (w.begin == w.end) queue_.pop_front();
  }
  if (dropped > 0) {
    dropped_ += dropped;
    feed_->CountDropped(dropped);
  }
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
  queued_ = 0;
  Pump();
}

void AnomalyWatcher::OnDone() {
  if (subscribed_) feed_->Unsubscribe(this);
  delete this;
}

void AnomalyWatcher::Pump() {
  if (finished_ || writing_) return;
  if (!queue_.empty() && !done_) {
    Waiting& w = queue_.front();
    // The shared serialized event, plus a dropped_before field when events were lost before it
    // (protobuf merges a field appended to a message).
    grpc::Slice parts[2] = {(*w.list)[w.begin++], grpc::Slice()};
    --queued_;
    if (w.begin == w.end) queue_.pop_front();
    size_t n = 1;
    if (dropped_ > 0) {
      v1::AnomalyEvent tail;
      tail.set_dropped_before(dropped_);
      parts[n++] = grpc::Slice(tail.SerializeAsString());
      dropped_ = 0;
    }
    sending_ = grpc::ByteBuffer(parts, n);
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

void AnomalyFeed::Publish(FlaggedRows rows) {
  uint64_t dropped = 0;
  {
    absl::MutexLock lock(&queue_mu_);
    queued_rows_ += rows.errors.size();
    queue_.push_back(std::move(rows));
    while (queued_rows_ > max_queued_ && queue_.size() > 1) {
      dropped += queue_.front().errors.size();
      queued_rows_ -= queue_.front().errors.size();
      queue_.pop_front();
    }
  }
  if (dropped > 0) CountDropped(dropped);
}

void AnomalyFeed::PublishIncidents(
    const ModelHandle& handle, const google::protobuf::RepeatedPtrField<v1::Incident>& incidents) {
  FlaggedRows f;
  f.handle = handle;
  f.server_time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  f.incidents.assign(incidents.begin(), incidents.end());
  if (!f.incidents.empty()) f.stream_id = f.incidents.front().stream_id();
  Publish(std::move(f));
}

// Events with the top 3 features of each flagged row; one event per incident change.
std::shared_ptr<const EventBatch> AnomalyFeed::BuildEvents(const FlaggedRows& f) {
  if (!f.incidents.empty()) {
    auto batch = std::make_shared<EventBatch>();
    batch->model = f.handle.name;
    v1::AnomalyEvent e;
    for (const v1::Incident& incident : f.incidents) {
      e.Clear();
      e.set_model(f.handle.name);
      e.set_version(f.handle.version);
      e.set_entity(f.handle.entity);
      e.set_stream_id(f.stream_id);
      e.set_server_time_ms(f.server_time_ms);
      *e.mutable_incident() = incident;
      batch->incidents.emplace_back(e.SerializeAsString());
    }
    return batch;
  }
  const engine::Model& model = *f.handle.model;
  const uint32_t d = model.num_features();
  const size_t n = f.errors.size();
  if (f.feature_errors.size() != n * d)
    return nullptr;  // scoring always computes them for the feed
  const float* fe_all = f.feature_errors.data();
  const double critical = model.file().critical_threshold_value();
  const bool named = model.file().feature_names_size() == static_cast<int>(d);
  auto batch = std::make_shared<EventBatch>();
  batch->model = f.handle.name;
  batch->all.reserve(n);
  const uint32_t k = std::min<uint32_t>(3, d);
  std::vector<uint32_t> idx(d);
  v1::AnomalyEvent e;
  for (size_t i = 0; i < n; ++i) {
    e.Clear();
    e.set_model(f.handle.name);
    e.set_version(f.handle.version);
    e.set_entity(f.handle.entity);
    e.set_stream_id(f.stream_id);
    if (!f.ids.empty()) e.set_sample_id(f.ids[i]);
    if (!f.timestamps_ms.empty()) e.set_timestamp_ms(f.timestamps_ms[i]);
    e.set_error(f.errors[i]);
    e.set_score(f.scores[i]);
    e.set_threshold(f.threshold);
    e.set_p_value(f.p_values[i]);
    e.set_severity(critical > 0 && f.scores[i] > critical ? 2 : 1);
    e.set_server_time_ms(f.server_time_ms);
    const float* fe = fe_all + i * d;
    std::iota(idx.begin(), idx.end(), 0u);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [fe](uint32_t a, uint32_t b) {
      return fe[a] > fe[b] || (fe[a] == fe[b] && a < b);
    });
    for (uint32_t j = 0; j < k; ++j) {
      e.add_top_features(idx[j]);
      e.add_top_feature_errors(fe[idx[j]]);
      if (named) e.add_top_feature_names(model.file().feature_names(static_cast<int>(idx[j])));
    }
    batch->all.emplace_back(e.SerializeAsString());
    if (e.severity() == 2) batch->critical.push_back(batch->all.back());
  }
  return batch;
}

void AnomalyFeed::FanOut() {
  for (;;) {
    FlaggedRows rows;
    {
      absl::MutexLock lock(&queue_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
        return stopping_ || !queue_.empty();
      };
      queue_mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      rows = std::move(queue_.front());
      queue_.pop_front();
      queued_rows_ -= rows.errors.size();
    }
    std::shared_ptr<const EventBatch> batch = BuildEvents(rows);
    if (batch == nullptr) continue;
    absl::MutexLock lock(&mu_);
    for (AnomalyWatcher* w : watchers_) {
      if (w->WantsModel(batch->model)) w->Offer(batch);  // Offer picks the severity
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
