// Ingest: bindings, row assembly per model and entity, scoring on the workers, results.
#include "server/ingest.h"

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <set>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "engine/file_io.h"
#include "server/executor.h"
#include "server/incidents.h"
#include "server/model_registry.h"
#include "server/scoring.h"
#include "server/training_jobs.h"

namespace aeserve::server {
namespace {

namespace fs = std::filesystem;

constexpr char kBindingFile[] = "INGEST";
constexpr char kRecordingFile[] = "RECORDING";
constexpr double kDefaultRecordSeconds = 1800;
constexpr uint64_t kDefaultRecordRows = 100000;
constexpr uint64_t kMaxBindingBytes = 1 << 20;
constexpr int kMaxFeatures = 4096;
constexpr uint32_t kDefaultToleranceMs = 2000;
constexpr uint32_t kDefaultFlushMs = 30000;
// Samples stamped further ahead of this server's clock are refused (a bad clock would otherwise
// become the entity's clock and make every later sample late), as are negative timestamps.
constexpr int64_t kMaxFutureMs = 10 * 60 * 1000;
// An entity label value longer than this is refused (it becomes a label on /metrics).
constexpr size_t kMaxEntityBytes = 256;
// Values (rows x features) of the rows one request may start for one model.
constexpr uint64_t kMaxRequestValues = 16u << 20;

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

bool LabelName(const std::string& s) {
  if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_')) return false;
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) return false;
  }
  return true;
}

// Identifies a series by all its labels (for counter rates).
uint64_t SeriesHash(SeriesLabels labels, size_t feature) { return absl::HashOf(labels, feature); }

// A label name given twice in one series.
bool HasDuplicateName(SeriesLabels labels) {
  if (labels.size() <= 16) {
    for (size_t i = 1; i < labels.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (labels[i].first == labels[j].first) return true;
      }
    }
    return false;
  }
  std::vector<std::string_view> names;
  names.reserve(labels.size());
  for (const auto& [n, v] : labels) names.push_back(n);
  std::sort(names.begin(), names.end());
  return std::adjacent_find(names.begin(), names.end()) != names.end();
}

}  // namespace

// An entity's result gauges (children of the families; removed with the binding).
struct EntityGauges {
  metrics::Gauge* error = nullptr;
  metrics::Gauge* anomalous = nullptr;
  metrics::Gauge* severity = nullptr;
  metrics::Gauge* alarm = nullptr;  // with debounce
};

struct Ingest::Recorder {
  Recorder(const std::string& key_dir)
      : path((fs::path(key_dir) / kRecordingFile).string()),
        rows((fs::path(key_dir) / "recording").string(), ReplicaName()) {}

  const std::string path;
  Retention rows;  // thread-safe
  absl::Mutex mu;
  v1::IngestRecording state ABSL_GUARDED_BY(mu);
  std::string bytes ABSL_GUARDED_BY(mu);  // the file as last read or written
  absl::Mutex maintain_mu;  // one Maintain at a time (flush thread, Record, TrainFromRecording)
  uint64_t appended ABSL_GUARDED_BY(mu) = 0;  // rows this replica added to this recording
  bool dirty ABSL_GUARDED_BY(mu) = false;     // rows not yet written to a segment

  bool Active(int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return state.until_unix_ms() > now_ms && (state.max_rows() == 0 || appended < state.max_rows());
  }
};

struct Ingest::Bound {
  Bound(std::string m, v1::IngestBinding b, std::vector<Selector> s, std::string file,
        const IngestLimits& limits)
      : model(std::move(m)),
        binding(std::move(b)),
        selectors(std::move(s)),
        bytes(std::move(file)),
        rows(binding.features_size(), binding.tolerance_ms(), binding.flush_ms(), limits) {}

  const std::string model;
  const v1::IngestBinding binding;  // resolved
  const std::vector<Selector> selectors;
  const std::string bytes;  // the stored file it was read from

  absl::Mutex mu;
  RowAssembler rows ABSL_GUARDED_BY(mu);
  std::deque<IngestRow> queue ABSL_GUARDED_BY(mu);
  uint64_t dropped ABSL_GUARDED_BY(mu) = 0;

  // One scorer at a time, so that each entity's rows are scored in order.
  absl::Mutex score_mu ABSL_ACQUIRED_BEFORE(mu);
  std::unordered_map<std::string, std::unique_ptr<engine::WindowBuffer>> windows
      ABSL_GUARDED_BY(score_mu);
  absl::flat_hash_map<std::string, EntityGauges> gauges ABSL_GUARDED_BY(score_mu);  // per entity
  std::string last_error ABSL_GUARDED_BY(score_mu);
  // Per entity, with debounce: its alarm and open incident.
  absl::flat_hash_map<std::string, std::unique_ptr<IncidentTracker>> trackers
      ABSL_GUARDED_BY(score_mu);

  std::atomic<uint64_t> scored{0}, skipped{0}, failed{0}, anomalies{0};
  // Replaced or unbound: rows it still scores (queued before) touch no metric, since the families'
  // children it would write may be removed by the binding that replaced it, or by Unbind. Set,
  // then both locks are taken once, so every later holder of either sees it.
  std::atomic<bool> retired{false};
  google::protobuf::RepeatedPtrField<std::string> names;  // the features', for recordings
  std::shared_ptr<Recorder> recorder;                     // set once, at Apply
};

