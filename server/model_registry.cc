// The models the server hosts, their versions and states, and lifecycle changes.
#include "model_registry.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "threshold.h"
#include "window.h"

namespace aeserve::server {

absl::StatusOr<std::shared_ptr<const engine::Model>> ModelRegistry::Build(
    const v1::ModelFile& file) const {
  const auto start = std::chrono::steady_clock::now();
  auto model = engine::Model::Create(file, model_options_);
  if (metrics_ != nullptr) {
    metrics_->RecordModelLoad(model.ok(), std::chrono::duration<double>(
                                              std::chrono::steady_clock::now() - start).count());
  }
  return model;
}

std::shared_ptr<ModelMetrics> ModelRegistry::MetricsFor(const ModelKey& key, uint64_t version,
                                                        const engine::Model& model) const {
  if (metrics_ == nullptr) return nullptr;
  // Per-entity models share one set of series per model, so entities never become labels.
  if (!key.entity.empty()) return metrics_->ForModel(key.model, "entity", {});
  const auto& c = model.file().calibration_errors();
  return metrics_->ForModel(key.model, std::to_string(version), std::vector<float>(c.begin(), c.end()));
}

void ModelRegistry::ReportStoreError(const ModelKey& key, const char* kind,
                                     const std::string& message) const {
  if (log_ != nullptr) log_->error("model store: model '{}': {}", key.str(), message);
  if (metrics_ != nullptr) metrics_->RecordStoreError(kind);
}

ModelRegistry::Version ModelRegistry::LoadVersion(const ModelKey& key, uint64_t v) const {
  Version ver;
  ver.stamp = store_.Stamp(key, v);
  auto file = store_.Load(key, v);
  auto model = file.ok() ? Build(*file) : absl::StatusOr<std::shared_ptr<const engine::Model>>(file.status());
  if (!model.ok()) {
    ver.state = v1::MODEL_STATE_UNAVAILABLE;
    ver.error = std::string(model.status().message());
    if (!file.ok()) ReportStoreError(key, "model_file", absl::StrCat("version ", v, ": ", ver.error));
    return ver;
  }
  ver.state = v1::MODEL_STATE_READY;
  ver.model = *std::move(model);
  ver.metrics = MetricsFor(key, v, *ver.model);
  return ver;
}

ModelRegistry::Entry ModelRegistry::LoadEntry(const ModelKey& key) const {
  Entry entry;
  for (uint64_t v : store_.ListVersions(key)) entry.versions[v] = LoadVersion(key, v);
  auto active = store_.ReadActive(key);
  if (active.ok()) {
    entry.active = *active;
  } else if (active.status().code() == absl::StatusCode::kNotFound) {
    if (!entry.versions.empty()) {
      entry.active = entry.versions.rbegin()->first;
      if (log_ != nullptr) {
        log_->warn("model store: model '{}' has no ACTIVE file: version {} (the highest) is active",
                   key.str(), entry.active);
      }
    }
  } else {
    // Never fall back to another version: that could promote a staged one.
    entry.error = std::string(active.status().message());
    ReportStoreError(key, "active", entry.error);
    return entry;
  }
  auto it = entry.versions.find(entry.active);
  if (entry.active == 0) {
    entry.error = "no active version";
  } else if (it == entry.versions.end()) {
    entry.error = absl::StrCat("active version ", entry.active, " does not exist");
  } else if (it->second.state != v1::MODEL_STATE_READY) {
    entry.error = absl::StrCat("active version ", entry.active, ": ", it->second.error);
  }
  return entry;
}

int ModelRegistry::LoadAll() {
  absl::MutexLock admin(&admin_mu_);
  int ready = 0;
  for (const ModelKey& key : store_.ListModels()) {
    store_.RemoveDebris(key);
    Entry entry = LoadEntry(key);
    if (entry.error.empty()) ++ready;
    absl::MutexLock lock(&mu_);
    models_[key] = std::move(entry);
  }
  return ready;
}

absl::StatusOr<ModelHandle> ModelRegistry::GetLocked(const ModelKey& key, uint64_t version) const {
  auto it = models_.find(key);
  if (it == models_.end()) return absl::NotFoundError(absl::StrCat("unknown model '", key.str(), "'"));
  const Entry& e = it->second;
  const uint64_t v = version == 0 ? e.active : version;
  if (v == 0) return absl::UnavailableError(absl::StrCat("model '", key.str(), "' has no active version"));
  auto vit = e.versions.find(v);
  if (vit == e.versions.end()) {
    return absl::NotFoundError(absl::StrCat("model '", key.str(), "' has no version ", v));
  }
  if (vit->second.state != v1::MODEL_STATE_READY) {
    return absl::UnavailableError(
        absl::StrCat("model '", key.str(), "' version ", v, " is unavailable: ", vit->second.error));
  }
  return ModelHandle{vit->second.model, key.model, key.entity, v, vit->second.metrics};
}

absl::StatusOr<ModelHandle> ModelRegistry::Get(const std::string& model, const std::string& entity,
                                               uint64_t version) const {
  absl::ReaderMutexLock lock(&mu_);
  if (!entity.empty()) {
    ModelKey ek{model, entity};
    if (models_.count(ek)) return GetLocked(ek, version);
  }
  return GetLocked(ModelKey{model, ""}, version);
}

absl::StatusOr<ModelHandle> ModelRegistry::Handle(const ModelKey& key, uint64_t version) const {
  absl::ReaderMutexLock lock(&mu_);
  return GetLocked(key, version);
}

absl::StatusOr<uint64_t> ModelRegistry::AddVersion(const ModelKey& key, const v1::ModelFile& file,
                                                   bool activate) {
  // Load and warm before anything becomes visible.
  auto model = Build(file);
  if (!model.ok()) return model.status();
  absl::MutexLock admin(&admin_mu_);
  ModelStore::Lock store_lock(store_.dir());
  if (!store_lock.status().ok()) return store_lock.status();
  auto version = store_.AddVersion(key, file);
  if (!version.ok()) return version.status();
  bool first = false;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = models_.find(key);
    first = it == models_.end() || it->second.active == 0;
  }
  if (activate || first) {
    if (auto st = store_.WriteActive(key, *version); !st.ok()) return st;
  }
  absl::MutexLock lock(&mu_);
  Entry& e = models_[key];
  auto m = MetricsFor(key, *version, **model);
  e.versions[*version] = Version{v1::MODEL_STATE_READY, "", *std::move(model), std::move(m),
                                 store_.Stamp(key, *version)};
  if (activate || first) {
    e.active = *version;
    e.error.clear();
  }
  return *version;
}

