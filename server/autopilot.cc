// The autopilot: retention, retrain triggers, shadow windows and promotion.
#include "server/autopilot.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/dnnl_util.h"
#include "engine/file_io.h"
#include "engine/window.h"
#include "server/executor.h"
#include "server/model_stats.h"

namespace aeserve::server {
namespace {

namespace fs = std::filesystem;

constexpr char kPolicyFile[] = "AUTOPILOT";
constexpr char kRetrainFile[] = "RETRAIN";
constexpr char kShadowFile[] = "SHADOW";
constexpr uint64_t kMaxStateBytes = 1 << 20;
// A retrain claim or shadow window whose replica has not touched its file for this many ticks
// (plus a margin) is taken to have died with its replica: 11 s at the default tick of 1 s.
constexpr double kHeartbeatTicks = 10;
constexpr double kHeartbeatMarginSeconds = 1;
constexpr size_t kShadowQueueBatches = 64;
constexpr size_t kShadowQueueBytes = 64 << 20;
constexpr uint64_t kMinShadowSamples = kMinDriftWindow;  // fewer compared never promote

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

template <typename Message>
absl::StatusOr<Message> ReadMessage(const std::string& path) {
  auto bytes = engine::ReadRegularFile(path, kMaxStateBytes);
  if (!bytes.ok()) return bytes.status();
  Message m;
  if (!m.ParseFromString(*bytes)) {
    return absl::DataLossError(absl::StrCat(path, " does not parse"));
  }
  return m;
}

template <typename Message>
absl::Status WriteMessage(const std::string& path, const Message& m) {
  return engine::WriteFileAtomically(path, m.SerializeAsString());
}

// Seconds since the file was last written (or touched); 0 when it does not exist.
double AgeSeconds(const std::string& path) {
  std::error_code ec;
  const auto t = fs::last_write_time(path, ec);
  if (ec) return 0;
  return std::chrono::duration<double>(fs::file_time_type::clock::now() - t).count();
}

void Touch(const std::string& path) { ::utimensat(AT_FDCWD, path.c_str(), nullptr, 0); }

// The share of a version's calibration scores over its threshold: the flag rate it aims at.
double TargetRate(const engine::Model& m) {
  const auto& c = m.file().calibration_errors();
  if (c.empty()) return 0;
  size_t over = 0;
  for (float v : c) over += v > m.threshold();
  return std::max(static_cast<double>(over) / c.size(), 1.0 / c.size());
}

// The columns a client sends per row: a series model's columns of one time step.
uint32_t Columns(const engine::Model& m) {
  return engine::IsSeries(m.spec()) ? m.spec().window().columns() : m.num_features();
}

std::vector<std::string> ColumnNames(const engine::Model& m) {
  const auto& f = m.file();
  const auto& names = engine::IsSeries(m.spec()) ? f.series_columns() : f.feature_names();
  return {names.begin(), names.end()};
}

}  // namespace

// A candidate scoring the active version's traffic. Counters under mu; the stats are lock-free.
class Shadow {
 public:
  Shadow(const ModelKey& key, ModelHandle active, ModelHandle candidate, bool decide,
         uint64_t target_samples, double target_seconds, int64_t started_ms)
      : key(key),
        active(std::move(active)),
        candidate(std::move(candidate)),
        decide(decide),
        active_stats(Calibration(*this->active.model)),
        candidate_stats(Calibration(*this->candidate.model)) {
    report.set_active_version(this->active.version);
    report.set_candidate_version(this->candidate.version);
    report.set_started_unix_ms(started_ms);
    report.set_target_samples(target_samples);
    report.set_target_seconds(target_seconds);
    report.set_candidate_target_rate(TargetRate(*this->candidate.model));
  }
  static std::vector<float> Calibration(const engine::Model& m) {
    const auto& c = m.file().calibration_errors();
    return {c.begin(), c.end()};
  }

  const ModelKey key;
  const ModelHandle active, candidate;
  const bool decide;  // promote or reject at the end of the window (else report only)
  ModelStats active_stats, candidate_stats;
  std::atomic<bool> closed{false};
  absl::Mutex mu;
  v1::ShadowReport report ABSL_GUARDED_BY(mu);
  uint64_t active_flags ABSL_GUARDED_BY(mu) = 0;
  uint64_t candidate_flags ABSL_GUARDED_BY(mu) = 0;
};

struct Autopilot::ShadowWork {
  std::shared_ptr<Shadow> shadow;
  std::vector<float> inputs, scores;
  std::vector<uint8_t> anomalous;
  double compute_seconds = 0;
  size_t bytes() const { return inputs.size() * 4 + scores.size() * 4 + anomalous.size(); }
};

struct Autopilot::State {
  State(const std::string& dir, const std::string& replica)
      : key_dir(dir), retention((fs::path(dir) / "retained").string(), replica) {}
  const std::string key_dir;
  Retention retention;
  absl::Mutex mu;
  v1::RetrainPolicy policy ABSL_GUARDED_BY(mu);
  uint64_t policy_stamp ABSL_GUARDED_BY(mu) = 0;
  v1::RetrainState retrain ABSL_GUARDED_BY(mu);  // as last read or written
  // Growth and drift since the active version (or the last retrain start).
  uint64_t counted_version ABSL_GUARDED_BY(mu) = 0;
  uint64_t rows_since ABSL_GUARDED_BY(mu) = 0;
  std::shared_ptr<ModelStats> drift ABSL_GUARDED_BY(mu);  // scores against the active calibration
  uint64_t drift_version ABSL_GUARDED_BY(mu) = 0;
  uint64_t scored_since_tick ABSL_GUARDED_BY(mu) = 0;
  uint64_t drifted_samples ABSL_GUARDED_BY(mu) = 0;
  int64_t next_attempt_ms ABSL_GUARDED_BY(mu) = 0;        // quiet after a refused automatic start
  uint64_t drift_retrained_from ABSL_GUARDED_BY(mu) = 0;  // a drift retrain fires once per version
  std::shared_ptr<Shadow> shadow ABSL_GUARDED_BY(mu);     // running here
  bool other_shadow ABSL_GUARDED_BY(mu) = false;          // another replica's window is open
  v1::ShadowReport last_shadow ABSL_GUARDED_BY(mu);       // finished, or another replica's
  // The columns of the version last seen scoring (copied once per version, not per batch).
  uint64_t names_version ABSL_GUARDED_BY(mu) = 0;
  std::shared_ptr<const google::protobuf::RepeatedPtrField<std::string>> names ABSL_GUARDED_BY(mu);
  // Serialises starting and ending shadow windows (never taken on the scoring path). Before mu.
  absl::Mutex shadow_mu ABSL_ACQUIRED_BEFORE(mu);
};

Autopilot::Autopilot(ModelRegistry* registry, TrainingJobs* jobs, const AuditLog* audit,
                     std::shared_ptr<spdlog::logger> log, double tick_seconds,
                     uint64_t max_training_values)
    : registry_(registry),
      jobs_(jobs),
      audit_(audit),
      log_(std::move(log)),
      tick_seconds_(tick_seconds > 0 ? tick_seconds : 1),
      max_training_values_(max_training_values),
      replica_(ReplicaName()) {}

Autopilot::~Autopilot() { Stop(); }

void Autopilot::Start() {
  Tick();
  ticker_ = std::thread([this] {
    absl::MutexLock lock(&stop_mu_);
    auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stop_mu_) { return stop_; };
    while (!stop_mu_.AwaitWithTimeout(absl::Condition(&stopped), absl::Seconds(tick_seconds_))) {
      stop_mu_.Unlock();
      Tick();
      stop_mu_.Lock();
    }
  });
  shadow_thread_ = std::thread([this] { ShadowLoop(); });
}