struct Ingest::Index {
  absl::flat_hash_map<std::string, std::vector<std::pair<std::shared_ptr<Bound>, size_t>>>
      by_metric;
};

Ingest::Ingest(ModelRegistry* registry, Executor* executor, AnomalyFeed* feed, Autopilot* autopilot,
               TrainingJobs* jobs, metrics::Registry* metrics, Config config,
               std::shared_ptr<spdlog::logger> log)
    : registry_(registry),
      executor_(executor),
      feed_(feed),
      autopilot_(autopilot),
      jobs_(jobs),
      config_(config),
      log_(std::move(log)),
      index_(std::make_shared<Index>()) {
  if (metrics == nullptr) return;
  samples_ = &metrics::BuildCounter()
                  .Name("aeserve_ingest_samples_total")
                  .Help(
                      "Ingested samples by what became of them: accepted (joined a row), "
                      "unmatched (no binding selects the series), late, limited (over the "
                      "entity or series bound), invalid (NaN, Inf, stale markers)")
                  .Register(*metrics);
  rows_ = &metrics::BuildCounter()
               .Name("aeserve_ingest_rows_total")
               .Help(
                   "Rows assembled from ingested samples, by model and result (scored; "
                   "skipped: the model's scoring policy skipped them for their gaps; failed: no "
                   "model to score them or a refused row; dropped: over the queue)")
               .Register(*metrics);
  flagged_ = &metrics::BuildCounter()
                  .Name("aeserve_ingest_anomalies_total")
                  .Help("Ingested rows flagged anomalous, by model")
                  .Register(*metrics);
  error_ = &metrics::BuildGauge()
                .Name("aeserve_ingest_error")
                .Help("Reconstruction error of the last ingested row scored, per model and entity")
                .Register(*metrics);
  anomalous_ = &metrics::BuildGauge()
                    .Name("aeserve_ingest_anomalous")
                    .Help("1 when the last ingested row scored was anomalous, per model and entity")
                    .Register(*metrics);
  alarm_ = &metrics::BuildGauge()
                .Name("aeserve_ingest_alarm")
                .Help(
                    "1 while an entity's alarm is up (debounce_k of its last debounce_n ingested "
                    "rows flagged; bindings with debounce), per model and entity")
                .Register(*metrics);
  severity_ = &metrics::BuildGauge()
                   .Name("aeserve_ingest_severity")
                   .Help(
                       "Severity of the last ingested row scored: 0 normal, 1 warning, 2 "
                       "critical, per model and entity")
                   .Register(*metrics);
}

Ingest::~Ingest() { Stop(); }

void Ingest::Stop() {
  {
    absl::MutexLock lock(&stop_mu_);
    stopping_ = true;
  }
  if (flusher_.joinable()) flusher_.join();
}

void Ingest::Start() {
  Reload();
  flusher_ = std::thread([this] { FlushLoop(); });
}

std::string Ingest::FileOf(const std::string& model) const {
  return (fs::path(registry_->store().KeyDir(ModelKey{model, ""})) / kBindingFile).string();
}

absl::StatusOr<v1::IngestBinding> Ingest::Resolve(const v1::IngestBinding& in) {
  v1::IngestBinding b = in;
  b.DiscardUnknownFields();
  if (b.features_size() == 0) {
    return absl::InvalidArgumentError("ingest binding: no features (give at least one)");
  }
  if (b.features_size() > kMaxFeatures) {
    return absl::InvalidArgumentError(
        absl::StrCat("ingest binding: ", b.features_size(), " features; at most ", kMaxFeatures));
  }
  std::set<std::string> names;
  for (const auto& f : b.features()) {
    if (f.name().empty())
      return absl::InvalidArgumentError("ingest binding: a feature has no name");
    if (!names.insert(f.name()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("ingest binding: feature '", f.name(), "' is bound twice"));
    }
    if (auto s = Selector::Parse(f.selector()); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ingest binding: feature '", f.name(), "': ", s.status().message()));
    }
  }
  if (!b.entity_label().empty() && !LabelName(b.entity_label())) {
    return absl::InvalidArgumentError(
        absl::StrCat("ingest binding: entity_label '", b.entity_label(), "' is not a label name"));
  }
  if (b.tolerance_ms() == 0) b.set_tolerance_ms(kDefaultToleranceMs);
  if (b.flush_ms() == 0) b.set_flush_ms(kDefaultFlushMs);
  // (n bytes per entity: up to --ingest_max_entities of them.)
  if ((b.debounce_k() == 0) != (b.debounce_n() == 0) || b.debounce_k() > b.debounce_n() ||
      b.debounce_n() > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("ingest binding: debounce ", b.debounce_k(), " of ", b.debounce_n(),
                     ": give both, with 1 <= k <= n <= 1000 (or neither)"));
  }
  if (b.flush_ms() <= b.tolerance_ms()) {
    return absl::InvalidArgumentError(absl::StrCat("ingest binding: flush_ms ", b.flush_ms(),
                                                   " must be above tolerance_ms ",
                                                   b.tolerance_ms()));
  }
  return b;
}

