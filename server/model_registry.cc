// The lifecycle core: versions, states, the active version, and the changes the admin API makes.
#include "server/model_registry.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace aeserve::server {

absl::StatusOr<std::shared_ptr<const engine::Model>> ModelRegistry::Build(
    const ModelKey& key, const v1::ModelFile& file) const {
  const auto start = std::chrono::steady_clock::now();
  // Entity models come in fleets: weights in compact layouts (engine::ModelOptions::compact).
  engine::ModelOptions options = model_options_;
  options.compact = !key.entity.empty();
  auto model = engine::Model::Create(file, options);
  if (metrics_ != nullptr) {
    metrics_->RecordModelLoad(
        model.ok(),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return model;
}

VersionEntry ModelRegistry::Ready(const ModelKey& key, uint64_t version,
                                  std::shared_ptr<const engine::Model> model,
                                  uint64_t stamp) const {
  VersionEntry ver;
  ver.state = v1::MODEL_STATE_READY;
  if (key.entity.empty()) {
    const auto& c = model->file().calibration_errors();
    ver.stats = std::make_shared<ModelStats>(std::vector<float>(c.begin(), c.end()));
    if (metrics_ != nullptr) ver.metrics = metrics_->ForModel(key.model, std::to_string(version));
  } else {
    // Per-entity models share one set of series and one anomaly rate per model, so entities
    // never become labels.
    absl::MutexLock lock(&entity_stats_mu_);
    std::weak_ptr<ModelStats>& shared = entity_stats_[key.model];
    ver.stats = shared.lock();
    if (ver.stats == nullptr) {
      ver.stats = std::make_shared<ModelStats>(std::vector<float>{});
      shared = ver.stats;
    }
    if (metrics_ != nullptr) ver.metrics = metrics_->ForModel(key.model, "entity");
  }
  Install(key, ver, std::move(model), stamp);
  return ver;
}

void ModelRegistry::Install(const ModelKey& key, VersionEntry& ver,
                            std::shared_ptr<const engine::Model> model, uint64_t stamp) const {
  ver.resident = std::make_shared<const Residency>(key.entity.empty() ? nullptr : &entity_bytes_,
                                                   model->resident_bytes());
  Touch(ver);
  ver.model = std::move(model);
  ver.unloaded.reset();
  ver.stamp = stamp;
  ver.cold_error.clear();
}

void ModelRegistry::Touch(const VersionEntry& ver) const {
  ver.resident->Touch(clock_.fetch_add(1, std::memory_order_relaxed));
}

ModelHandle ModelRegistry::HandleOf(const ModelKey& key, uint64_t version,
                                    const VersionEntry& ver) {
  return ModelHandle{ver.model, key.model, key.entity, version, ver.metrics, ver.stats};
}

void ModelRegistry::Unload(VersionEntry& ver, const char* reason) const {
  ver.unloaded = std::make_shared<const v1::ModelFile>(ver.model->file());
  ver.model.reset();  // requests holding a handle keep it until they finish
  ver.resident.reset();
  if (metrics_ != nullptr) metrics_->RecordUnload(reason);
}

void ModelRegistry::EvictLocked(const ModelKey* keep) const {
  const int64_t budget = static_cast<int64_t>(residence_.memory_bytes);
  if (budget == 0 || entity_bytes_.load() <= budget) return;
  struct Candidate {
    uint64_t last_used;
    VersionEntry* ver;
  };
  std::vector<Candidate> loaded;
  for (auto& [key, e] : models_) {
    if (key.entity.empty() || (keep != nullptr && key == *keep)) continue;
    for (auto& [v, ver] : e.versions) {
      // Not one whose rewritten file does not load: the copy in memory is the only good one.
      if (ver.model != nullptr && ver.bad_stamp == 0) {
        loaded.push_back({ver.resident->last_used(), &ver});
      }
    }
  }
  std::sort(loaded.begin(), loaded.end(),
            [](const Candidate& a, const Candidate& b) { return a.last_used < b.last_used; });
  // Down to 90%, so that a stream of cold loads evicts in rounds, not one model per load.
  for (const Candidate& c : loaded) {
    if (entity_bytes_.load() <= budget / 10 * 9) break;
    Unload(*c.ver, "memory");
  }
}

void ModelRegistry::TrimVersionsLocked(ModelEntry& e, uint64_t keep) const {
  if (residence_.keep_versions < 0) return;
  int kept = 0;
  for (auto it = e.versions.rbegin(); it != e.versions.rend(); ++it) {
    // Never the active one, the one just asked for, or one whose rewritten file does not load
    // (the copy in memory is the only good one).
    if (it->first == e.active || it->first == keep || it->second.model == nullptr ||
        it->second.bad_stamp != 0) {
      continue;
    }
    if (kept++ >= residence_.keep_versions) Unload(it->second, "versions");
  }
}

VersionEntry* ModelRegistry::FindReady(const ModelKey& key, uint64_t version) const {
  auto it = models_.find(key);
  if (it == models_.end()) return nullptr;
  auto vit = it->second.versions.find(version);
  if (vit == it->second.versions.end() || vit->second.state != v1::MODEL_STATE_READY) {
    return nullptr;
  }
  return &vit->second;
}

absl::StatusOr<ModelHandle> ModelRegistry::ColdLoad(const ModelKey& key, uint64_t version) const {
  const std::pair<ModelKey, uint64_t> id{key, version};
  auto gone = [&] {
    return absl::UnavailableError(absl::StrCat("model '", key.str(), "' version ", version,
                                               " changed while it was being loaded; retry"));
  };
  for (int attempt = 0; attempt < 3; ++attempt) {
    uint64_t expected = 0;
    {
      absl::MutexLock lock(&mu_);
      // One load per version at a time: the others wait for it and share what it loaded.
      auto idle = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !cold_loading_.count(id); };
      mu_.Await(absl::Condition(&idle));
      VersionEntry* ver = FindReady(key, version);
      if (ver == nullptr) return gone();
      if (ver->model != nullptr) {
        Touch(*ver);
        return HandleOf(key, version, *ver);
      }
      if (!ver->cold_error.empty() &&
          std::chrono::steady_clock::now() - ver->cold_failed_at <
              std::chrono::duration<double>(residence_.cold_retry_seconds)) {
        return absl::UnavailableError(ver->cold_error);
      }
      expected = ver->stamp;
      cold_loading_.insert(id);
    }
    const auto start = std::chrono::steady_clock::now();
    Built b = BuildFromStore(key, version);
    absl::MutexLock lock(&mu_);
    cold_loading_.erase(id);
    if (!b.model.ok()) {
      if (metrics_ != nullptr) metrics_->RecordColdLoad(false, 0);
      const std::string why(b.model.status().message());
      if (b.file_error) ReportStoreError(key, "model_file", why);
      const std::string error = absl::StrCat("model '", key.str(), "' version ", version,
                                             " could not be loaded again: ", why, " (read again ",
                                             residence_.cold_retry_seconds, " s after this)");
      if (VersionEntry* ver = FindReady(key, version); ver != nullptr) {
        ver->cold_failed_at = std::chrono::steady_clock::now();
        ver->cold_error = error;
      }
      return absl::UnavailableError(error);
    }
    VersionEntry* ver = FindReady(key, version);
    if (ver == nullptr) return gone();
    // Edited (a threshold change) or replaced while the file was read: read it again, so that an
    // older file is never installed over a newer one.
    if (ver->stamp != expected) continue;
    Install(key, *ver, *std::move(b.model), b.stamp);
    if (metrics_ != nullptr) {
      metrics_->RecordColdLoad(
          true, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    ModelHandle h = HandleOf(key, version, *ver);
    TrimVersionsLocked(models_[key], version);
    EvictLocked(&key);
    return h;
  }
  return gone();
}

absl::StatusOr<ModelHandle> ModelRegistry::Peek(const ModelKey& key, uint64_t version) const {
  absl::ReaderMutexLock lock(&mu_);
  return GetLocked(key, version, false);
}

absl::StatusOr<ModelHandle> ModelRegistry::Resolve(absl::StatusOr<ModelHandle> h) const {
  if (!h.ok() || h->model != nullptr) return h;
  return ColdLoad(ModelKey{h->name, h->entity}, h->version);
}

void ModelRegistry::ReportStoreError(const ModelKey& key, const char* kind,
                                     const std::string& message) const {
  if (log_ != nullptr) log_->error("model store: model '{}': {}", key.str(), message);
  if (metrics_ != nullptr) metrics_->RecordStoreError(kind);
}

ModelRegistry::Built ModelRegistry::BuildFromStore(const ModelKey& key, uint64_t version) const {
  Built b{store_.Stamp(key, version), absl::UnknownError("not built"), false};
  size_t file_bytes = 0;
  {
    auto file = store_.Load(key, version);
    if (!file.ok()) {
      b.model = file.status();
      b.file_error = true;
      return b;
    }
    file_bytes = file->ByteSizeLong();
    b.model = Build(key, *file);
  }
  // Loading a big model allocates several copies of its weights on the way (the file's bytes,
  // the parsed file, the plain parameters) that glibc keeps after they are freed: given back,
  // now that the parsed file is gone too.
  if (file_bytes > (size_t{4} << 20)) malloc_trim(0);
  return b;
}

VersionEntry ModelRegistry::LoadVersion(const ModelKey& key, uint64_t v) const {
  Built b = BuildFromStore(key, v);
  if (b.model.ok()) return Ready(key, v, *std::move(b.model), b.stamp);
  VersionEntry ver;
  ver.stamp = b.stamp;
  ver.state = v1::MODEL_STATE_UNAVAILABLE;
  ver.error = std::string(b.model.status().message());
  if (b.file_error) {
    ReportStoreError(key, "model_file", absl::StrCat("version ", v, ": ", ver.error));
  }
  return ver;
}

// A model whose first versions are still being built: nothing active yet, something loading.
static bool FirstLoad(const ModelEntry& e) { return e.active == 0 && e.Loading(); }

absl::StatusOr<ModelHandle> ModelRegistry::GetLocked(const ModelKey& key, uint64_t version,
                                                     bool touch) const {
  auto it = models_.find(key);
  if (it == models_.end())
    return absl::NotFoundError(absl::StrCat("unknown model '", key.str(), "'"));
  const ModelEntry& e = it->second;
  if (e.loading) return absl::UnavailableError(absl::StrCat("model '", key.str(), "' is loading"));
  const uint64_t v = version == 0 ? e.active : version;
  if (v == 0)
    return absl::UnavailableError(absl::StrCat("model '", key.str(), "' has no active version"));
  auto vit = e.versions.find(v);
  if (vit == e.versions.end()) {
    return absl::NotFoundError(absl::StrCat("model '", key.str(), "' has no version ", v));
  }
  if (vit->second.state == v1::MODEL_STATE_LOADING) {
    return absl::UnavailableError(
        absl::StrCat("model '", key.str(), "' version ", v, " is loading"));
  }
  if (vit->second.state != v1::MODEL_STATE_READY) {
    return absl::UnavailableError(absl::StrCat("model '", key.str(), "' version ", v,
                                               " is unavailable: ", vit->second.error));
  }
  const VersionEntry& ver = vit->second;
  if (touch && ver.resident != nullptr) Touch(ver);
  return HandleOf(key, v, ver);
}

absl::StatusOr<ModelHandle> ModelRegistry::Get(const std::string& model, const std::string& entity,
                                               uint64_t version) const {
  absl::StatusOr<ModelHandle> h;
  {
    absl::ReaderMutexLock lock(&mu_);
    // The entity model when it exists, unless it is still being built for the first time (then
    // the generic model serves, as before the entity model appeared).
    auto it = entity.empty() ? models_.end() : models_.find(ModelKey{model, entity});
    h = it != models_.end() && !FirstLoad(it->second) ? GetLocked(it->first, version)
                                                      : GetLocked(ModelKey{model, ""}, version);
  }
  return Resolve(std::move(h));
}

absl::StatusOr<ModelHandle> ModelRegistry::Handle(const ModelKey& key, uint64_t version) const {
  absl::StatusOr<ModelHandle> h;
  {
    absl::ReaderMutexLock lock(&mu_);
    h = GetLocked(key, version);
  }
  return Resolve(std::move(h));
}

absl::StatusOr<uint64_t> ModelRegistry::AddVersion(const ModelKey& key, const v1::ModelFile& file,
                                                   bool activate) {
  // Load and warm before anything becomes visible.
  auto model = Build(key, file);
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
  VersionEntry ver = Ready(key, *version, *std::move(model), store_.Stamp(key, *version));
  absl::MutexLock lock(&mu_);
  ModelEntry& e = models_[key];
  e.versions[*version] = std::move(ver);
  if (activate || first) {
    e.active = *version;
    e.error.clear();
  }
  TrimVersionsLocked(e);
  EvictLocked(&key);
  return *version;
}

absl::Status ModelRegistry::Activate(const ModelKey& key, uint64_t version) {
  if (auto st = RequireVersion(version); !st.ok()) return st;
  absl::MutexLock admin(&admin_mu_);
  ModelStore::Lock store_lock(store_.dir());
  if (!store_lock.status().ok()) return store_lock.status();
  // It must exist and be ready, and be loaded (and warm) before it serves.
  if (auto h = Handle(key, version); !h.ok()) return h.status();
  if (auto st = store_.WriteActive(key, version); !st.ok()) return st;
  if (metrics_ != nullptr) metrics_->RecordSwap();
  absl::MutexLock lock(&mu_);
  ModelEntry& e = models_[key];
  e.active = version;
  e.error.clear();
  TrimVersionsLocked(e);
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
    if (it == models_.end())
      return absl::NotFoundError(absl::StrCat("unknown model '", key.str(), "'"));
    if (!it->second.versions.count(version)) {
      return absl::NotFoundError(absl::StrCat("model '", key.str(), "' has no version ", version));
    }
    active = it->second.active == version;
  }
  if (active && !force) {
    return absl::FailedPreconditionError(
        absl::StrCat("version ", version, " of '", key.str(),
                     "' is active: activate another version first, or delete with force"));
  }
  if (active) {
    if (auto st = store_.ClearActive(key); !st.ok()) return st;
  }
  if (auto st = store_.DeleteVersion(key, version); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  ModelEntry& e = models_[key];
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
    if (it == models_.end())
      return absl::NotFoundError(absl::StrCat("unknown model '", key.str(), "'"));
    if (it->second.active != 0 && !force) {
      return absl::FailedPreconditionError(
          absl::StrCat("model '", key.str(), "' has an active version: delete with force"));
    }
  }
  if (auto st = store_.DeleteModel(key); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  for (auto it = models_.begin(); it != models_.end();) {
    const bool gone = it->first == key || (key.entity.empty() && it->first.model == key.model);
    it = gone ? models_.erase(it) : std::next(it);
  }
  // Its scoring series leave with its versions' ModelMetrics; its training gauges here.
  if (metrics_ != nullptr && key.entity.empty()) metrics_->ForgetTraining(key.model);
  return absl::OkStatus();
}

absl::Status ModelRegistry::EditVersion(const ModelKey& key, uint64_t version,
                                        absl::FunctionRef<absl::Status(v1::ModelFile&)> edit) {
  absl::MutexLock admin(&admin_mu_);
  ModelStore::Lock store_lock(store_.dir());
  if (!store_lock.status().ok()) return store_lock.status();
  auto got = Handle(key, version);
  if (!got.ok()) return got.status();
  const ModelHandle h = *std::move(got);
  v1::ModelFile file = h.model->FullFile();
  if (auto st = edit(file); !st.ok()) return st;
  auto model = Build(key, file);
  if (!model.ok()) return model.status();
  if (auto st = store_.RewriteVersion(key, h.version, file); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  Install(key, models_[key].versions[h.version], *std::move(model), store_.Stamp(key, h.version));
  return absl::OkStatus();
}

void ModelRegistry::ForEach(absl::FunctionRef<void(const ModelKey&, const ModelEntry&)> fn) const {
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [key, e] : models_) fn(key, e);
}

bool ModelRegistry::Visit(const ModelKey& key,
                          absl::FunctionRef<void(const ModelEntry&)> fn) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = models_.find(key);
  if (it == models_.end()) return false;
  fn(it->second);
  return true;
}

bool ModelEntry::Loading() const {
  if (loading) return true;
  for (const auto& [v, ver] : versions) {
    if (ver.state == v1::MODEL_STATE_LOADING) return true;
  }
  return false;
}

bool ModelRegistry::HasEntities(const std::string& model) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = models_.upper_bound(ModelKey{model, ""});  // past the generic model
  return it != models_.end() && it->first.model == model;
}

void ModelRegistry::ForEachOf(
    const std::string& model,
    absl::FunctionRef<void(const ModelKey&, const ModelEntry&)> fn) const {
  absl::ReaderMutexLock lock(&mu_);
  for (auto it = models_.lower_bound(ModelKey{model, ""});
       it != models_.end() && it->first.model == model; ++it) {
    fn(it->first, it->second);
  }
}

}  // namespace aeserve::server