void Autopilot::Stop() {
  {
    absl::MutexLock lock(&stop_mu_);
    if (stop_) return;
    stop_ = true;
  }
  {
    absl::MutexLock lock(&queue_mu_);
    stopping_ = true;
  }
  if (ticker_.joinable()) ticker_.join();
  if (shadow_thread_.joinable()) shadow_thread_.join();
  absl::MutexLock lock(&mu_);
  for (auto& [key, s] : states_) {
    if (auto st = s->retention.Maintain(NowMs(), true); !st.ok() && log_) {
      log_->error("retention of '{}': {}", key.str(), std::string(st.message()));
    }
  }
}

std::shared_ptr<Autopilot::State> Autopilot::Find(const ModelKey& key) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = states_.find(key);
  return it == states_.end() ? nullptr : it->second;
}

absl::StatusOr<v1::RetrainPolicy> Autopilot::Resolve(const v1::RetrainPolicy& in) {
  v1::RetrainPolicy p = in;
  p.DiscardUnknownFields();
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(what); };
  for (double v :
       {p.retain_hours(), p.drift_above(), p.grown_factor(), p.every_hours(),
        p.min_interval_seconds(), p.shadow_seconds(), p.min_flag_ratio(), p.max_flag_ratio()}) {
    if (!std::isfinite(v)) return bad("every number in the policy must be finite");
  }
  if (p.retain_rows() == 0) return bad("retain_rows is required (the history retrains learn from)");
  if (p.retain_hours() < 0 || !std::isfinite(p.retain_hours()))
    return bad("retain_hours must be >= 0");
  if (!v1::FlaggedRows_IsValid(p.flagged_rows())) return bad("unknown flagged_rows");
  if (!v1::Promotion_IsValid(p.promotion())) return bad("unknown promotion");
  if (p.drift_above() < 0 || p.drift_above() >= 1) return bad("drift_above must be in [0, 1)");
  if (p.grown_factor() != 0 && !(p.grown_factor() > 1 && std::isfinite(p.grown_factor()))) {
    return bad("grown_factor must be > 1 (or 0: off)");
  }
  if (p.every_hours() < 0 || !std::isfinite(p.every_hours()))
    return bad("every_hours must be >= 0");
  if (!p.has_min_interval_seconds()) p.set_min_interval_seconds(300);
  if (p.min_interval_seconds() < 0 || !std::isfinite(p.min_interval_seconds())) {
    return bad("min_interval_seconds must be >= 0");
  }
  if (!p.has_min_rows()) p.set_min_rows(std::min<uint64_t>(200, p.retain_rows()));
  if (p.min_rows() > p.retain_rows())
    return bad("min_rows is over retain_rows: it could never be met");
  if (!p.has_shadow_samples()) p.set_shadow_samples(10000);
  if (!p.has_shadow_seconds()) p.set_shadow_seconds(3600);
  if (p.shadow_seconds() < 0) return bad("shadow_seconds must be >= 0");
  if (p.shadow_samples() == 0 && p.shadow_seconds() <= 0) {
    return bad("a shadow window needs shadow_samples or shadow_seconds");
  }
  if (!p.has_min_flag_ratio()) p.set_min_flag_ratio(0.25);
  if (!p.has_max_flag_ratio()) p.set_max_flag_ratio(4);
  if (p.min_flag_ratio() < 0 || p.max_flag_ratio() < p.min_flag_ratio()) {
    return bad("the flag-rate rule needs 0 <= min_flag_ratio <= max_flag_ratio");
  }
  return p;
}

void Autopilot::Record(const ModelKey& key, uint64_t version, const std::string& action,
                       const std::string& actor, const std::string& reason,
                       const std::string& job) {
  if (log_) log_->info("autopilot: {} '{}' v{}: {}", action, key.str(), version, reason);
  if (audit_ == nullptr) return;
  v1::Event e;
  e.set_model(key.model);
  e.set_entity(key.entity);
  e.set_version(version);
  e.set_action(action);
  e.set_actor(actor);
  e.set_reason(reason);
  e.set_job_id(job);
  if (auto st = audit_->Record(std::move(e)); !st.ok() && log_) {
    log_->error("{}", std::string(st.message()));
  }
}

// ---------------------------------------------------------------- policies