absl::StatusOr<v1::IngestStatus> Ingest::SetBinding(const std::string& model,
                                                    const v1::IngestBinding& binding, bool clear) {
  auto key = MakeKey(model, "");
  if (!key.ok()) return key.status();
  const std::string path = FileOf(model);
  if (clear) {
    {
      absl::MutexLock lock(&mu_);
      if (bound_.count(model) == 0) {
        return absl::NotFoundError(absl::StrCat("'", model, "' has no ingest binding"));
      }
    }
    std::error_code ec;
    fs::remove(path, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot remove ", path, ": ", ec.message()));
    Unbind(model);
    return v1::IngestStatus{};
  }
  auto b = Resolve(binding);
  if (!b.ok()) return b.status();
  // With a model to check against: names are its features (a model without feature names is
  // bound by position, one binding feature per model feature).
  if (auto h = registry_->Handle(*key, 0); h.ok()) {
    const v1::ModelFile& file = h->model->file();
    const uint32_t d = h->model->num_features();
    if (file.feature_names_size() == static_cast<int>(d)) {
      std::set<std::string> known(file.feature_names().begin(), file.feature_names().end());
      for (const auto& f : b->features()) {
        if (known.count(f.name()) == 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("ingest binding: '", f.name(), "' is not a feature of model '", model,
                           "' (its features: ", absl::StrJoin(file.feature_names(), ", "), ")"));
        }
      }
    } else if (b->features_size() != static_cast<int>(d)) {
      return absl::InvalidArgumentError(
          absl::StrCat("ingest binding: model '", model, "' has ", d,
                       " unnamed features, bound by position: give exactly that many (got ",
                       b->features_size(), ")"));
    }
  }
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  v1::IngestBinding given = binding;
  given.DiscardUnknownFields();
  std::string bytes = given.SerializeAsString();
  if (bytes.size() > kMaxBindingBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("ingest binding: ", bytes.size(), " bytes; at most ", kMaxBindingBytes));
  }
  if (auto st = engine::WriteFileAtomically(path, bytes); !st.ok()) return st;
  if (auto st = Apply(model, *b, std::move(bytes)); !st.ok()) return st;
  v1::IngestStatus out;
  Status(model, &out);
  return out;
}

absl::Status Ingest::Apply(const std::string& model, const v1::IngestBinding& b,
                           std::string bytes) {
  std::vector<Selector> selectors;
  for (const auto& f : b.features()) {
    auto s = Selector::Parse(f.selector());
    if (!s.ok()) return s.status();
    selectors.push_back(*std::move(s));
  }
  auto fresh =
      std::make_shared<Bound>(model, b, std::move(selectors), std::move(bytes), config_.limits);
  for (const auto& f : b.features()) *fresh->names.Add() = f.name();
  fresh->recorder = RecorderOf(model);  // a recording outlives changes of the binding
  absl::MutexLock apply(&apply_mu_);
  // The entities' gauges (and, with the same debounce, their alarms) pass to the new binding.
  if (std::shared_ptr<Bound> old = Find(model); old != nullptr) {
    Retire(*old);
    absl::MutexLock from(&old->score_mu);
    absl::MutexLock to(&fresh->score_mu);
    fresh->gauges = std::move(old->gauges);
    old->gauges.clear();
    if (old->binding.debounce_k() == b.debounce_k() &&
        old->binding.debounce_n() == b.debounce_n()) {
      fresh->trackers = std::move(old->trackers);
      old->trackers.clear();
    }
  }
  absl::MutexLock lock(&mu_);
  bound_[model] = fresh;
  RebuildIndex();
  return absl::OkStatus();
}

void Ingest::Retire(Bound& b) {
  b.retired = true;
  absl::MutexLock score(&b.score_mu);  // a scoring run in progress ends first
  absl::MutexLock lock(&b.mu);         // and a TakeReady
}

void Ingest::RebuildIndex() {
  auto index = std::make_shared<Index>();
  for (const auto& [name, bound] : bound_) {
    for (size_t f = 0; f < bound->selectors.size(); ++f) {
      index->by_metric[bound->selectors[f].metric()].emplace_back(bound, f);
    }
  }
  index_ = std::move(index);
}

void Ingest::RemoveGauges(const std::string& model, const std::string& entity) {
  const metrics::Labels l{{"model", model}, {"entity", entity}};
  error_->Remove(l);
  anomalous_->Remove(l);
  severity_->Remove(l);
  alarm_->Remove(l);
}

void Ingest::Unbind(const std::string& model) {
  absl::MutexLock apply(&apply_mu_);
  std::shared_ptr<Bound> old;
  {
    absl::MutexLock lock(&mu_);
    auto it = bound_.find(model);
    if (it == bound_.end()) return;
    old = it->second;
    bound_.erase(it);
    RebuildIndex();
  }
  Retire(*old);
  if (error_ == nullptr) return;
  absl::MutexLock lock(&old->score_mu);
  for (const auto& [e, g] : old->gauges) RemoveGauges(model, e);
  old->gauges.clear();
  rows_->Remove({{"model", model}, {"result", "scored"}});
  rows_->Remove({{"model", model}, {"result", "failed"}});
  rows_->Remove({{"model", model}, {"result", "dropped"}});
  rows_->Remove({{"model", model}, {"result", "skipped"}});
  flagged_->Remove({{"model", model}});
}