absl::Status ModelRegistry::Activate(const ModelKey& key, uint64_t version) {
  if (auto st = RequireVersion(version); !st.ok()) return st;
  absl::MutexLock admin(&admin_mu_);
  ModelStore::Lock store_lock(store_.dir());
  if (!store_lock.status().ok()) return store_lock.status();
  {
    absl::ReaderMutexLock lock(&mu_);
    auto h = GetLocked(key, version);  // must exist and be ready (loaded and warm)
    if (!h.ok()) return h.status();
  }
  if (auto st = store_.WriteActive(key, version); !st.ok()) return st;
  if (metrics_ != nullptr) metrics_->RecordSwap();
  absl::MutexLock lock(&mu_);
  Entry& e = models_[key];
  e.active = version;
  e.error.clear();
  return absl::OkStatus();
}

absl::Status ModelRegistry::DeleteVersion(const ModelKey& key, uint64_t version, bool force) {
  if (auto st = RequireVersion(version); !st.ok()) return st;
  absl::MutexLock admin(&admin_mu_);
  ModelStore::Lock store_lock(store_.dir());
  if (!store_lock.status().ok()) return store_lock.status();
  bool active = false;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = models_.find(key);
    if (it == models_.end()) return absl::NotFoundError(absl::StrCat("unknown model '", key.str(), "'"));
    if (!it->second.versions.count(version)) {
      return absl::NotFoundError(absl::StrCat("model '", key.str(), "' has no version ", version));
    }
    active = it->second.active == version;
  }
  if (active && !force) {
    return absl::FailedPreconditionError(absl::StrCat(
        "version ", version, " of '", key.str(),
        "' is active: activate another version first, or delete with force"));
  }
  if (active) {
    if (auto st = store_.ClearActive(key); !st.ok()) return st;
  }
  if (auto st = store_.DeleteVersion(key, version); !st.ok()) return st;
  if (metrics_ != nullptr && key.entity.empty()) metrics_->ForgetModel(key.model, std::to_string(version));
  absl::MutexLock lock(&mu_);
  Entry& e = models_[key];
  e.versions.erase(version);
  if (active) {
    e.active = 0;
    e.error = "no active version";
  }
  return absl::OkStatus();
}