absl::StatusOr<v1::AutopilotStatus> Autopilot::SetPolicy(const ModelKey& key,
                                                         const v1::RetrainPolicy& in, bool clear,
                                                         const std::string& actor) {
  const std::string dir = registry_->store().KeyDir(key);
  if (clear) {
    std::shared_ptr<State> s;
    {
      absl::MutexLock lock(&mu_);
      auto it = states_.find(key);
      if (it == states_.end()) {
        return absl::NotFoundError(absl::StrCat("'", key.str(), "' has no retrain policy"));
      }
      s = it->second;
      states_.erase(it);
      policies_.fetch_sub(1);
    }
    v1::RetrainState retrain;
    std::string stopped;
    {
      absl::MutexLock lock(&s->mu);
      if (s->shadow != nullptr && !s->shadow->closed) {
        s->shadow->closed = true;
        stopped = absl::StrCat("; the shadow window of version ", s->shadow->candidate.version,
                               " ended without a decision");
      }
      retrain = s->retrain;
    }
    // A retrain of ours still queued or running stops (its data would be gone).
    if (retrain.running() && retrain.replica() == replica_) (void)jobs_->Cancel(retrain.job_id());
    std::error_code ec;
    fs::remove(fs::path(dir) / kPolicyFile, ec);
    fs::remove(fs::path(dir) / kShadowFile, ec);
    s->retention.DeleteAll();
    Record(key, 0, "set-retrain-policy", actor,
           absl::StrCat("policy removed, retained rows deleted", stopped));
    return v1::AutopilotStatus{};
  }
  auto p = Resolve(in);
  if (!p.ok()) return p.status();
  // A model may get its policy before its first version, so that the first upload's rows are
  // kept too (TrainingJobHeader.retain).
  if (auto active = registry_->Handle(key, 0); active.ok()) {
    const uint64_t columns = Columns(*active->model);
    if (p->retain_rows() > max_training_values_ / columns) {
      return absl::InvalidArgumentError(absl::StrCat(
          "retain_rows ", p->retain_rows(), " x ", columns, " features is over the ",
          max_training_values_, " values a training job may hold (--max_training_values)"));
    }
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  // The policy as given (defaults unset, so a later default change reaches it), without fields
  // this server does not know.
  v1::RetrainPolicy given = in;
  given.DiscardUnknownFields();
  const std::string path = (fs::path(dir) / kPolicyFile).string();
  if (auto st = WriteMessage(path, given); !st.ok()) return st;
  Apply(key, *p, engine::StampOf(path).value());
  Record(key, 0, "set-retrain-policy", actor, p->ShortDebugString());
  v1::AutopilotStatus out;
  Status(key, &out);
  return out;
}

void Autopilot::Reload() {
  // Keys with a policy file: every model the registry knows, and every state held.
  std::vector<ModelKey> keys;
  registry_->ForEach([&](const ModelKey& k, const ModelEntry&) { keys.push_back(k); });
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [k, s] : states_) keys.push_back(k);
  }
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  for (const ModelKey& key : keys) {
    const std::string path = absl::StrCat(registry_->store().KeyDir(key), "/", kPolicyFile);
    const uint64_t stamp = engine::StampOf(path).value();
    std::shared_ptr<State> s = Find(key);
    if (stamp == 0) {
      if (s != nullptr) {  // removed by another replica
        absl::MutexLock lock(&mu_);
        if (states_.erase(key) > 0) policies_.fetch_sub(1);
      }
      continue;
    }
    if (s != nullptr) {
      absl::MutexLock lock(&s->mu);
      if (s->policy_stamp == stamp) continue;
    }
    auto given = ReadMessage<v1::RetrainPolicy>(path);
    auto p = given.ok() ? Resolve(*given) : given.status();
    if (!p.ok()) {
      if (log_) {
        log_->error("autopilot: policy of '{}' not used: {}", key.str(),
                    std::string(p.status().message()));
      }
      continue;
    }
    Apply(key, *p, stamp);
  }
}

void Autopilot::Apply(const ModelKey& key, const v1::RetrainPolicy& p, uint64_t stamp) {
  std::shared_ptr<State> s;
  {
    absl::MutexLock lock(&mu_);
    auto& slot = states_[key];
    if (slot == nullptr) {
      slot = std::make_shared<State>(registry_->store().KeyDir(key), replica_);
      policies_.fetch_add(1);
    }
    s = slot;
  }
  {
    absl::MutexLock lock(&s->mu);
    s->policy = p;
    s->policy_stamp = stamp;
  }
  s->retention.SetBounds(p.retain_rows(), p.retain_hours(), p.flagged_rows());
}

bool Autopilot::Status(const ModelKey& key, v1::AutopilotStatus* out) const {
  std::shared_ptr<State> s = Find(key);
  if (s == nullptr) return false;
  const RetentionTotals t = s->retention.Totals();
  out->set_retained_rows(t.rows);
  out->set_retained_bytes(t.bytes);
  out->set_retained_segments(t.segments);
  out->set_retained_dropped_rows(t.dropped_rows);
  std::shared_ptr<Shadow> shadow;
  {
    absl::MutexLock lock(&s->mu);
    *out->mutable_policy() = s->policy;
    *out->mutable_retrain() = s->retrain;
    *out->mutable_shadow() = s->last_shadow;
    shadow = s->shadow;
  }
  if (shadow != nullptr) {
    absl::MutexLock lock(&shadow->mu);
    *out->mutable_shadow() = shadow->report;
  }
  return true;
}

std::vector<std::pair<ModelKey, v1::AutopilotStatus>> Autopilot::AllStatus() const {
  std::vector<ModelKey> keys;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [k, s] : states_) keys.push_back(k);
  }
  std::vector<std::pair<ModelKey, v1::AutopilotStatus>> out;
  for (const ModelKey& k : keys) {
    v1::AutopilotStatus st;
    if (Status(k, &st)) out.emplace_back(k, std::move(st));
  }
  return out;
}

// ---------------------------------------------------------------- the scoring path