void Ingest::Reload() {
  std::set<std::string> models;
  registry_->ForEach([&](const ModelKey& k, const ModelEntry&) {
    if (k.entity.empty()) models.insert(k.model);
  });
  // And models bound before their first version (bind, record, train from the recording).
  std::error_code ec;
  for (fs::directory_iterator it(registry_->store().dir(), ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.empty() || name[0] == '.' || !MakeKey(name, "").ok()) continue;
    if (fs::exists(it->path() / kBindingFile, ec)) models.insert(name);
  }
  std::map<std::string, std::string> held;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, b] : bound_) {
      models.insert(name);
      held[name] = b->bytes;
    }
  }
  for (const std::string& model : models) {
    auto bytes = engine::ReadRegularFile(FileOf(model), kMaxBindingBytes);
    if (absl::IsNotFound(bytes.status())) {
      if (held.count(model) > 0) Unbind(model);  // removed by another replica
      continue;
    }
    if (bytes.ok() && held.count(model) > 0 && held[model] == *bytes) continue;
    v1::IngestBinding given;
    absl::StatusOr<v1::IngestBinding> b = !bytes.ok() ? bytes.status()
                                          : !given.ParseFromString(*bytes)
                                              ? absl::DataLossError("does not parse")
                                              : Resolve(given);
    absl::Status st = b.ok() ? Apply(model, *b, *std::move(bytes)) : b.status();
    if (!st.ok() && log_) {
      log_->error("ingest: binding of '{}' not used: {}", model, std::string(st.message()));
    }
  }
}

bool Ingest::Status(const std::string& model, v1::IngestStatus* out) const {
  std::shared_ptr<Bound> b = Find(model);
  if (b == nullptr) return false;
  *out->mutable_binding() = b->binding;
  {
    absl::MutexLock lock(&b->mu);
    out->set_entities(b->rows.entities());
  }
  out->set_rows_scored(b->scored.load());
  out->set_rows_failed(b->failed.load());
  out->set_rows_skipped(b->skipped.load());
  out->set_anomalies(b->anomalies.load());
  Recorder& r = *b->recorder;
  {
    absl::MutexLock lock(&r.mu);
    if (r.state.started_unix_ms() == 0) return true;
    *out->mutable_recording() = r.state;
    out->set_recording_now(r.Active(NowMs()));
  }
  out->set_recorded_rows(r.rows.Totals().rows);
  return true;
}

std::shared_ptr<Ingest::Bound> Ingest::Find(const std::string& model) const {
  absl::MutexLock lock(&mu_);
  auto it = bound_.find(model);
  return it == bound_.end() ? nullptr : it->second;
}

std::shared_ptr<Ingest::Recorder> Ingest::RecorderOf(const std::string& model) {
  {
    absl::MutexLock lock(&mu_);
    auto it = recorders_.find(model);
    if (it != recorders_.end()) return it->second;
  }
  auto r = std::make_shared<Recorder>(registry_->store().KeyDir(ModelKey{model, ""}));
  auto bytes = engine::ReadRegularFile(r->path, kMaxBindingBytes);
  {
    absl::MutexLock lock(&r->mu);
    if (bytes.ok() && r->state.ParseFromString(*bytes)) r->bytes = *bytes;
    r->rows.SetBounds(r->state.max_rows(), 0, v1::FLAGGED_ROWS_KEEP);
  }
  (void)r->rows.Maintain(NowMs(), false);  // the totals of what is on disk
  absl::MutexLock lock(&mu_);
  auto [it, added] = recorders_.emplace(model, r);
  return it->second;
}

absl::Status Ingest::WriteRecording(const std::string& model, Recorder& r) {
  std::string bytes;
  {
    absl::MutexLock lock(&r.mu);
    bytes = r.state.SerializeAsString();
    r.bytes = bytes;
  }
  std::error_code ec;
  fs::create_directories(fs::path(r.path).parent_path(), ec);
  if (auto st = engine::WriteFileAtomically(r.path, bytes); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("recording of '", model, "': ", st.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::IngestStatus> Ingest::Record(const std::string& model, double seconds,
                                                uint64_t max_rows, bool stop) {
  std::shared_ptr<Bound> b = Find(model);
  if (b == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "'", model, "' has no ingest binding: bind its features first (aectl ingest bind)"));
  }
  if (!std::isfinite(seconds) || seconds < 0 || seconds > 366 * 86400.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("seconds ", seconds, ": give 0 (30 minutes) up to a year"));
  }
  Recorder& r = *b->recorder;
  const int64_t now = NowMs();
  if (stop) {
    bool ended = false;  // already, by its time or its row bound: stopping changes nothing
    {
      absl::MutexLock lock(&r.mu);
      if (r.state.started_unix_ms() == 0) {
        return absl::FailedPreconditionError(absl::StrCat("'", model, "' has no recording"));
      }
      ended = !r.Active(now);
      if (!ended) r.state.set_until_unix_ms(now);
    }
    if (!ended) {
      if (auto st = WriteRecording(model, r); !st.ok()) return st;
    }
  } else {
    if (seconds == 0) seconds = kDefaultRecordSeconds;
    if (max_rows == 0) max_rows = kDefaultRecordRows;
    {
      absl::MutexLock mlock(&r.maintain_mu);
      r.rows.DeleteAll();  // a new recording replaces the last one
    }
    {
      absl::MutexLock lock(&r.mu);
      r.state.set_started_unix_ms(now);
      r.state.set_until_unix_ms(now + static_cast<int64_t>(seconds * 1000));
      r.state.set_max_rows(max_rows);
      r.appended = 0;
      r.dirty = false;
      r.rows.SetBounds(max_rows, 0, v1::FLAGGED_ROWS_KEEP);
    }
    if (auto st = WriteRecording(model, r); !st.ok()) return st;
  }
  {
    absl::MutexLock mlock(&r.maintain_mu);
    (void)r.rows.Maintain(now, true);
  }
  v1::IngestStatus out;
  Status(model, &out);
  return out;
}

