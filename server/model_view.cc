// ModelInfo and ModelInfoBrief from the registry's entries.
#include "server/model_view.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "engine/window.h"

namespace aeserve::server {
namespace {

void RenderVersion(uint64_t v, const VersionEntry& ver, v1::VersionInfo* vi) {
  vi->set_version(v);
  vi->set_state(ver.state);
  vi->set_error(ver.error);
  vi->set_loaded(ver.model != nullptr);
  if (ver.resident != nullptr) vi->set_resident_bytes(ver.resident->bytes());
  if (ver.model != nullptr) {
    vi->set_precision(ver.model->bf16() ? v1::PRECISION_BF16 : v1::PRECISION_F32);
  }
  if (ver.file() == nullptr) return;
  const v1::ModelFile& f = *ver.file();
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

// The model's state: READY when its active version serves, LOADING while the store is read or
// the version that will serve is being built, else UNAVAILABLE.
v1::ModelState StateOf(const ModelEntry& e) {
  auto it = e.versions.find(e.active);
  if (it != e.versions.end() && it->second.state == v1::MODEL_STATE_READY)
    return v1::MODEL_STATE_READY;
  return e.Loading() ? v1::MODEL_STATE_LOADING : v1::MODEL_STATE_UNAVAILABLE;
}

}  // namespace

v1::ModelInfo ModelView::Render(const ModelKey& key, const ModelEntry& e) const {
  v1::ModelInfo info;
  info.set_name(key.model);
  info.set_entity(key.entity);
  info.set_active_version(e.active);
  info.set_state(StateOf(e));
  info.set_error(e.error.empty() ? e.store_error : e.error);
  for (const auto& [v, ver] : e.versions) RenderVersion(v, ver, info.add_versions());
  auto it = e.versions.find(e.active);
  if (info.state() != v1::MODEL_STATE_READY) return info;
  const v1::ModelFile& f = *it->second.file();
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
  if (key.entity.empty() && it->second.stats != nullptr) {
    const Drift d = it->second.stats->ComputeDrift();
    info.set_drift_ks(d.ks);
    info.set_drift_window(d.window);
    info.set_drifted(d.drifted(drift_threshold_));
  }
  return info;
}

std::vector<v1::ModelInfo> ModelView::List() const {
  std::vector<v1::ModelInfo> out;
  size_t generic = 0;  // where the last generic model is in `out` (its entities follow it)
  registry_.ForEach([&](const ModelKey& key, const ModelEntry& e) {
    if (key.entity.empty()) {
      generic = out.size();
    } else if (generic < out.size() && out[generic].entity().empty() &&
               out[generic].name() == key.model) {
      out[generic].add_entities(key.entity);
    }
    out.push_back(Render(key, e));
  });
  return out;
}

absl::StatusOr<v1::ModelInfo> ModelView::Info(const ModelKey& key) const {
  std::optional<v1::ModelInfo> info;
  std::vector<std::string> entities;
  registry_.ForEachOf(key.model, [&](const ModelKey& k, const ModelEntry& e) {
    if (k == key) info = Render(k, e);
    if (!k.entity.empty()) entities.push_back(k.entity);
  });
  if (!info) return absl::NotFoundError(absl::StrCat("unknown model '", key.str(), "'"));
  if (key.entity.empty()) {
    for (auto& name : entities) info->add_entities(std::move(name));
  }
  return *std::move(info);
}

v1::ModelInfoBrief ModelView::Brief(const ModelKey& key, uint64_t version) const {
  v1::ModelInfoBrief b;
  b.set_model(key.model);
  b.set_entity(key.entity);
  registry_.Visit(key, [&](const ModelEntry& e) {
    b.set_active_version(e.active);
    for (const auto& [v, ver] : e.versions) b.add_versions(v);
    auto vit = e.versions.find(version == 0 ? e.active : version);
    if (vit != e.versions.end() && vit->second.file() != nullptr) {
      b.set_threshold_value(vit->second.file()->threshold_value());
      b.set_critical_threshold_value(vit->second.file()->critical_threshold_value());
    }
  });
  return b;
}

}  // namespace aeserve::server