void Autopilot::Scored(const ModelHandle& h, absl::Span<const float> rows,
                       absl::Span<const int64_t> timestamps, absl::Span<const float> scores,
                       absl::Span<const uint8_t> flagged, absl::Span<const uint8_t> alarmed) {
  if (!Enabled()) return;
  const ModelKey key{h.name, h.entity};
  std::shared_ptr<State> s = Find(key);
  if (s == nullptr) return;
  const engine::Model& m = *h.model;
  const uint32_t d = Columns(m);
  const int64_t now = NowMs();
  std::shared_ptr<const google::protobuf::RepeatedPtrField<std::string>> names;
  bool drift_on;
  {
    absl::MutexLock lock(&s->mu);
    if (s->names == nullptr || s->names_version != h.version) {
      auto fresh = std::make_shared<google::protobuf::RepeatedPtrField<std::string>>();
      for (auto& n : ColumnNames(m)) *fresh->Add() = std::move(n);
      s->names = std::move(fresh);
      s->names_version = h.version;
    }
    names = s->names;
    drift_on = s->policy.drift_above() > 0;
  }
  const uint64_t kept = s->retention.Append(d, *names, rows, timestamps, flagged, alarmed, now,
                                            engine::IsSeries(m.spec()));
  std::vector<float> finite;  // the scores the drift window takes (samples without one are out)
  std::vector<uint8_t> finite_flags;
  if (drift_on) {
    finite.reserve(scores.size());
    finite_flags.reserve(scores.size());
    for (size_t i = 0; i < scores.size(); ++i) {
      if (!std::isfinite(scores[i])) continue;
      finite.push_back(scores[i]);
      finite_flags.push_back(i < flagged.size() ? flagged[i] : 0);
    }
  }

  std::string due;
  {
    absl::MutexLock lock(&s->mu);
    // A new (higher) version scoring: growth counts from here. A call pinned to an older version
    // does not restart the count.
    if (h.version > s->counted_version) {
      s->counted_version = h.version;
      s->rows_since = 0;
    }
    s->rows_since += kept;
    if (drift_on) {
      if (s->drift == nullptr || s->drift_version != h.version) {
        s->drift = std::make_shared<ModelStats>(Shadow::Calibration(m));
        s->drift_version = h.version;
        s->drifted_samples = 0;
      }
      s->drift->Record(finite, finite_flags);
      s->scored_since_tick += finite.size();
    }
    const uint64_t grown_rows = s->policy.grown_rows();
    const double grown_factor = s->policy.grown_factor();
    // One cycle at a time: no new retrain while one runs or its candidate is in shadow.
    const bool quiet =
        now < s->next_attempt_ms || s->retrain.running() || s->shadow != nullptr || s->other_shadow;
    if (!quiet && grown_rows > 0 && s->rows_since >= grown_rows) {
      due = absl::StrCat("growth: ", s->rows_since, " rows retained since version ", h.version,
                         " (policy: ", grown_rows, ")");
    } else if (!quiet && grown_factor > 0) {
      const uint64_t trained = m.file().metadata().data_rows();
      const uint64_t retained = s->retention.Totals().rows;
      if (trained > 0 && retained >= grown_factor * trained) {
        due = absl::StrFormat(
            "growth: %d rows retained, %.2fx the %d rows version %d was trained on "
            "(policy: %gx)",
            retained, static_cast<double>(retained) / trained, trained, h.version, grown_factor);
      }
    }
  }
  // Started here, before the call is answered: a client that waits for the answer sees the job.
  if (!due.empty()) {
    auto job = StartRetrain(key, s, "growth", due, "autopilot", false);
    if (!job.ok() && log_) {
      log_->debug("autopilot: no retrain of '{}': {}", key.str(),
                  std::string(job.status().message()));
    }
  }
}

void Autopilot::ShadowBatch(const ModelHandle& h, absl::Span<const float> inputs,
                            absl::Span<const float> scores, absl::Span<const uint8_t> anomalous,
                            double compute_seconds) {
  std::shared_ptr<State> s = Find({h.name, h.entity});
  if (s == nullptr) return;
  std::shared_ptr<Shadow> shadow;
  {
    absl::MutexLock lock(&s->mu);
    shadow = s->shadow;
  }
  if (shadow == nullptr || shadow->closed || shadow->active.version != h.version) return;
  ShadowWork w;
  w.shadow = shadow;
  w.compute_seconds = compute_seconds;
  const size_t bytes = inputs.size() * 4 + scores.size() * 4 + anomalous.size();
  bool room;
  {  // room is reserved under the lock, the batch copied outside it
    absl::MutexLock lock(&queue_mu_);
    room = !stopping_ && queue_.size() + queue_reserved_ < kShadowQueueBatches &&
           queue_bytes_ + bytes <= kShadowQueueBytes;
    if (room) {
      queue_bytes_ += bytes;
      ++queue_reserved_;
    }
  }
  if (room) {
    w.inputs.assign(inputs.begin(), inputs.end());
    w.scores.assign(scores.begin(), scores.end());
    w.anomalous.assign(anomalous.begin(), anomalous.end());
    absl::MutexLock lock(&queue_mu_);
    --queue_reserved_;
    queue_.push_back(std::move(w));
    return;
  }
  absl::MutexLock lock(&shadow->mu);  // the shadow cannot keep up: counted, not queued
  shadow->report.set_dropped_batches(shadow->report.dropped_batches() + 1);
  shadow->report.set_dropped_samples(shadow->report.dropped_samples() + scores.size());
}

bool Autopilot::WaitForShadowIdle(double timeout_seconds) {
  absl::MutexLock lock(&queue_mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
    return queue_.empty() && queue_reserved_ == 0 && !shadow_busy_;
  };
  return queue_mu_.AwaitWithTimeout(absl::Condition(&idle), absl::Seconds(timeout_seconds));
}