absl::StatusOr<v1::TrainingJob> Ingest::TrainFromRecording(const v1::TrainingJobHeader& header,
                                                           const std::string& actor) {
  std::shared_ptr<Bound> b = Find(header.model());
  if (b == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", header.model(), "' has no ingest binding, so no recording"));
  }
  if (!header.entity().empty()) {
    return absl::InvalidArgumentError(
        "a recording holds every entity's rows: train the generic model (no entity)");
  }
  if (header.spec().window().length() > 1) {
    return absl::InvalidArgumentError(
        "a recording interleaves its entities' rows, so it cannot train a series (window) model");
  }
  std::shared_ptr<Recorder> recorder = b->recorder;
  {
    absl::MutexLock mlock(&recorder->maintain_mu);
    if (auto st = recorder->rows.Maintain(NowMs(), true); !st.ok()) return st;
  }
  const uint64_t recorded = recorder->rows.Totals().rows;
  if (recorded < TrainingJobs::kMinTrainingRows) {
    return absl::FailedPreconditionError(absl::StrCat(
        "'", header.model(), "' has ", recorded, " recorded rows; at least ",
        TrainingJobs::kMinTrainingRows, " are needed (aectl ingest record, then wait)"));
  }
  {
    // Only rows of the binding's features, in its order, can train (a changed binding leaves
    // the older rows unreadable).
    std::vector<std::string> names(b->names.begin(), b->names.end());
    auto readable = recorder->rows.Read(static_cast<uint32_t>(names.size()),
                                        TrainingJobs::kMinTrainingRows, names);
    if (!readable.ok()) return readable.status();
    if (readable->rows() < TrainingJobs::kMinTrainingRows) {
      return absl::FailedPreconditionError(absl::StrCat(
          "'", header.model(), "': ", readable->rows(), " recorded rows have the binding's ",
          names.size(), " features (", readable->other_features,
          " segments were recorded with other features, before the binding changed): record "
          "again"));
    }
  }
  v1::TrainingJobHeader h = header;
  h.clear_feature_names();
  for (const std::string& n : b->names) h.add_feature_names(n);
  const uint32_t d = static_cast<uint32_t>(b->names.size());
  h.set_num_features(d);
  h.set_rows(0);
  if (h.description().empty()) {
    h.set_description(absl::StrCat("trained on the ingest recording (", recorded, " rows)"));
  }
  std::vector<std::string> names(b->names.begin(), b->names.end());
  const uint64_t max_rows = config_.max_training_values / d;  // the newest, when there are more
  TrainingJobs::Source source = [recorder, d, names, max_rows](std::vector<float>* values,
                                                               std::vector<int64_t>* timestamps) {
    absl::Status st;
    {
      absl::MutexLock mlock(&recorder->maintain_mu);
      st = recorder->rows.Maintain(NowMs(), true);
    }
    if (!st.ok()) return st;
    auto rows = recorder->rows.Read(d, max_rows, names);
    if (!rows.ok()) return rows.status();
    const size_t n = rows->rows();
    *values = std::move(rows->values);
    timestamps->clear();  // rows of several entities: not one series
    return TrainingJobs::EnoughRows(n);
  };
  return jobs_->SubmitFrom(h, std::move(source), JobOrigin{actor, "recording"}, nullptr);
}

std::shared_ptr<const Ingest::Index> Ingest::index() const {
  absl::MutexLock lock(&mu_);
  return index_;
}