absl::Status ModelRegistry::DeleteModel(const ModelKey& key, bool force) {
  absl::MutexLock admin(&admin_mu_);
  ModelStore::Lock store_lock(store_.dir());
  if (!store_lock.status().ok()) return store_lock.status();
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = models_.find(key);
    if (it == models_.end()) return absl::NotFoundError(absl::StrCat("unknown model '", key.str(), "'"));
    if (it->second.active != 0 && !force) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model '", key.str(), "' has an active version: delete with force"));
    }
  }
  if (auto st = store_.DeleteModel(key); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  for (auto it = models_.begin(); it != models_.end();) {
    const bool gone = it->first == key || (key.entity.empty() && it->first.model == key.model);
    it = gone ? models_.erase(it) : std::next(it);
  }
  return absl::OkStatus();
}

absl::Status ModelRegistry::EditVersion(const ModelKey& key, uint64_t version,
                                        absl::FunctionRef<absl::Status(v1::ModelFile&)> edit) {
  absl::MutexLock admin(&admin_mu_);
  ModelStore::Lock store_lock(store_.dir());
  if (!store_lock.status().ok()) return store_lock.status();
  ModelHandle h;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto got = GetLocked(key, version);
    if (!got.ok()) return got.status();
    h = *got;
  }
  v1::ModelFile file = h.model->file();
  if (auto st = edit(file); !st.ok()) return st;
  auto model = Build(file);
  if (!model.ok()) return model.status();
  if (auto st = store_.RewriteVersion(key, h.version, file); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  Version& ver = models_[key].versions[h.version];
  ver.model = *std::move(model);
  ver.stamp = store_.Stamp(key, h.version);
  return absl::OkStatus();
}

absl::Status ModelRegistry::SetThreshold(const ModelKey& key, uint64_t version,
                                         const v1::ThresholdConfig& threshold,
                                         const v1::ThresholdConfig& critical, bool clear_critical) {
  return EditVersion(key, version, [&](v1::ModelFile& file) -> absl::Status {
    const auto& calib = file.calibration_errors();
    const absl::Span<const float> errors(calib.data(), static_cast<size_t>(calib.size()));
    v1::ThresholdChange change;
    change.set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch()).count());
    *change.mutable_old_threshold() = file.threshold();
    change.set_old_value(file.threshold_value());
    *change.mutable_old_critical() = file.critical_threshold();
    change.set_old_critical_value(file.critical_threshold_value());
    if (threshold.method() != v1::THRESHOLD_METHOD_UNSPECIFIED) {
      auto value = engine::ComputeThreshold(threshold, errors);
      if (!value.ok()) return value.status();
      *file.mutable_threshold() = threshold;
      file.set_threshold_value(*value);
    }
    if (clear_critical) {
      file.clear_critical_threshold();
      file.clear_critical_threshold_value();
    } else if (critical.method() != v1::THRESHOLD_METHOD_UNSPECIFIED) {
      auto value = engine::ComputeThreshold(critical, errors);
      if (!value.ok()) return value.status();
      *file.mutable_critical_threshold() = critical;
      file.set_critical_threshold_value(*value);
    }
    if (file.has_critical_threshold() || critical.method() != v1::THRESHOLD_METHOD_UNSPECIFIED) {
      if (auto st = engine::CheckCriticalLevel(file.critical_threshold_value(), file.threshold_value());
          !st.ok()) {
        return st;
      }
    }
    *change.mutable_new_threshold() = file.threshold();
    change.set_new_value(file.threshold_value());
    *change.mutable_new_critical() = file.critical_threshold();
    change.set_new_critical_value(file.critical_threshold_value());
    *file.add_threshold_history() = change;
    return absl::OkStatus();
  });
}