void Autopilot::ShadowLoop() {
  engine::ScopedThreads one(1);
  Worker worker;
  for (;;) {
    ShadowWork w;
    {
      absl::MutexLock lock(&queue_mu_);
      shadow_busy_ = false;  // the last batch, if any, is done (or skipped)
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
        return stopping_ || !queue_.empty();
      };
      queue_mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping
      w = std::move(queue_.front());
      queue_.pop_front();
      queue_bytes_ -= w.bytes();
      shadow_busy_ = true;
    }
    Shadow& sh = *w.shadow;
    if (sh.closed) continue;
    const auto start = std::chrono::steady_clock::now();
    engine::ScoreResult& res = worker.result();
    engine::ScoreOptions eo;
    if (!sh.candidate.model->Score(worker.ContextFor(sh.candidate.model), w.inputs, eo, &res)
             .ok()) {
      continue;  // e.g. a sample the candidate's policy skips entirely: not comparable
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::vector<float> a_scores, c_scores;
    std::vector<uint8_t> a_flags, c_flags;
    uint64_t both = 0, only_a = 0, only_c = 0;
    for (size_t i = 0; i < w.scores.size() && i < res.score.size(); ++i) {
      if (!std::isfinite(w.scores[i]) || !std::isfinite(res.score[i])) continue;
      const bool a = w.anomalous[i] != 0, c = res.anomalous[i] != 0;
      a_scores.push_back(w.scores[i]);
      c_scores.push_back(res.score[i]);
      a_flags.push_back(a);
      c_flags.push_back(c);
      both += a && c;
      only_a += a && !c;
      only_c += c && !a;
    }
    sh.active_stats.Record(a_scores, a_flags);
    sh.candidate_stats.Record(c_scores, c_flags);
    absl::MutexLock lock(&sh.mu);
    v1::ShadowReport& r = sh.report;
    r.set_samples(r.samples() + a_scores.size());
    r.set_both_flagged(r.both_flagged() + both);
    r.set_only_active(r.only_active() + only_a);
    r.set_only_candidate(r.only_candidate() + only_c);
    sh.active_flags += both + only_a;
    sh.candidate_flags += both + only_c;
    if (r.samples() > 0) {
      r.set_active_flag_rate(static_cast<double>(sh.active_flags) / r.samples());
      r.set_candidate_flag_rate(static_cast<double>(sh.candidate_flags) / r.samples());
    }
    r.set_active_compute_seconds(r.active_compute_seconds() + w.compute_seconds);
    r.set_candidate_compute_seconds(r.candidate_compute_seconds() + seconds);
  }
}

// ---------------------------------------------------------------- retrains

absl::StatusOr<v1::TrainingJob> Autopilot::Retrain(const ModelKey& key, const std::string& actor) {
  std::shared_ptr<State> s = Find(key);
  if (s == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", key.str(), "' has no retrain policy: set one first (aectl autopilot ",
                     key.model, " --retain-rows N ...)"));
  }
  return StartRetrain(key, s, "manual", "asked for", actor, true);
}

absl::StatusOr<v1::TrainingJob> Autopilot::StartRetrain(const ModelKey& key,
                                                        std::shared_ptr<State> state_ptr,
                                                        const std::string& trigger,
                                                        const std::string& reason,
                                                        const std::string& actor, bool manual) {
  State& s = *state_ptr;
  const int64_t now = NowMs();
  v1::RetrainPolicy p;
  {
    absl::MutexLock lock(&s.mu);
    p = s.policy;
  }
  auto quiet = [&](absl::Status st) {
    if (!manual) {  // an automatic trigger does not retry on every batch
      absl::MutexLock lock(&s.mu);
      s.next_attempt_ms = now + static_cast<int64_t>(std::max(1.0, tick_seconds_) * 1000);
    }
    return st;
  };
  auto active = registry_->Handle(key, 0);
  if (!active.ok()) {
    return quiet(absl::FailedPreconditionError(
        absl::StrCat("no active version to retrain from: ", active.status().message())));
  }
  const RetentionTotals totals = s.retention.Totals();
  if (totals.rows < p.min_rows()) {
    return quiet(absl::FailedPreconditionError(
        absl::StrCat(totals.rows, " rows retained; the policy needs min_rows ", p.min_rows())));
  }
  // Held while the claim is read and written; released before anything that may call back into
  // the autopilot (a cancelled job's on_done takes it again).
  std::optional<ModelStore::Lock> lock;
  lock.emplace(registry_->store().dir());
  if (!lock->status().ok()) return quiet(lock->status());
  const std::string path = (fs::path(s.key_dir) / kRetrainFile).string();
  auto stored = ReadMessage<v1::RetrainState>(path);
  v1::RetrainState state = stored.ok() ? *stored : v1::RetrainState{};
  if (state.running()) {
    // Ours while the job lives; another replica's while it keeps touching the file.
    auto ours = jobs_->Get(state.job_id());
    const bool alive =
        state.replica() == replica_
            ? ours.ok() && ours->state() != v1::JOB_STATE_SUCCEEDED &&
                  ours->state() != v1::JOB_STATE_FAILED && ours->state() != v1::JOB_STATE_CANCELLED
            : AgeSeconds(path) <= kHeartbeatTicks * tick_seconds_ + kHeartbeatMarginSeconds;
    if (alive) {
      absl::MutexLock l(&s.mu);
      s.retrain = state;
      return quiet(absl::FailedPreconditionError(absl::StrCat(
          "a retrain is already running (job ", state.job_id(), " on ", state.replica(), ")")));
    }
  }
  if (!manual && state.started_unix_ms() > 0 &&
      now - state.started_unix_ms() < p.min_interval_seconds() * 1000) {
    return quiet(absl::FailedPreconditionError(
        absl::StrFormat("the last retrain started %.1f s ago; min_interval_seconds is %g",
                        (now - state.started_unix_ms()) / 1000.0, p.min_interval_seconds())));
  }

  // The job: the active version's spec, options, thresholds and names, on the retained rows.
  const engine::Model& m = *active->model;
  const v1::ModelFile& f = m.file();
  v1::TrainingJobHeader h;
  h.set_model(key.model);
  h.set_entity(key.entity);
  if (p.fine_tune()) {
    h.set_fine_tune(true);
    h.set_base_version(active->version);
  } else {
    *h.mutable_spec() = f.spec();
  }
  *h.mutable_options() = f.training();
  *h.mutable_threshold() = f.threshold();
  *h.mutable_critical_threshold() = f.critical_threshold();
  *h.mutable_policy() = f.policy();
  const std::vector<std::string> names = ColumnNames(m);
  for (const auto& n : names) h.add_feature_names(n);
  h.set_num_features(Columns(m));
  h.set_no_activate(p.promotion() != v1::PROMOTION_ACTIVATE);
  h.set_description(
      absl::StrCat("autopilot retrain of version ", active->version, " (", trigger, ")"));
  const uint32_t d = Columns(m);
  // At most the policy's rows, and never more values than an upload may send.
  const uint64_t max_rows = std::min<uint64_t>(p.retain_rows(), max_training_values_ / d);
  const uint64_t min_rows = p.min_rows();
  // The source keeps the state (and its retention) alive while the job waits and runs, even if
  // the policy is removed meanwhile.
  TrainingJobs::Source source = [state_ptr, d, names, max_rows, min_rows](
                                    std::vector<float>* values,
                                    std::vector<int64_t>* timestamps) -> absl::Status {
    if (auto st = state_ptr->retention.Maintain(NowMs(), true); !st.ok()) return st;
    auto rows = state_ptr->retention.Read(d, max_rows, names);
    if (!rows.ok()) return rows.status();
    if (rows->rows() < min_rows) {
      return absl::FailedPreconditionError(
          absl::StrCat(rows->rows(), " retained rows could be read (", rows->corrupt_segments,
                       " corrupt segments skipped); the policy needs ", min_rows));
    }
    *values = std::move(rows->values);
    *timestamps = std::move(rows->timestamps_ms);
    return absl::OkStatus();
  };
  auto job = jobs_->SubmitFrom(
      h, std::move(source), JobOrigin{actor, trigger},
      [this, key, actor](const v1::TrainingJob& done) { RetrainDone(key, done, actor); });
  if (!job.ok()) return quiet(job.status());
  state = v1::RetrainState{};
  state.set_running(true);
  state.set_job_id(job->id());
  state.set_replica(replica_);
  state.set_trigger(trigger);
  state.set_started_unix_ms(now);
  if (auto st = WriteMessage(path, state); !st.ok()) {
    lock.reset();
    (void)jobs_->Cancel(job->id());
    return quiet(st);
  }
  lock.reset();
  {
    absl::MutexLock l(&s.mu);
    s.retrain = state;
    s.rows_since = 0;
    s.drifted_samples = 0;
    if (trigger == "drift") s.drift_retrained_from = active->version;
  }
  Record(key, active->version, "retrain", actor,
         absl::StrCat(reason, "; ", totals.rows, " rows retained; ",
                      p.fine_tune() ? "fine-tuning" : "training afresh", ", then ",
                      p.promotion() == v1::PROMOTION_ACTIVATE ? "activate"
                      : p.promotion() == v1::PROMOTION_STAGE  ? "stage"
                                                              : "shadow"),
         job->id());
  return job;
}

