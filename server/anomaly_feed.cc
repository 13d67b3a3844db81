// WatchAnomalies: a queue, one fan-out thread, and bounded, dropping watcher buffers.
#include "server/anomaly_feed.h"

#include <algorithm>

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

EventBatch::List AnomalyWatcher::list() const {
  return incidents_ ? EventBatch::kIncidents
                    : (min_severity_ >= 2 ? EventBatch::kCritical : EventBatch::kAll);
}

uint64_t AnomalyWatcher::Queue(const std::shared_ptr<const EventBatch>& batch) {
  const EventBatch::List l = list();
  const size_t size = batch->size(l);
  if (size == 0 || done_) return 0;
  queue_.push_back(Waiting{batch, l, 0, size});
  queued_ += size;
  uint64_t dropped = 0;
  while (queued_ > buffer_) {  // drop the oldest waiting events
    Waiting& w = queue_.front();
    const size_t n = std::min(w.end - w.begin, queued_ - buffer_);
    w.begin += n;
    queued_ -= n;
    dropped += n;
    if (w.begin == w.end) queue_.pop_front();
  }
  dropped_ += dropped;
  return dropped;
}

AnomalyWatcher::Offered AnomalyWatcher::Offer(const std::shared_ptr<const EventBatch>& batch) {
  if (batch->size(list()) == 0) return {};
  absl::MutexLock lock(&mu_);
  Offered o;
  o.dropped = Queue(batch);
  Pump();
  // Stalled: its buffer is full and its client has not taken the write in flight. From here
  // every event of its kind would drop one from the buffer until that write completes.
  o.parked = parked_ = !done_ && writing_ && queued_ >= buffer_;
  return o;
}

void AnomalyWatcher::CatchUp(const std::vector<std::shared_ptr<const EventBatch>>& batches,
                             uint64_t missed) {
  absl::MutexLock lock(&mu_);
  parked_ = false;
  uint64_t taken = 0;
  for (const auto& b : batches) {
    taken += b->size(list());
    Queue(b);  // (its drops: the events the feed already counted while this watcher was parked)
  }
  if (!done_ && missed > taken) dropped_ += missed - taken;
  Pump();
}

void AnomalyWatcher::Close() {
  absl::MutexLock lock(&mu_);
  done_ = true;
  shutting_down_ = true;
  Pump();
}

void AnomalyWatcher::OnWriteDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) done_ = true;
    // A parked watcher catches up before it sends on (its buffer still full, so the accounting
    // matches an offer of every batch it missed).
    if (!parked_ || done_) {
      Pump();
      return;
    }
  }
  feed_->Unpark(this);
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
    // The shared serialized event (the batch is serialized here if no watcher sent from it
    // yet), plus a dropped_before field when events were lost before it (protobuf merges a field
    // appended to a message).
    grpc::Slice parts[2] = {w.batch->events(w.list)[w.begin++], grpc::Slice()};
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
    auto batch = std::make_shared<const EventBatch>(std::move(rows));
    absl::MutexLock lock(&mu_);
    Remember(batch);
    // Parked watchers drop one buffered event per event of their kind.
    uint64_t dropped = 0;
    for (const auto& [kind, count] : parked_kinds_) {
      if (kind.first.empty() || kind.first == batch->model()) {
        dropped += count * batch->size(kind.second);
      }
    }
    for (size_t i = 0; i < watchers_.size();) {
      AnomalyWatcher* w = watchers_[i];
      if (!w->WantsModel(batch->model())) {
        ++i;
        continue;
      }
      const AnomalyWatcher::Offered o = w->Offer(batch);  // Offer picks the severity
      dropped += o.dropped;
      if (o.parked) {
        Park(w);  // (the last watcher takes its place: not advancing i offers it next)
      } else {
        ++i;
      }
    }
    if (dropped > 0) CountDropped(dropped);
  }
}