int ModelRegistry::Sync() {
  absl::MutexLock admin(&admin_mu_);
  int changes = 0;
  bool all_keys = true;
  const std::vector<ModelKey> keys = store_.ListModels(&all_keys);
  if (!all_keys) ReportStoreError(ModelKey{"*", ""}, "listing", "the store directory could not be read to the end; nothing is unloaded this round");
  for (const ModelKey& key : keys) {
    // What we have now (stamps) versus what the store holds.
    std::map<uint64_t, std::pair<uint64_t, uint64_t>> have;  // version -> (stamp, bad stamp)
    {
      absl::ReaderMutexLock lock(&mu_);
      auto it = models_.find(key);
      if (it != models_.end()) {
        for (const auto& [v, ver] : it->second.versions) have[v] = {ver.stamp, ver.bad_stamp};
      }
    }
    std::map<uint64_t, Version> loaded;  // new or rewritten versions, built outside the lock
    bool all_versions = true;
    const std::vector<uint64_t> on_disk = store_.ListVersions(key, &all_versions);
    if (!all_versions) {
      // A listing that failed half-way is not the store's contents: change nothing this round.
      ReportStoreError(key, "listing", "its directory could not be read to the end; left as it is");
      continue;
    }
    for (uint64_t v : on_disk) {
      auto h = have.find(v);
      const uint64_t stamp = store_.Stamp(key, v);
      if (h != have.end() && (h->second.first == stamp || h->second.second == stamp)) continue;
      loaded[v] = LoadVersion(key, v);
    }
    auto disk_active = store_.ReadActive(key);
    absl::MutexLock lock(&mu_);
    Entry& e = models_[key];
    for (auto& [v, ver] : loaded) {
      auto old = e.versions.find(v);
      if (ver.state != v1::MODEL_STATE_READY && old != e.versions.end() &&
          old->second.state == v1::MODEL_STATE_READY) {
        // A rewrite that does not load: keep serving the good copy, say why.
        old->second.bad_stamp = ver.stamp;
        old->second.error = absl::StrCat("the file in the store changed and does not load (", ver.error,
                                         "); serving the copy loaded before");
      } else {
        e.versions[v] = std::move(ver);
      }
      ++changes;
    }
    for (auto it = e.versions.begin(); it != e.versions.end();) {
      if (std::find(on_disk.begin(), on_disk.end(), it->first) == on_disk.end()) {
        it = e.versions.erase(it);
        ++changes;
      } else {
        ++it;
      }
    }
    auto act = e.versions.find(e.active);
    const bool serving = e.active != 0 && act != e.versions.end() && act->second.state == v1::MODEL_STATE_READY;
    if (disk_active.ok()) {
      e.store_error.clear();
      const uint64_t want = *disk_active;
      if (want != 0 && want != e.active) {
        auto vit = e.versions.find(want);
        if (vit != e.versions.end() && vit->second.state == v1::MODEL_STATE_READY) {
          e.active = want;  // new version loaded and warm before it becomes active
          e.error.clear();
          ++changes;
        }
      } else if (want == 0 && e.active != 0) {
        e.active = 0;
        e.error = "no active version";
        ++changes;
      } else if (e.active == want && serving && !e.error.empty()) {
        e.error.clear();  // ACTIVE was repaired
        ++changes;
      }
    } else if (disk_active.status().code() == absl::StatusCode::kNotFound) {
      if (e.active != 0 && !e.versions.count(e.active)) {
        e.active = 0;
        e.error = "no active version";
        ++changes;
      } else if (e.active == 0 && !e.versions.empty()) {
        // As at start-up: without an ACTIVE file the highest version is active.
        auto high = e.versions.rbegin();
        if (high->second.state == v1::MODEL_STATE_READY) {
          e.active = high->first;
          e.error.clear();
          ++changes;
        } else {
          e.error = absl::StrCat("no ACTIVE file, and the highest version ", high->first, " is unavailable");
        }
      }
    } else {
      // An unusable ACTIVE promotes nothing; what serves now keeps serving.
      const std::string msg = std::string(disk_active.status().message());
      const std::string was = serving ? e.store_error : e.error;
      if (serving) {
        e.store_error = absl::StrCat(msg, "; still serving version ", e.active);
      } else {
        e.active = 0;
        e.error = msg;
      }
      if ((serving ? e.store_error : e.error) != was) ReportStoreError(key, "active", msg);
    }
    if (e.active != 0 && !e.versions.count(e.active)) {
      e.error = absl::StrCat("active version ", e.active, " was deleted");
      e.active = 0;
      ++changes;
    }
  }
  // Models whose directory is gone (only when the listing could be read to the end).
  absl::MutexLock lock(&mu_);
  for (auto it = models_.begin(); it != models_.end() && all_keys;) {
    if (std::find(keys.begin(), keys.end(), it->first) == keys.end()) {
      it = models_.erase(it);
      ++changes;
    } else {
      ++it;
    }
  }
  return changes;
}