absl::StatusOr<IngestCounts> Ingest::Write(const WriteView& request, bool wait) {
  {
    absl::MutexLock lock(&stop_mu_);
    if (stopping_) return absl::UnavailableError("the server is shutting down");
  }
  if (executor_->queue_depth() * 2 >= static_cast<size_t>(config_.max_queue)) {
    return absl::UnavailableError("scoring queue is over half full; retry later");
  }
  const std::shared_ptr<const Index> idx = index();
  const int64_t now = NowMs();
  IngestCounts c;
  // First which series feed which bound feature; then each bound model takes its samples under
  // one hold of its lock, in the request's order.
  struct Match {
    size_t fed;  // index into `fed`
    size_t feature;
    const WriteView::Series* series;
    std::string_view entity;
    uint64_t hash;
  };
  std::vector<Match> matches;
  std::vector<std::shared_ptr<Bound>> fed;  // bound models that got samples
  // What became of each sample: counted once, also when several bindings select its series
  // (accepted when any binding took it, else what the first one said).
  enum Result : uint8_t { kUnset, kAccepted, kLate, kLimited, kInvalid };
  std::vector<uint8_t> result(request.samples.size(), kUnset);
  auto note = [&](const WriteView::Sample& s, Result r) {
    uint8_t& at = result[static_cast<size_t>(&s - request.samples.data())];
    if (at == kUnset || r == kAccepted) at = r;
  };
  auto note_series = [&](const WriteView::Series& ts, Result r) {
    for (const WriteView::Sample& s : request.SamplesOf(ts)) note(s, r);
  };
  for (const WriteView::Series& ts : request.series) {
    const SeriesLabels labels = request.LabelsOf(ts);
    const size_t num_samples = ts.samples_end - ts.samples_begin;
    if (HasDuplicateName(labels)) {  // which value would count? Prometheus refuses them too
      note_series(ts, kInvalid);
      continue;
    }
    std::string_view name;
    for (const auto& [n, v] : labels) {
      if (n == "__name__") name = v;
    }
    auto it = idx->by_metric.find(absl::string_view(name.data(), name.size()));
    bool matched = false;
    if (it != idx->by_metric.end()) {
      for (const auto& [b, f] : it->second) {
        if (!b->selectors[f].Matches(labels)) continue;
        matched = true;
        std::string_view entity;
        if (!b->binding.entity_label().empty()) {
          for (const auto& [n, v] : labels) {
            if (n == b->binding.entity_label()) entity = v;
          }
        }
        if (entity.size() > kMaxEntityBytes) {
          note_series(ts, kLimited);
          continue;
        }
        if (!ValidUtf8(entity)) {  // it becomes a label on /metrics and a string in the feed
          note_series(ts, kInvalid);
          continue;
        }
        size_t k = std::find(fed.begin(), fed.end(), b) - fed.begin();
        if (k == fed.size()) fed.push_back(b);
        matches.push_back(Match{k, f, &ts, entity, SeriesHash(labels, f)});
      }
    }
    if (!matched) c.unmatched += num_samples;
  }
  if (fed.size() > 1) {
    std::stable_sort(matches.begin(), matches.end(),
                     [](const Match& a, const Match& b) { return a.fed < b.fed; });
  }
  for (auto m = matches.begin(); m != matches.end();) {
    Bound& b = *fed[m->fed];
    absl::MutexLock lock(&b.mu);
    // The rows this request starts for the model hold at most kMaxRequestValues values: samples
    // spread so that each starts a row of its own cannot make one request's rows huge.
    const uint64_t created = b.rows.rows_created();
    const uint64_t max_new_rows =
        kMaxRequestValues / std::max<uint64_t>(1, b.binding.features_size());
    for (const size_t k = m->fed; m != matches.end() && m->fed == k; ++m) {
      const bool rate = b.selectors[m->feature].rate();
      for (const WriteView::Sample& s : request.SamplesOf(*m->series)) {
        // NaN (stale markers), infinities, values beyond float range, timestamps before 1970
        // or more than 10 minutes ahead of this server.
        if (!(std::fabs(s.value) <= std::numeric_limits<float>::max()) || s.timestamp_ms < 0 ||
            s.timestamp_ms > now + kMaxFutureMs) {
          note(s, kInvalid);
          continue;
        }
        if (b.rows.rows_created() - created >= max_new_rows) {
          note(s, kLimited);
          continue;
        }
        switch (b.rows.Add(m->entity, m->hash, m->feature, rate, s.timestamp_ms, s.value, now)) {
          case RowAssembler::Outcome::kAccepted:
          case RowAssembler::Outcome::kFirstOfRate:
            note(s, kAccepted);
            break;
          case RowAssembler::Outcome::kLate:
          case RowAssembler::Outcome::kDuplicate:
            note(s, kLate);
            break;
          case RowAssembler::Outcome::kInvalid:
            note(s, kInvalid);
            break;
          case RowAssembler::Outcome::kEntityLimit:
          case RowAssembler::Outcome::kSeriesLimit:
          case RowAssembler::Outcome::kRowLimit:
            note(s, kLimited);
            break;
        }
      }
    }
  }
  for (uint8_t r : result) {
    c.accepted += r == kAccepted;
    c.late += r == kLate;
    c.limited += r == kLimited;
    c.invalid += r == kInvalid;
  }
  if (samples_ != nullptr) {
    samples_->Add({{"result", "accepted"}}).Increment(static_cast<double>(c.accepted));
    samples_->Add({{"result", "unmatched"}}).Increment(static_cast<double>(c.unmatched));
    samples_->Add({{"result", "late"}}).Increment(static_cast<double>(c.late));
    samples_->Add({{"result", "limited"}}).Increment(static_cast<double>(c.limited));
    samples_->Add({{"result", "invalid"}}).Increment(static_cast<double>(c.invalid));
  }
  // The rows this request made ready, queued in order and scored before the reply.
  std::vector<std::shared_ptr<Bound>> touched;
  for (const auto& b : fed) {
    bool pending = false;
    c.rows += TakeReady(*b, /*flush=*/false, now, &pending);
    if (pending) touched.push_back(b);
  }
  // Rows that could not be handed to a worker stay queued for the next write or flush tick.
  if (!touched.empty()) Schedule(touched, wait);
  return c;
}

size_t Ingest::TakeReady(Bound& b, bool flush, int64_t now_ms, bool* pending) {
  std::vector<IngestRow> ready;
  std::vector<std::string> forgotten;
  absl::Cleanup forget = [&] {  // after b.mu is released: their gauges and windows go
    if (forgotten.empty()) return;
    absl::MutexLock score(&b.score_mu);
    for (const std::string& e : forgotten) {
      b.windows.erase(e);
      b.trackers.erase(e);
      if (b.gauges.erase(e) > 0 && error_ != nullptr) RemoveGauges(b.model, e);
    }
  };
  absl::MutexLock lock(&b.mu);
  b.rows.Take(&ready);
  if (flush) b.rows.Flush(now_ms, &ready, &forgotten);
  const size_t n = ready.size();
  if (n > 0) {
    Recorder& r = *b.recorder;
    absl::MutexLock rlock(&r.mu);
    if (r.Active(now_ms)) {  // complete rows only: a training set without gaps
      const uint32_t d = static_cast<uint32_t>(b.names.size());
      for (const IngestRow& row : ready) {
        if (!r.Active(now_ms)) break;
        if (std::any_of(row.values.begin(), row.values.end(),
                        [](float v) { return std::isnan(v); })) {
          continue;
        }
        const int64_t t = row.timestamp_ms;
        r.rows.Append(d, b.names, row.values, absl::MakeConstSpan(&t, 1), {}, {}, now_ms);
        ++r.appended;
        r.dirty = true;
      }
    }
  }
  for (IngestRow& row : ready) b.queue.push_back(std::move(row));
  const size_t max_rows = std::max<size_t>(
      64, config_.max_queued_values / std::max<size_t>(1, b.binding.features_size()));
  while (b.queue.size() > max_rows) {
    b.queue.pop_front();
    ++b.dropped;
    if (rows_ != nullptr && !b.retired) {
      rows_->Add({{"model", b.model}, {"result", "dropped"}}).Increment();
    }
  }
  *pending = !b.queue.empty();
  return n;
}

