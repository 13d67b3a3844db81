// The models the server hosts, their versions and states.
#include "model_registry.h"

#include "absl/strings/str_cat.h"

namespace aeserve::server {

int ModelRegistry::LoadAll() {
  int ready = 0;
  for (const std::string& name : store_.ListModels()) {
    Entry entry;
    for (uint64_t v : store_.ListVersions(name)) {
      Version& ver = entry.versions[v];
      auto file = store_.Load(name, v);
      if (!file.ok()) {
        ver.state = v1::MODEL_STATE_UNAVAILABLE;
        ver.error = std::string(file.status().message());
        continue;
      }
      auto model = engine::Model::Create(*std::move(file), model_options_);
      if (!model.ok()) {
        ver.state = v1::MODEL_STATE_UNAVAILABLE;
        ver.error = std::string(model.status().message());
        continue;
      }
      ver.state = v1::MODEL_STATE_READY;
      ver.model = *std::move(model);
    }
    if (entry.versions.empty()) continue;  // an empty directory is not a model
    auto active = store_.ReadActive(name);
    entry.active = active.ok() ? *active : entry.versions.rbegin()->first;
    auto it = entry.versions.find(entry.active);
    if (it == entry.versions.end()) {
      entry.error = absl::StrCat("active version ", entry.active, " does not exist");
    } else if (it->second.state != v1::MODEL_STATE_READY) {
      entry.error = absl::StrCat("active version ", entry.active, ": ", it->second.error);
    } else {
      ++ready;
    }
    absl::MutexLock lock(&mu_);
    models_[name] = std::move(entry);
  }
  return ready;
}

absl::StatusOr<ModelHandle> ModelRegistry::Get(const std::string& name, uint64_t version) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return absl::NotFoundError(absl::StrCat("unknown model '", name, "'"));
  const Entry& e = it->second;
  const uint64_t v = version == 0 ? e.active : version;
  auto vit = e.versions.find(v);
  if (vit == e.versions.end()) {
    return absl::NotFoundError(absl::StrCat("model '", name, "' has no version ", v));
  }
  if (vit->second.state != v1::MODEL_STATE_READY) {
    return absl::UnavailableError(
        absl::StrCat("model '", name, "' version ", v, " is unavailable: ", vit->second.error));
  }
  return ModelHandle{vit->second.model, name, v};
}

absl::Status ModelRegistry::AddLoaded(const std::string& name, uint64_t version,
                                      v1::ModelFile file, bool activate) {
  // Build (and so warm) the new version before taking the lock: new before old.
  auto model = engine::Model::Create(std::move(file), model_options_);
  if (!model.ok()) return model.status();
  absl::MutexLock lock(&mu_);
  Entry& e = models_[name];
  e.versions[version] = Version{v1::MODEL_STATE_READY, "", *std::move(model)};
  if (activate || e.active == 0) {
    e.active = version;
    e.error.clear();
  }
  return absl::OkStatus();
}

v1::ModelInfo ModelRegistry::InfoLocked(const std::string& name, const Entry& e) const {
  v1::ModelInfo info;
  info.set_name(name);
  info.set_active_version(e.active);
  info.set_error(e.error);
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
        vi->set_best_validation_loss(
            f.history().epochs(f.history().best_epoch() - 1).validation_loss());
      }
      vi->set_train_rows(f.history().train_rows());
      vi->set_training_seconds(f.history().seconds());
    }
  }
  auto it = e.versions.find(e.active);
  if (it != e.versions.end() && it->second.model) {
    const v1::ModelFile& f = it->second.model->file();
    info.set_state(v1::MODEL_STATE_READY);
    *info.mutable_spec() = f.spec();
    *info.mutable_training() = f.training();
    info.set_num_features(f.spec().num_features());
    *info.mutable_feature_names() = f.feature_names();
    *info.mutable_threshold() = f.threshold();
    info.set_threshold_value(f.threshold_value());
    *info.mutable_history() = f.history();
    info.set_description(f.metadata().description());
  } else {
    info.set_state(v1::MODEL_STATE_UNAVAILABLE);
  }
  return info;
}

std::vector<v1::ModelInfo> ModelRegistry::List() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<v1::ModelInfo> out;
  for (const auto& [name, e] : models_) out.push_back(InfoLocked(name, e));
  return out;
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::Info(const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return absl::NotFoundError(absl::StrCat("unknown model '", name, "'"));
  return InfoLocked(name, it->second);
}

}  // namespace aeserve::server