void Autopilot::RetrainDone(const ModelKey& key, const v1::TrainingJob& job,
                            const std::string& actor) {
  std::shared_ptr<State> s = Find(key);
  const std::string dir = registry_->store().KeyDir(key);
  const bool ok = job.state() == v1::JOB_STATE_SUCCEEDED;
  v1::RetrainState state;
  {
    ModelStore::Lock lock(registry_->store().dir());
    const std::string path = (fs::path(dir) / kRetrainFile).string();
    auto stored = ReadMessage<v1::RetrainState>(path);
    if (stored.ok()) state = *stored;
    if (state.job_id() == job.id()) {
      state.set_running(false);
      state.set_finished_unix_ms(job.finished_unix_ms());
      state.set_trained_rows(job.rows());
      state.set_outcome(
          ok ? absl::StrCat("version ", job.version(), job.activated() ? " (active)" : " (staged)")
             : absl::StrCat(v1::JobState_Name(job.state()), ": ", job.error()));
      if (lock.status().ok()) {
        if (auto st = WriteMessage(path, state); !st.ok() && log_) {
          log_->error("autopilot: {}", std::string(st.message()));
        }
      }
    }
  }
  if (s == nullptr) return;  // the policy was removed meanwhile
  v1::Promotion promotion;
  {
    absl::MutexLock l(&s->mu);
    s->retrain = state;
    promotion = s->policy.promotion();
  }
  if (!ok) {
    Record(key, 0, "retrain-failed", actor, state.outcome(), job.id());
    return;
  }
  if (promotion == v1::PROMOTION_SHADOW) {
    absl::MutexLock shadowing(&s->shadow_mu);
    if (auto st = BeginShadow(key, *s, job.version(), "autopilot", true); !st.ok()) {
      Record(key, job.version(), "reject", "autopilot",
             absl::StrCat("cannot shadow: ", st.message()), job.id());
    }
  }
}

// ---------------------------------------------------------------- shadow windows

absl::StatusOr<v1::AutopilotStatus> Autopilot::StartShadow(const ModelKey& key, uint64_t version,
                                                           const std::string& actor) {
  if (auto st = RequireVersion(version); !st.ok()) return st;
  std::shared_ptr<State> s = Find(key);
  if (s == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "'", key.str(), "' has no retrain policy (it holds the shadow window): set one first"));
  }
  bool decide;
  {
    absl::MutexLock lock(&s->mu);
    decide = s->policy.promotion() == v1::PROMOTION_SHADOW;
  }
  {
    absl::MutexLock shadowing(&s->shadow_mu);
    if (auto st = BeginShadow(key, *s, version, actor, decide); !st.ok()) return st;
  }
  v1::AutopilotStatus out;
  Status(key, &out);
  return out;
}

