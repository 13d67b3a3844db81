// The models the server hosts: every version in the store, loaded and ready, and which one is
// active. A request takes a shared handle to one version for its duration only, so a swap never
// pulls a model from under it; a version is freed when its last handle drops. Lifecycle changes
// write the store first and swap in memory after, new before old (the new version is loaded and
// warm before it becomes visible).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/admin.pb.h"
#include "aeserve/v1/scoring.pb.h"
#include "model.h"
#include "model_store.h"
#include "server_metrics.h"
#include "spdlog/logger.h"

namespace aeserve::server {

struct ModelHandle {
  std::shared_ptr<const engine::Model> model;
  std::string name;
  std::string entity;  // the entity model that will score; empty = the generic one
  uint64_t version = 0;
  std::shared_ptr<ModelMetrics> metrics;  // null when metrics are off
};

class ModelRegistry {
 public:
  // `metrics` may be null (metrics off).
  // `metrics` may be null (metrics off); `log` may be null (store problems are then not logged).
  ModelRegistry(ModelStore store, engine::ModelOptions model_options, ServerMetrics* metrics = nullptr,
                std::shared_ptr<spdlog::logger> log = nullptr)
      : store_(std::move(store)), model_options_(model_options), metrics_(metrics), log_(std::move(log)) {}

  // Loads every model in the store. A version that fails to load is UNAVAILABLE with the reason;
  // the rest serve. An unusable ACTIVE file makes that model UNAVAILABLE with the reason (it never
  // falls back to another version); a missing one makes the highest version active. Each problem
  // is logged and counted (aeserve_model_store_errors_total). Returns how many models have a
  // ready active version.
  int LoadAll();

  // The version to score with: <model>/<entity> when `entity` is given and that model exists,
  // else the generic model; its active version (version 0) or the given one. NOT_FOUND for
  // unknown names or versions, UNAVAILABLE for a version that failed to load.
  absl::StatusOr<ModelHandle> Get(const std::string& model, const std::string& entity,
                                  uint64_t version) const;
  // Exactly `key` (no entity fallback), its active version (0) or the given one.
  absl::StatusOr<ModelHandle> Handle(const ModelKey& key, uint64_t version) const;

  // Writes `file` as a new version, loads it, and activates it unless `activate` is false
  // (a model's first version is always activated). Returns the version number.
  absl::StatusOr<uint64_t> AddVersion(const ModelKey& key, const v1::ModelFile& file, bool activate);
  absl::Status Activate(const ModelKey& key, uint64_t version);
  absl::Status DeleteVersion(const ModelKey& key, uint64_t version, bool force);
  absl::Status DeleteModel(const ModelKey& key, bool force);
  // Applies `edit` to a copy of a version's file (0 = the active version), loads the result,
  // rewrites the file and swaps the loaded model; nothing changes when `edit` or the load fails.
  absl::Status EditVersion(const ModelKey& key, uint64_t version,
                           absl::FunctionRef<absl::Status(v1::ModelFile&)> edit);
  // Recomputes a version's threshold(s) from its calibration errors, records the change in its
  // history, rewrites its file and swaps the loaded model.
  absl::Status SetThreshold(const ModelKey& key, uint64_t version, const v1::ThresholdConfig& threshold,
                            const v1::ThresholdConfig& critical, bool clear_critical);

  // Brings the registry in line with the store, which other replicas may have changed: loads new
  // models and versions (and rewritten ones), follows ACTIVE, drops deleted versions. A rewritten
  // file that no longer loads, or an ACTIVE file that became unusable, keeps what serves now and
  // is reported in GetModel's error, the log and the store-error counter. Returns how many
  // changes it applied. Called periodically by the server (--store_poll_seconds).
  int Sync();

  std::vector<v1::ModelInfo> List() const;
  absl::StatusOr<v1::ModelInfo> Info(const ModelKey& key) const;
  v1::ModelInfoBrief Brief(const ModelKey& key, uint64_t version) const;
  const ModelStore& store() const { return store_; }

 private:
  struct Version {
    v1::ModelState state = v1::MODEL_STATE_UNSPECIFIED;
    std::string error;
    std::shared_ptr<const engine::Model> model;
    std::shared_ptr<ModelMetrics> metrics;
    uint64_t stamp = 0;      // ModelStore::Stamp when loaded
    uint64_t bad_stamp = 0;  // stamp of a rewrite that failed to load (not retried until it changes)
  };
  struct Entry {
    std::map<uint64_t, Version> versions;
    uint64_t active = 0;
    std::string error;        // why the model does not serve
    std::string store_error;  // a store problem while it still serves (e.g. ACTIVE unreadable)
  };
  // Logs and counts a store entry that cannot be used.
  void ReportStoreError(const ModelKey& key, const char* kind, const std::string& message) const;
  // One version from the store: READY and warm, or UNAVAILABLE with the reason.
  Version LoadVersion(const ModelKey& key, uint64_t version) const;
  Entry LoadEntry(const ModelKey& key) const;
  absl::StatusOr<std::shared_ptr<const engine::Model>> Build(const v1::ModelFile& file) const;
  std::shared_ptr<ModelMetrics> MetricsFor(const ModelKey& key, uint64_t version,
                                           const engine::Model& model) const;
  v1::ModelInfo InfoLocked(const ModelKey& key, const Entry& e) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<ModelHandle> GetLocked(const ModelKey& key, uint64_t version) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const ModelStore store_;
  const engine::ModelOptions model_options_;
  ServerMetrics* const metrics_;
  const std::shared_ptr<spdlog::logger> log_;
  // Serialises lifecycle changes (store writes plus swaps); never taken on the scoring path.
  // Lock order: admin_mu_ before mu_.
  absl::Mutex admin_mu_;
  // Guards the map only; models themselves are immutable. Held for lookups and swaps, never
  // while loading, writing or scoring.
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(admin_mu_);
  std::map<ModelKey, Entry> models_ ABSL_GUARDED_BY(mu_);
};

}  // namespace aeserve::server