bool Ingest::Schedule(const std::vector<std::shared_ptr<Bound>>& touched, bool wait) {
  auto done = std::make_shared<absl::Notification>();
  const bool queued = executor_->TrySubmit([this, touched, done](Worker& worker) {
    for (const auto& b : touched) ScoreQueued(*b, worker);
    done->Notify();
  });
  if (queued && wait) done->WaitForNotification();
  return queued;
}

void Ingest::ScoreQueued(Bound& b, Worker& worker) {
  absl::MutexLock score(&b.score_mu);
  std::deque<IngestRow> rows;
  {
    absl::MutexLock lock(&b.mu);
    rows.swap(b.queue);
  }
  if (rows.empty()) return;
  // One engine batch per model that scores the rows: every entity the generic model scores goes
  // into one batch (each row is its own sample), except for series models, whose windows are per
  // entity. Rows keep their order within an entity.
  struct Batch {
    ModelHandle handle;
    std::string window_of;  // series models: the entity whose window it is
    std::vector<const IngestRow*> rows;
    std::vector<std::string> entities;  // per row
  };
  std::vector<Batch> batches;
  std::map<std::pair<const engine::Model*, std::string_view>, size_t> batch_of;
  // Per entity, unless the model has no entity models: then the generic one scores them all.
  std::optional<absl::StatusOr<ModelHandle>> generic;
  if (!registry_->HasEntities(b.model)) generic = registry_->Get(b.model, "", 0);
  absl::flat_hash_map<std::string, absl::StatusOr<ModelHandle>> handles;
  // A retired binding touches no metric (Bound::retired); it cannot retire during this run, which
  // holds score_mu.
  const bool counting = rows_ != nullptr && !b.retired;
  auto fail = [&](const std::string& entity, size_t n,
                  const absl::Status& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b.score_mu) {
    b.failed += n;
    if (counting) {
      rows_->Add({{"model", b.model}, {"result", "failed"}}).Increment(static_cast<double>(n));
    }
    const std::string msg(st.message());
    if (log_ && msg != b.last_error) {  // once per distinct reason, not once per row
      log_->warn("ingest: rows of '{}' entity '{}' not scored: {}", b.model, entity, msg);
    }
    b.last_error = msg;
  };
  for (const IngestRow& r : rows) {
    const absl::StatusOr<ModelHandle>* h = generic.has_value() ? &*generic : nullptr;
    if (h == nullptr) {
      auto at = handles.find(r.entity);
      if (at == handles.end())
        at = handles.emplace(r.entity, registry_->Get(b.model, r.entity, 0)).first;
      h = &at->second;
    }
    if (!h->ok()) {
      fail(r.entity, 1, h->status());
      continue;
    }
    const ModelHandle& handle = **h;
    const bool series = handle.model->file().spec().window().length() > 1;
    auto key = std::make_pair(handle.model.get(),
                              series ? std::string_view(r.entity) : std::string_view());
    auto at = batch_of.find(key);
    if (at == batch_of.end()) {
      at = batch_of.emplace(key, batches.size()).first;
      batches.push_back(Batch{handle, series ? r.entity : std::string(), {}, {}});
    }
    batches[at->second].rows.push_back(&r);
    batches[at->second].entities.push_back(r.entity);
  }
  // With debounce: each entity's rows of a scored batch, in order, fed to its alarm as the
  // response of a stream of its own; the incident changes published.
  auto debounce = [&](const ModelHandle& handle, const std::vector<std::string>& entities,
                      const v1::ScoreResponse& resp) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b.score_mu) {
    const int rows = resp.anomalous_size();
    const int k_top = rows > 0 ? resp.top_features_size() / rows : 0;
    const bool names = resp.top_feature_names_size() == resp.top_features_size();
    std::vector<std::pair<const std::string*, v1::ScoreResponse>> parts;  // in first-row order
    absl::flat_hash_map<absl::string_view, size_t> part_of;
    for (int i = 0; i < rows; ++i) {
      const std::string& e = entities[static_cast<size_t>(i)];
      auto [it, added] = part_of.try_emplace(e, parts.size());
      if (added) parts.emplace_back(&e, v1::ScoreResponse());
      v1::ScoreResponse& r = parts[it->second].second;
      r.add_anomalous(resp.anomalous(i));
      r.add_errors(resp.errors(i));
      if (i < resp.scores_size()) r.add_scores(resp.scores(i));
      if (i < resp.severity_size()) r.add_severity(resp.severity(i));
      if (i < resp.timestamps_ms_size()) r.add_timestamps_ms(resp.timestamps_ms(i));
      for (int j = 0; j < k_top; ++j) {
        r.add_top_features(resp.top_features(i * k_top + j));
        if (names) r.add_top_feature_names(resp.top_feature_names(i * k_top + j));
      }
    }
    const int64_t now = NowMs();
    for (auto& [entity, r] : parts) {
      auto& tracker = b.trackers[*entity];
      if (tracker == nullptr) {
        tracker = std::make_unique<IncidentTracker>(b.binding.debounce_k(), b.binding.debounce_n());
      }
      tracker->Feed(IncidentSource{b.model, *entity, "", now}, &r);
      if (feed_ != nullptr && r.incidents_size() > 0 && feed_->HasWatchers()) {
        feed_->PublishIncidents(handle, r.incidents());
      }
    }
  };
  const int d = b.binding.features_size();
  for (const Batch& batch : batches) {
    const size_t n = batch.rows.size();
    const bool named = batch.handle.model->file().feature_names_size() ==
                       static_cast<int>(batch.handle.model->num_features());
    v1::Samples s;
    s.set_num_features(static_cast<uint32_t>(d));
    if (named) *s.mutable_feature_names() = b.names;
    s.mutable_values()->Reserve(static_cast<int>(n) * d);
    s.mutable_timestamps_ms()->Reserve(static_cast<int>(n));
    for (const IngestRow* r : batch.rows) {
      for (float v : r->values) s.add_values(v);
      s.add_timestamps_ms(r->timestamp_ms);
    }
    v1::ScoreResponse resp;
    ScoreHooks hooks;
    hooks.feed = feed_;
    hooks.autopilot = autopilot_;
    hooks.source_entities = &batch.entities;
    if (!batch.window_of.empty()) hooks.window = &b.windows[batch.window_of];
    const absl::Status st = ScoreSamples(batch.handle, s, v1::ScoreOptions(),
                                         config_.max_batch_rows, worker, &resp, hooks);
    if (!st.ok()) {
      fail(batch.entities.front(), n, st);
      continue;
    }
    // Rows the model's scoring policy skipped for their gaps are counted apart.
    const size_t skipped =
        static_cast<size_t>(std::count(resp.skipped().begin(), resp.skipped().end(), true));
    b.scored += n - skipped;
    b.skipped += skipped;
    b.anomalies += resp.num_anomalies();
    if (b.binding.debounce_k() > 0) debounce(batch.handle, batch.entities, resp);
    if (!counting) continue;
    rows_->Add({{"model", b.model}, {"result", "scored"}})
        .Increment(static_cast<double>(n - skipped));
    if (skipped > 0) {
      rows_->Add({{"model", b.model}, {"result", "skipped"}})
          .Increment(static_cast<double>(skipped));
    }
    flagged_->Add({{"model", b.model}}).Increment(resp.num_anomalies());
    // The gauges show each entity's last row that was scored (not skipped for its gaps).
    absl::flat_hash_set<absl::string_view> done;
    for (int i = resp.errors_size() - 1; i >= 0; --i) {
      if (i < resp.skipped_size() && resp.skipped(i)) continue;
      const std::string& entity = batch.entities[static_cast<size_t>(i)];
      if (!done.insert(entity).second) continue;
      EntityGauges& g = b.gauges[entity];  // inserted once per entity
      if (g.error == nullptr) {
        const metrics::Labels l{{"model", b.model}, {"entity", entity}};
        g = EntityGauges{&error_->Add(l), &anomalous_->Add(l), &severity_->Add(l)};
      }
      if (b.binding.debounce_k() > 0) {
        if (g.alarm == nullptr) g.alarm = &alarm_->Add({{"model", b.model}, {"entity", entity}});
        g.alarm->Set(b.trackers[entity]->open() ? 1 : 0);
      }
      g.error->Set(resp.errors(i));
      g.anomalous->Set(resp.anomalous(i) ? 1 : 0);
      g.severity->Set(i < resp.severity_size() ? resp.severity(i) : (resp.anomalous(i) ? 1 : 0));
    }
  }
}

