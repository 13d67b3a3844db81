// The registry as the API shows it: ModelInfo (ListModels, GetModel), with the live drift of the
// active version, and ModelInfoBrief (the admin calls' answers).
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "aeserve/v1/admin.pb.h"
#include "aeserve/v1/scoring.pb.h"
#include "server/model_registry.h"

namespace aeserve::server {

class ModelView {
 public:
  // `drift_threshold`: the KS statistic above which a model is reported drifted.
  ModelView(const ModelRegistry& registry, double drift_threshold)
      : registry_(registry), drift_threshold_(drift_threshold) {}

  std::vector<v1::ModelInfo> List() const;
  absl::StatusOr<v1::ModelInfo> Info(const ModelKey& key) const;
  // Versions, the active one and the levels of `version` (0 = the active one).
  v1::ModelInfoBrief Brief(const ModelKey& key, uint64_t version) const;

 private:
  v1::ModelInfo Render(const ModelKey& key, const ModelEntry& e) const;

  const ModelRegistry& registry_;
  const double drift_threshold_;
};

}  // namespace aeserve::server