v1::ModelInfo ModelRegistry::InfoLocked(const ModelKey& key, const Entry& e) const {
  v1::ModelInfo info;
  info.set_name(key.model);
  info.set_entity(key.entity);
  info.set_active_version(e.active);
  info.set_error(e.error.empty() ? e.store_error : e.error);
  for (const auto& [v, ver] : e.versions) {
    v1::VersionInfo* vi = info.add_versions();
    vi->set_version(v);
    vi->set_state(ver.state);
    vi->set_error(ver.error);
    if (ver.model) {
      const v1::ModelFile& f = ver.model->file();
      vi->set_created_unix_ms(f.metadata().created_unix_ms());
      *vi->mutable_threshold() = f.threshold();
      vi->set_threshold_value(f.threshold_value());
      vi->set_epochs(f.history().epochs_size());
      if (f.history().best_epoch() > 0 &&
          f.history().best_epoch() <= static_cast<uint32_t>(f.history().epochs_size())) {
        vi->set_best_validation_loss(f.history().epochs(f.history().best_epoch() - 1).validation_loss());
      }
      vi->set_train_rows(f.history().train_rows());
      vi->set_training_seconds(f.history().seconds());
    }
  }
  if (key.entity.empty()) {
    for (auto it = models_.lower_bound(ModelKey{key.model, ""}); it != models_.end() && it->first.model == key.model; ++it) {
      if (!it->first.entity.empty()) info.add_entities(it->first.entity);
    }
  }
  auto it = e.versions.find(e.active);
  if (it != e.versions.end() && it->second.model) {
    const v1::ModelFile& f = it->second.model->file();
    info.set_state(v1::MODEL_STATE_READY);
    *info.mutable_spec() = f.spec();
    *info.mutable_training() = f.training();
    if (engine::IsSeries(f.spec())) {  // the columns clients send: one time step's
      info.set_num_features(f.spec().window().columns());
      *info.mutable_feature_names() = f.series_columns();
    } else {
      info.set_num_features(f.spec().num_features());
      *info.mutable_feature_names() = f.feature_names();
    }
    *info.mutable_threshold() = f.threshold();
    info.set_threshold_value(f.threshold_value());
    *info.mutable_critical_threshold() = f.critical_threshold();
    info.set_critical_threshold_value(f.critical_threshold_value());
    *info.mutable_threshold_history() = f.threshold_history();
    *info.mutable_policy() = f.policy();
    *info.mutable_history() = f.history();
    info.set_description(f.metadata().description());
    if (it->second.metrics != nullptr && key.entity.empty()) {
      const ModelMetrics::Drift d = it->second.metrics->ComputeDrift();
      info.set_drift_ks(d.ks);
      info.set_drift_window(d.window);
      info.set_drifted(d.window >= kMinDriftWindow && d.ks > metrics_->drift_threshold());
    }
  } else {
    info.set_state(v1::MODEL_STATE_UNAVAILABLE);
  }
  return info;
}

std::vector<v1::ModelInfo> ModelRegistry::List() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<v1::ModelInfo> out;
  for (const auto& [key, e] : models_) out.push_back(InfoLocked(key, e));
  return out;
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::Info(const ModelKey& key) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = models_.find(key);
  if (it == models_.end()) return absl::NotFoundError(absl::StrCat("unknown model '", key.str(), "'"));
  return InfoLocked(key, it->second);
}

v1::ModelInfoBrief ModelRegistry::Brief(const ModelKey& key, uint64_t version) const {
  absl::ReaderMutexLock lock(&mu_);
  v1::ModelInfoBrief b;
  b.set_model(key.model);
  b.set_entity(key.entity);
  auto it = models_.find(key);
  if (it == models_.end()) return b;
  b.set_active_version(it->second.active);
  for (const auto& [v, ver] : it->second.versions) b.add_versions(v);
  auto vit = it->second.versions.find(version == 0 ? it->second.active : version);
  if (vit != it->second.versions.end() && vit->second.model) {
    b.set_threshold_value(vit->second.model->file().threshold_value());
    b.set_critical_threshold_value(vit->second.model->file().critical_threshold_value());
  }
  return b;
}

}  // namespace aeserve::server