void Ingest::FlushLoop() {
  const absl::Duration tick = absl::Seconds(config_.flush_tick_seconds);
  while (true) {
    {
      absl::MutexLock lock(&stop_mu_);
      if (stop_mu_.AwaitWithTimeout(absl::Condition(&stopping_), tick)) return;
    }
    std::vector<std::shared_ptr<Bound>> all;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [name, b] : bound_) all.push_back(b);
    }
    const int64_t now = NowMs();
    std::vector<std::shared_ptr<Bound>> touched;
    for (const auto& b : all) {
      bool pending = false;
      TakeReady(*b, /*flush=*/true, now, &pending);
      if (pending) touched.push_back(b);
      // The recording's rows reach a segment file each tick, all of them once it has ended.
      Recorder& r = *b->recorder;
      bool maintain = false, force = false;
      {
        absl::MutexLock lock(&r.mu);
        maintain = r.dirty;
        force = !r.Active(now);
        if (force) r.dirty = false;
      }
      if (maintain) {
        absl::MutexLock mlock(&r.maintain_mu);
        if (auto st = r.rows.Maintain(now, force); !st.ok() && log_) {
          log_->error("ingest: recording of '{}': {}", b->model, std::string(st.message()));
        }
      }
    }
    if (!touched.empty()) Schedule(touched, /*wait=*/false);
  }
}

}  // namespace aeserve::server