absl::Status Autopilot::BeginShadow(const ModelKey& key, State& s, uint64_t version,
                                    const std::string& actor, bool decide) {
  auto active = registry_->Handle(key, 0);
  if (!active.ok()) return active.status();
  if (active->version == version) {
    return absl::FailedPreconditionError(
        absl::StrCat("version ", version, " is the active one: shadow a staged version"));
  }
  auto candidate = registry_->Handle(key, version);
  if (!candidate.ok()) return candidate.status();
  const auto& a = active->model->spec();
  const auto& c = candidate->model->spec();
  if (a.num_features() != c.num_features() || engine::IsSeries(a) != engine::IsSeries(c) ||
      a.window().SerializeAsString() != c.window().SerializeAsString()) {
    return absl::FailedPreconditionError(
        absl::StrCat("version ", version, " takes other inputs than active version ",
                     active->version, ": it cannot score the same batches"));
  }
  v1::RetrainPolicy p;
  std::shared_ptr<Shadow> old;
  {
    absl::MutexLock lock(&s.mu);
    p = s.policy;
    old = s.shadow;
  }
  if (old != nullptr && !old->closed) {
    old->closed = true;
    const std::string why = absl::StrCat("stopped: version ", version, " is shadowed instead");
    {
      absl::MutexLock lock(&old->mu);
      old->report.set_finished(true);
      old->report.set_outcome(why);
    }
    Record(key, old->candidate.version, "shadow-ended", actor, why);
  }
  auto shadow = std::make_shared<Shadow>(key, *active, *candidate, decide, p.shadow_samples(),
                                         p.shadow_seconds(), NowMs());
  v1::ShadowReport first;
  {
    absl::MutexLock lock(&shadow->mu);
    first = shadow->report;
  }
  first.set_outcome(replica_);  // the owner, while it runs
  if (auto st = WriteMessage((fs::path(s.key_dir) / kShadowFile).string(), first); !st.ok()) {
    return st;
  }
  {
    absl::MutexLock lock(&s.mu);
    if (old != nullptr) {
      absl::MutexLock olock(&old->mu);
      s.last_shadow = old->report;
    }
    s.shadow = shadow;
  }
  Record(key, version, "shadow", actor,
         absl::StrFormat("beside active version %d for %d samples or %g s; %s", active->version,
                         p.shadow_samples(), p.shadow_seconds(),
                         decide ? absl::StrFormat("promote when its flag rate is within "
                                                  "[%g, %g]x its target %.4g and its drift is no "
                                                  "higher",
                                                  p.min_flag_ratio(), p.max_flag_ratio(),
                                                  TargetRate(*candidate->model))
                                : "report only"));
  return absl::OkStatus();
}

void Autopilot::CheckShadow(const ModelKey& key, State& s, int64_t now_ms) {
  absl::MutexLock shadowing(&s.shadow_mu);
  std::shared_ptr<Shadow> sh;
  v1::RetrainPolicy p;
  {
    absl::MutexLock lock(&s.mu);
    sh = s.shadow;
    p = s.policy;
  }
  const std::string path = (fs::path(s.key_dir) / kShadowFile).string();
  const double heartbeat = kHeartbeatTicks * tick_seconds_ + kHeartbeatMarginSeconds;
  if (sh == nullptr) {
    // Another replica's shadow (shown in GetModel; it holds retrains back while it runs), or one a
    // server that died left: a window whose owner stopped writing is started again from nothing —
    // evidence gathered before is not kept, so nothing is promoted on part of a window. The
    // restart is claimed under the store lock, so one replica takes it over.
    auto other = ReadMessage<v1::ShadowReport>(path);
    bool open = other.ok() && !other->finished();
    if (open && AgeSeconds(path) > heartbeat) {
      ModelStore::Lock lock(registry_->store().dir());
      auto again = ReadMessage<v1::ShadowReport>(path);
      auto active = registry_->Peek(key, 0);
      if (lock.status().ok() && again.ok() && !again->finished() && AgeSeconds(path) > heartbeat) {
        if (active.ok() && active->version == again->active_version() &&
            registry_->Peek(key, again->candidate_version()).ok()) {
          // Recorded once the new window is what GetModel shows, so a reader of the audit log
          // never sees the old window's counts after this event.
          if (BeginShadow(key, s, again->candidate_version(), "autopilot",
                          p.promotion() == v1::PROMOTION_SHADOW)
                  .ok()) {
            Record(key, again->candidate_version(), "shadow-restarted", "autopilot",
                   absl::StrCat("its server (", again->outcome(),
                                ") stopped mid-window; the window started again from 0 samples "
                                "(had ",
                                again->samples(), ")"));
            return;
          }
        }
        // Nothing to resume (the versions moved on): the window ends without a decision.
        again->set_finished(true);
        again->set_outcome("stopped: its server stopped mid-window and the versions changed");
        (void)WriteMessage(path, *again);
        other = *again;
        open = false;
      }
    }
    absl::MutexLock lock(&s.mu);
    s.other_shadow = open;
    if (other.ok()) s.last_shadow = *other;
    return;
  }
  v1::ShadowReport r;
  {
    absl::MutexLock lock(&sh->mu);
    r = sh->report;
  }
  if (r.finished()) return;
  const Drift da = sh->active_stats.ComputeDrift();
  const Drift dc = sh->candidate_stats.ComputeDrift();
  r.set_active_drift_ks(da.ks);
  r.set_candidate_drift_ks(dc.ks);
  const double elapsed = (now_ms - r.started_unix_ms()) / 1000.0;
  const bool enough = r.target_samples() > 0 && r.samples() >= r.target_samples();
  const bool timed_out = r.target_seconds() > 0 && elapsed >= r.target_seconds();
  auto active = registry_->Peek(key, 0);
  std::string outcome;
  bool promote = false;
  if (!active.ok() || active->version != r.active_version()) {
    outcome = "stopped: the active version changed during the window";
  } else if (!registry_->Peek(key, r.candidate_version()).ok()) {
    outcome = "stopped: the candidate version is gone";
  } else if (enough || timed_out) {
    const double target = r.candidate_target_rate();
    const double rate = r.candidate_flag_rate();
    const std::string numbers = absl::StrFormat(
        "%d samples in %.1f s; flag rate candidate %.4f (target %.4f, allowed [%.4f, %.4f]), "
        "active %.4f; agreement: both %d, only active %d, only candidate %d; drift KS candidate "
        "%.3f, active %.3f; %d batches not compared",
        r.samples(), elapsed, rate, target, p.min_flag_ratio() * target,
        p.max_flag_ratio() * target, r.active_flag_rate(), r.both_flagged(), r.only_active(),
        r.only_candidate(), dc.ks, da.ks, r.dropped_batches());
    if (!sh->decide) {
      outcome = "window complete (report only): " + numbers;
    } else if (r.samples() < kMinShadowSamples) {
      outcome = absl::StrCat("rejected: not enough evidence (", r.samples(), " of at least ",
                             kMinShadowSamples, " samples compared); ", numbers);
    } else if (!(rate >= p.min_flag_ratio() * target && rate <= p.max_flag_ratio() * target)) {
      outcome = "rejected: flag rate outside the allowed range; " + numbers;
    } else if (!(dc.ks <= da.ks)) {
      outcome = "rejected: candidate drifts more than the active version; " + numbers;
    } else {
      promote = true;
      outcome = "promoted: " + numbers;
    }
  }
  if (outcome.empty()) {  // still running: a heartbeat with the progress for other replicas
    r.set_outcome(replica_);
    (void)WriteMessage(path, r);
    absl::MutexLock lock(&sh->mu);
    sh->report.set_active_drift_ks(da.ks);
    sh->report.set_candidate_drift_ks(dc.ks);
    return;
  }
  if (promote) {
    if (auto st = registry_->Activate(key, r.candidate_version()); !st.ok()) {
      promote = false;
      outcome = absl::StrCat("rejected: activation failed: ", st.message());
    }
  }
  sh->closed = true;
  r.set_finished(true);
  r.set_outcome(outcome);
  {
    absl::MutexLock lock(&sh->mu);
    sh->report = r;
  }
  (void)WriteMessage(path, r);
  {
    absl::MutexLock lock(&s.mu);
    s.last_shadow = r;
    if (s.shadow == sh) s.shadow = nullptr;
  }
  const std::string action =
      promote ? "promote" : (outcome.rfind("rejected", 0) == 0 ? "reject" : "shadow-ended");
  Record(key, r.candidate_version(), action, "autopilot", outcome);
}

