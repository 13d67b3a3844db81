// StreamScore: ordered, bounded, non-blocking scoring of a telemetry stream.
#include "server/stream_reactor.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/columns.h"
#include "server/raw_call.h"
#include "server/scoring.h"

namespace aeserve::server {

bool StreamTracker::Add(StreamReactor* r, int max_streams) {
  absl::MutexLock lock(&mu_);
  if (shutting_down_ || streams_.size() >= static_cast<size_t>(max_streams)) return false;
  streams_.insert(r);
  return true;
}

void StreamTracker::Remove(StreamReactor* r) {
  absl::MutexLock lock(&mu_);
  streams_.erase(r);
}

void StreamTracker::ShutdownAll() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
  for (StreamReactor* r : streams_) r->Shutdown();
}

size_t StreamTracker::size() const {
  absl::MutexLock lock(&mu_);
  return streams_.size();
}

void StreamTracker::Release(uint64_t bytes, Executor* executor) {
  budget_.Release(bytes);
  if (budget_.used() < budget_.limit() && waiting_.exchange(false)) {
    executor->Submit([this](Worker&) { WakeWaiting(); });
  }
}

void StreamTracker::WakeWaiting() {
  absl::MutexLock lock(&mu_);
  for (StreamReactor* r : streams_) r->Wake();
}

StreamReactor::StreamReactor(const Options& options, const ModelRegistry* registry,
                             Executor* executor, StreamTracker* tracker, grpc::Status denied,
                             ServerMetrics* metrics, AnomalyFeed* feed, Autopilot* autopilot,
                             const TrainingJobs* jobs)
    : options_(options),
      registry_(registry),
      executor_(executor),
      tracker_(tracker),
      metrics_(metrics),
      feed_(feed),
      autopilot_(autopilot),
      jobs_(jobs) {
  if (!denied.ok()) {
    absl::MutexLock lock(&mu_);
    finished_ = true;
    Finish(denied);
    return;
  }
  tracked_ = tracker_->Add(this, options_.max_streams);
  absl::MutexLock lock(&mu_);
  if (!tracked_) {
    if (metrics_ != nullptr) metrics_->RecordRejected("too_many_streams");
    finished_ = true;
    Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("too many open streams (limit ", options_.max_streams, ")")));
    return;
  }
  Pump();  // starts the first read (or finishes at once if shutdown began meanwhile)
}

void StreamReactor::OnReadDone(bool ok) {
  // Parsed before taking the lock: no other read can be started until reading_ is cleared below.
  // Successive reads may complete on different gRPC threads; the counter's release store after
  // the parse and acquire load before the next one order the accesses to incoming_ (the hand-off
  // inside libgrpc is invisible to TSan).
  Pending p;
  if (ok) {
    const uint64_t n = messages_read_.load(std::memory_order_acquire) + 1;
    p.received = std::chrono::steady_clock::now();
    p.bytes = incoming_.Length();
    p.parse_error = ParseMessage(&incoming_, &p.request, absl::StrCat("stream message ", n));
    messages_read_.store(n, std::memory_order_release);
  }
  bool here = false;
  {
    absl::MutexLock lock(&mu_);
    reading_ = false;
    if (!ok) {
      reads_done_ = true;
    } else {
      Hold(p.bytes);
      pending_.push_back(std::move(p));
    }
    here = Pump(true);
  }
  if (here) RunProcess();  // nothing of `this` after it: the stream may have ended
}

void StreamReactor::RunProcess() {
  Executor* executor = executor_;
  ServerMetrics* metrics = metrics_;
  auto task = [this](Worker& w) { Process(w); };
  if (!executor->TryRunHere(task)) {
    executor->Submit(task);
  } else if (metrics != nullptr) {
    metrics->RecordScoredHere(true);
  }
}

void StreamReactor::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  writing_ = false;
  Free(unsent_.front().bytes);
  unsent_.pop_front();
  if (!ok) cancelled_ = true;  // the client is gone
  Pump();
}

void StreamReactor::Hold(uint64_t bytes) {
  held_bytes_ += bytes;
  tracker_->budget().Add(bytes);  // already received: counted even past the limit
}

void StreamReactor::Free(uint64_t bytes) {
  held_bytes_ -= bytes;
  tracker_->Release(bytes, executor_);
}

void StreamReactor::Wake() {
  absl::MutexLock lock(&mu_);
  if (!waiting_for_room_) return;
  waiting_for_room_ = false;
  Pump();
}