void AnomalyFeed::Remember(const std::shared_ptr<const EventBatch>& batch) {
  std::array<uint64_t, 3>& per_model = published_[batch->model()];
  for (int l = 0; l < 3; ++l) {
    const size_t n = batch->size(static_cast<EventBatch::List>(l));
    per_model[l] += n;
    published_all_[l] += n;
  }
  const auto events = [](const EventBatch& b) {
    return b.size(EventBatch::kAll) + b.size(EventBatch::kIncidents);
  };
  ++seq_;
  recent_.emplace_back(seq_, batch);
  recent_events_ += events(*batch);
  while (recent_.size() > 1 &&
         recent_events_ - events(*recent_.front().second) >= 4 * kWatcherBuffer) {
    recent_events_ -= events(*recent_.front().second);
    recent_.pop_front();
  }
}

uint64_t AnomalyFeed::Published(const AnomalyWatcher& w) const {
  if (w.model().empty()) return published_all_[w.list()];
  auto it = published_.find(w.model());
  return it == published_.end() ? 0 : it->second[w.list()];
}

void AnomalyFeed::Park(AnomalyWatcher* w) {
  auto it = std::find(watchers_.begin(), watchers_.end(), w);
  *it = watchers_.back();
  watchers_.pop_back();
  parked_.push_back(w);
  parked_count_.store(static_cast<int>(parked_.size()));
  ++parked_kinds_[{w->model(), w->list()}];
  w->in_parked_ = true;
  w->parked_seq_ = seq_;
  w->parked_published_ = Published(*w);
}

void AnomalyFeed::Unpark(AnomalyWatcher* w) {
  absl::MutexLock lock(&mu_);
  if (!w->in_parked_) {  // (not expected: Offer parks a watcher only for the feed to park it)
    w->CatchUp({}, 0);
    return;
  }
  auto it = std::find(parked_.begin(), parked_.end(), w);
  *it = parked_.back();
  parked_.pop_back();
  parked_count_.store(static_cast<int>(parked_.size()));
  auto kind = parked_kinds_.find({w->model(), w->list()});
  if (--kind->second == 0) parked_kinds_.erase(kind);
  w->in_parked_ = false;
  // The newest batches of its kind since it parked, up to a buffer's worth of events.
  std::vector<std::shared_ptr<const EventBatch>> batches;
  size_t events = 0;
  for (auto r = recent_.rbegin(); r != recent_.rend() && r->first > w->parked_seq_; ++r) {
    if (events >= kWatcherBuffer) break;
    const size_t n = w->WantsModel(r->second->model()) ? r->second->size(w->list()) : 0;
    if (n == 0) continue;
    batches.push_back(r->second);
    events += n;
  }
  std::reverse(batches.begin(), batches.end());
  w->CatchUp(batches, Published(*w) - w->parked_published_);
  watchers_.push_back(w);
}

bool AnomalyFeed::Subscribe(AnomalyWatcher* w) {
  absl::MutexLock lock(&mu_);
  if (closed_) {
    w->Close();
    return true;  // subscribed in name: the watcher finishes as closed
  }
  if (watchers_.size() + parked_.size() >= static_cast<size_t>(max_watchers_)) return false;
  watchers_.push_back(w);
  watchers_count_.store(static_cast<int>(watchers_.size() + parked_.size()));
  return true;
}

void AnomalyFeed::Unsubscribe(AnomalyWatcher* w) {
  absl::MutexLock lock(&mu_);
  std::vector<AnomalyWatcher*>& list = w->in_parked_ ? parked_ : watchers_;
  auto it = std::find(list.begin(), list.end(), w);
  if (it != list.end()) {
    *it = list.back();
    list.pop_back();
  }
  if (w->in_parked_) {
    auto kind = parked_kinds_.find({w->model(), w->list()});
    if (--kind->second == 0) parked_kinds_.erase(kind);
    w->in_parked_ = false;
  }
  watchers_count_.store(static_cast<int>(watchers_.size() + parked_.size()));
  parked_count_.store(static_cast<int>(parked_.size()));
}

void AnomalyFeed::CloseAll() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  for (AnomalyWatcher* w : watchers_) w->Close();
  for (AnomalyWatcher* w : parked_) w->Close();
}

}  // namespace aeserve::server