// ---------------------------------------------------------------- the tick

void Autopilot::CheckTriggers(const ModelKey& key, std::shared_ptr<State> s_ptr, int64_t now_ms) {
  State& s = *s_ptr;
  std::string due, trigger;
  auto active = registry_->Peek(key, 0);
  // Another replica's retrain starting or finishing shows up here; ours is kept alive while its
  // job lives (file I/O outside s.mu, which the scoring path takes).
  const std::string path = (fs::path(s.key_dir) / kRetrainFile).string();
  auto stored = ReadMessage<v1::RetrainState>(path);
  if (stored.ok() && stored->running() && stored->replica() == replica_) {
    auto job = jobs_->Get(stored->job_id());
    if (job.ok() && job->state() != v1::JOB_STATE_SUCCEEDED &&
        job->state() != v1::JOB_STATE_FAILED && job->state() != v1::JOB_STATE_CANCELLED) {
      Touch(path);
    }
  }
  {
    absl::MutexLock lock(&s.mu);
    if (stored.ok()) s.retrain = *stored;
    if (!active.ok() || active->version != s.drift_version) {
      // Drift is measured against the active version's calibration: a new one starts afresh.
      s.drift = nullptr;
      s.drift_version = 0;
      s.drifted_samples = 0;
      s.scored_since_tick = 0;
    }
    const v1::RetrainPolicy p = s.policy;  // a copy: the analysis cannot follow a reference
    if (p.drift_above() > 0 && s.drift != nullptr) {
      const Drift d = s.drift->ComputeDrift();
      if (d.drifted(p.drift_above())) {
        s.drifted_samples += s.scored_since_tick;
      } else {
        s.drifted_samples = 0;
      }
      s.scored_since_tick = 0;
      // One drift retrain per active version: a staged or rejected result does not start another
      // on the same drift (a new active version, or a retrain by hand, does).
      if (d.drifted(p.drift_above()) && s.drifted_samples >= p.drift_samples() &&
          s.drift_retrained_from != s.drift_version) {
        trigger = "drift";
        due = absl::StrFormat("drift: KS %.3f over %d scores, above %g for %d samples", d.ks,
                              d.window, p.drift_above(), s.drifted_samples);
      }
    }
    if (due.empty() && p.every_hours() > 0) {
      const int64_t last = s.retrain.started_unix_ms();
      if (last == 0 || now_ms - last >= p.every_hours() * 3600e3) {
        trigger = "schedule";
        due = absl::StrFormat("schedule: every %g h", p.every_hours());
      }
    }
    if (s.retrain.running() || s.shadow != nullptr || s.other_shadow ||
        now_ms < s.next_attempt_ms) {
      due.clear();
    }
  }
  if (due.empty()) return;
  auto job = StartRetrain(key, std::move(s_ptr), trigger, due, "autopilot", false);
  if (!job.ok() && log_) {
    log_->debug("autopilot: no retrain of '{}': {}", key.str(),
                std::string(job.status().message()));
  }
}

void Autopilot::Tick() {
  absl::MutexLock ticking(&tick_mu_);
  Reload();
  std::vector<std::pair<ModelKey, std::shared_ptr<State>>> all;
  {
    absl::ReaderMutexLock lock(&mu_);
    all.assign(states_.begin(), states_.end());
  }
  const int64_t now = NowMs();
  for (auto& [key, s] : all) {
    if (auto st = s->retention.Maintain(now, false); !st.ok() && log_) {
      log_->error("autopilot: retention of '{}': {}", key.str(), std::string(st.message()));
    }
    CheckShadow(key, *s, now);
    CheckTriggers(key, s, now);
  }
}

absl::Status Autopilot::RetainUpload(const v1::TrainingJobHeader& header,
                                     const std::vector<float>& values,
                                     const std::vector<int64_t>& timestamps) {
  const ModelKey key{header.model(), header.entity()};
  std::shared_ptr<State> s = Find(key);
  if (s == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "retain: '", key.str(), "' has no retrain policy to keep the rows under; set one first"));
  }
  // Segment by segment, each written before the next is added: the write queue's bound is for
  // scoring bursts, not for a 1 GiB upload.
  const size_t d = header.num_features();
  if (d == 0) return absl::OkStatus();
  const size_t rows = values.size() / d;
  const bool series = engine::IsSeries(header.spec());
  for (size_t at = 0; at < rows; at += Retention::kSegmentRows) {
    const size_t n = std::min(Retention::kSegmentRows, rows - at);
    s->retention.Append(header.num_features(), header.feature_names(),
                        absl::MakeConstSpan(values.data() + at * d, n * d),
                        timestamps.empty() ? absl::Span<const int64_t>()
                                           : absl::MakeConstSpan(timestamps.data() + at, n),
                        {}, {}, NowMs(), series);
    if (auto st = s->retention.Maintain(NowMs(), true); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace aeserve::server