void StreamReactor::OnCancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  Pump();
}

void StreamReactor::OnDone() {
  if (tracked_) tracker_->Remove(this);
  {
    absl::MutexLock lock(&mu_);  // also orders this after the last Process task
    if (held_bytes_ > 0) Free(held_bytes_);
  }
  delete this;
}

void StreamReactor::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
  Pump();
}

// Moves the stream forward from whatever state it is in: write, score, read, or finish.
bool StreamReactor::Pump(bool here) {
  if (finished_) return false;
  bool run_here = false;
  const bool stopping = cancelled_ || shutting_down_;
  if (cancelled_) {
    for (const auto& p : pending_) Free(p.bytes);
    pending_.clear();
    if (writing_) return false;  // wait for the write in flight
    for (const auto& u : unsent_) Free(u.bytes);
    unsent_.clear();
  }
  if (!writing_ && !unsent_.empty()) {
    writing_ = true;
    StartWrite(&unsent_.front().message);
  }
  if (!processing_ && !pending_.empty() &&
      unsent_.size() < static_cast<size_t>(options_.stream_max_unsent)) {
    processing_ = true;
    submitted_ = std::chrono::steady_clock::now();
    // Weighed by the model of the last batch (unknown before the first: the workers score it).
    run_here = here && LightEnoughToScoreHere(
                           options_.inline_max_madds,
                           static_cast<size_t>(pending_.front().request.samples().values_size()),
                           madds_per_value_);
    if (!run_here) executor_->Submit([this](Worker& w) { Process(w); });
  }
  if (!reading_ && !reads_done_ && !stopping &&
      pending_.size() < static_cast<size_t>(options_.stream_max_pending)) {
    ByteBudget& budget = tracker_->budget();
    if (budget.used() < budget.limit()) {
      reading_ = true;
      StartRead(&incoming_);
    } else if (!waiting_for_room_) {
      // All streams together hold the budget: read again once some of it is released. The
      // budget is checked again after registering, so a release in between is not missed.
      waiting_for_room_ = true;
      tracker_->WaitForRoom();
      if (budget.used() < budget.limit()) {
        waiting_for_room_ = false;
        reading_ = true;
        StartRead(&incoming_);
      } else if (metrics_ != nullptr) {
        metrics_->RecordRejected("stream_buffer_full");
      }
    }
  }
  const bool input_over = reads_done_ || stopping;
  if (input_over && pending_.empty() && !processing_ && !writing_ && unsent_.empty()) {
    finished_ = true;
    grpc::Status st = grpc::Status::OK;
    if (cancelled_) {
      st = grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled");
    } else if (shutting_down_ && !reads_done_) {
      st = grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down");
    }
    // A named stream leaves its alarm and open incident for a reconnect before the client learns
    // that the stream ended (no Process task runs now), so an immediate reconnect finds them.
    if (incidents_ != nullptr && !config_.stream_id().empty()) {
      tracker_->incidents().Keep(IncidentKey(), std::move(incidents_));
    }
    Finish(st);
  }
  return run_here;
}

void StreamReactor::Process(Worker& worker) {
  Pending p;
  {
    absl::MutexLock lock(&mu_);
    if (pending_.empty()) {  // cancelled meanwhile
      processing_ = false;
      Pump();
      return;
    }
    p = std::move(pending_.front());
    pending_.pop_front();
  }
  const auto began = std::chrono::steady_clock::now();
  std::vector<v1::StreamScoreResponse> out;
  if (p.parse_error.ok()) {
    ScoreOne(p.request, worker, &out);
  } else {
    v1::StreamScoreResponse& r = out.emplace_back();
    r.mutable_error()->set_code(static_cast<int>(p.parse_error.error_code()));
    r.mutable_error()->set_message(p.parse_error.error_message());
  }
  std::vector<Unsent> encoded;
  for (const auto& r : out) encoded.push_back(Encode(r));
  if (metrics_ != nullptr) {
    const auto now = std::chrono::steady_clock::now();
    metrics_->RecordQueueAndCompute("StreamScore",
                                    std::chrono::duration<double>(began - submitted_).count(),
                                    std::chrono::duration<double>(now - began).count());
    metrics_->RecordStreamBatch(std::chrono::duration<double>(now - p.received).count());
  }
  absl::MutexLock lock(&mu_);
  processing_ = false;
  madds_per_value_ = scored_madds_per_value_;
  Free(p.bytes);
  if (!cancelled_) {
    for (auto& u : encoded) {
      Hold(u.bytes);
      unsent_.push_back(std::move(u));
    }
  }
  Pump();
}

StreamReactor::Unsent StreamReactor::Encode(const v1::StreamScoreResponse& r) {
  Unsent u;
  SerializeMessage(r, &u.message);
  const size_t size = u.message.Length();
  if (size > static_cast<size_t>(options_.max_message_bytes)) {
    v1::StreamScoreResponse e;
    e.set_sequence(r.sequence());
    e.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
    e.mutable_error()->set_message(
        absl::StrCat("the answer to this batch would be ", size,
                     " bytes, over the message limit of ", options_.max_message_bytes,
                     " (--max_message_bytes): send smaller batches or ask for fewer "
                     "per-feature fields"));
    SerializeMessage(e, &u.message);
  }
  u.bytes = u.message.Length();
  return u;
}

void StreamReactor::ScoreOne(const v1::StreamScoreRequest& req, Worker& worker,
                             std::vector<v1::StreamScoreResponse>* out) {
  auto error = [&](const absl::Status& st) {
    v1::StreamScoreResponse& r = out->emplace_back();
    r.set_sequence(req.sequence());
    r.mutable_error()->set_code(static_cast<int>(st.code()));
    r.mutable_error()->set_message(std::string(st.message()));
  };
  if (req.has_config()) {
    if (configured_)
      return error(absl::InvalidArgumentError("config is only allowed in the first message"));
    configured_ = true;
    config_ = req.config();
    if (config_.debounce_n() > 100000 || config_.debounce_k() > config_.debounce_n()) {
      configured_ = false;
      return error(absl::InvalidArgumentError("debounce needs k <= n <= 100000"));
    }
    if (auto st = CheckUniqueNames(config_.feature_names()); !st.ok()) {
      configured_ = false;
      return error(absl::InvalidArgumentError(absl::StrCat("config: ", st.message())));
    }
    if (config_.debounce_k() > 0 && config_.debounce_n() > 0) {
      // A named stream carries on with what it left within --incident_resume_seconds.
      incidents_ =
          config_.stream_id().empty()
              ? std::make_unique<IncidentTracker>(config_.debounce_k(), config_.debounce_n())
              : tracker_->incidents().Take(IncidentKey(), config_.debounce_k(),
                                           config_.debounce_n());
    }
    if (!req.has_samples()) return;  // config only
  }
  if (!configured_)
    return error(
        absl::InvalidArgumentError("the first message must carry config (the model to use)"));
  auto handle = registry_->Get(config_.model(), config_.entity(), config_.version());
  if (!handle.ok()) {
    return error(jobs_ != nullptr ? jobs_->ExplainMissing(handle.status(), config_.model(),
                                                          config_.entity(), config_.version())
                                  : handle.status());
  }
  scored_madds_per_value_ = MaddsPerValue(*handle->model);
  v1::StreamScoreResponse resp;
  resp.set_sequence(req.sequence());
  ScoreHooks hooks{.feed = feed_,
                   .stream = &config_,
                   .window = &window_,
                   .autopilot = autopilot_,
                   .source_entity = config_.entity()};
  hooks.debounce = [this, &handle](v1::ScoreResponse* r) { Debounce(*handle, r); };
  absl::Status st = ScoreSamples(*handle, req.samples(), config_.options(), options_.max_batch_rows,
                                 worker, resp.mutable_result(), hooks);
  if (!st.ok()) return error(st);
  stats_.Add(resp.result());
  out->push_back(std::move(resp));
  if (auto summary = stats_.Take(config_)) {
    v1::StreamScoreResponse& s = out->emplace_back();
    s.set_sequence(req.sequence());
    *s.mutable_stats() = *std::move(summary);
  }
}

std::string StreamReactor::IncidentKey() const {
  return absl::StrCat(config_.model(), "\n", config_.entity(), "\n", config_.stream_id());
}

void StreamReactor::Debounce(const ModelHandle& h, v1::ScoreResponse* r) {
  if (incidents_ == nullptr) return;
  IncidentSource src{h.name, h.entity, config_.stream_id(),
                     std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count()};
  incidents_->Feed(src, r);
  if (feed_ != nullptr && r->incidents_size() > 0 && feed_->HasWatchers()) {
    feed_->PublishIncidents(h, r->incidents());
  }
}

}  // namespace aeserve::server
