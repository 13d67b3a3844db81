// The models the server hosts — the lifecycle core: every version, loaded and ready, and which one
// is active. A request takes a shared handle to one version for its duration only, so a swap never
// pulls a model from under it; a version is freed when its last handle drops. Lifecycle changes
// write the store first and swap in memory after, new before old (the new version is loaded and
// warm before it becomes visible).
//
// Around it: StoreSync (store_sync.h) fills it from the store and follows changes other replicas
// make; ModelView (model_view.h) renders it for the API; threshold edits are
// engine::EditThresholds applied through EditVersion.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/scoring.pb.h"
#include "engine/model.h"
#include "server/model_stats.h"
#include "server/model_store.h"
#include "server/server_metrics.h"
#include "spdlog/logger.h"

namespace aeserve::server {

struct ModelHandle {
  std::shared_ptr<const engine::Model> model;
  std::string name;
  std::string entity;  // the entity model that will score; empty = the generic one
  uint64_t version = 0;
  std::shared_ptr<ModelMetrics> metrics;  // null when metrics are off
  std::shared_ptr<ModelStats> stats;      // drift and anomaly rate; never null
};

// A loaded version's place in memory: its bytes, counted in a registry total while an entry holds
// it, and when it was last used (the registry's clock; least recently used entity models are
// unloaded first under --model_memory_mb).
class Residency {
 public:
  Residency(std::atomic<int64_t>* total, size_t bytes) : total_(total), bytes_(bytes) {
    if (total_ != nullptr) total_->fetch_add(static_cast<int64_t>(bytes_));
  }
  ~Residency() {
    if (total_ != nullptr) total_->fetch_sub(static_cast<int64_t>(bytes_));
  }
  Residency(const Residency&) = delete;
  Residency& operator=(const Residency&) = delete;
  size_t bytes() const { return bytes_; }
  uint64_t last_used() const { return last_used_.load(std::memory_order_relaxed); }
  void Touch(uint64_t now) const { last_used_.store(now, std::memory_order_relaxed); }

 private:
  std::atomic<int64_t>* const total_;
  const size_t bytes_;
  mutable std::atomic<uint64_t> last_used_{0};
};

// One version as the registry holds it.
struct VersionEntry {
  v1::ModelState state = v1::MODEL_STATE_UNSPECIFIED;  // LOADING, READY or UNAVAILABLE
  std::string error;                                   // why it is UNAVAILABLE
  // Set when READY and loaded. A READY version may be unloaded (an entity model evicted under
  // --model_memory_mb, an inactive version beyond --keep_loaded_versions): its file stays in the
  // store and it is loaded again when a request needs it.
  std::shared_ptr<const engine::Model> model;
  std::shared_ptr<const Residency> resident;      // with `model`
  std::shared_ptr<const v1::ModelFile> unloaded;  // without `model`: its file minus the weights
  // The version's file without weights (engine::Model::file()), loaded or not; null when not READY.
  const v1::ModelFile* file() const { return model ? &model->file() : unloaded.get(); }
  std::shared_ptr<ModelMetrics> metrics;
  std::shared_ptr<ModelStats> stats;
  uint64_t stamp = 0;      // ModelStore::Stamp when loaded
  uint64_t bad_stamp = 0;  // stamp of a rewrite that failed to load (not retried until it changes)
  // The last failed cold load (Residence::cold_retry_seconds): when, and why.
  std::chrono::steady_clock::time_point cold_failed_at;
  std::string cold_error;
};

// One model (or entity model) and its versions.
struct ModelEntry {
  std::map<uint64_t, VersionEntry> versions;
  uint64_t active = 0;
  bool loading = false;     // found in the store, not loaded yet (start-up)
  std::string error;        // why the model does not serve
  std::string store_error;  // a store problem while it still serves (e.g. ACTIVE unreadable)
  // The store is being read for it, or one of its versions is being built.
  bool Loading() const;
};

// What stays loaded: `memory_bytes` bounds the bytes of loaded entity models (0 = no bound;
// the least recently used are unloaded first); `keep_versions` is how many inactive versions of
// a model stay loaded besides the active one (the newest; -1 = all). A version whose cold load
// failed answers with that failure for `cold_retry_seconds` before its file is read again (each
// request would otherwise read and fail again).
struct Residence {
  uint64_t memory_bytes = 0;
  int keep_versions = -1;
  double cold_retry_seconds = 5;
};

class ModelRegistry {
 public:
  // `metrics` may be null (metrics off); `log` may be null (store problems are then not logged).
  ModelRegistry(ModelStore store, engine::ModelOptions model_options,
                ServerMetrics* metrics = nullptr, std::shared_ptr<spdlog::logger> log = nullptr,
                Residence residence = {})
      : store_(std::move(store)),
        model_options_(model_options),
        metrics_(metrics),
        log_(std::move(log)),
        residence_(residence) {}

  // The version to score with: <model>/<entity> when `entity` is given and that model exists,
  // else the generic model; its active version (version 0) or the given one. NOT_FOUND for
  // unknown names or versions, UNAVAILABLE for a version that is loading or failed to load.
  // A version that was unloaded is loaded again first (a cold load).
  absl::StatusOr<ModelHandle> Get(const std::string& model, const std::string& entity,
                                  uint64_t version) const;
  // Exactly `key` (no entity fallback), its active version (0) or the given one.
  absl::StatusOr<ModelHandle> Handle(const ModelKey& key, uint64_t version) const;
  // As Handle, but never loads an unloaded version (its `model` is then null) nor counts as a
  // use: for status checks that need a version's number or state, not its weights.
  absl::StatusOr<ModelHandle> Peek(const ModelKey& key, uint64_t version) const;

  // Writes `file` as a new version, loads it, and activates it unless `activate` is false
  // (a model's first version is always activated). Returns the version number.
  absl::StatusOr<uint64_t> AddVersion(const ModelKey& key, const v1::ModelFile& file,
                                      bool activate);
  absl::Status Activate(const ModelKey& key, uint64_t version);
  absl::Status DeleteVersion(const ModelKey& key, uint64_t version, bool force);
  absl::Status DeleteModel(const ModelKey& key, bool force);
  // Applies `edit` to a copy of a version's file (0 = the active version), loads the result,
  // rewrites the file and swaps the loaded model; nothing changes when `edit` or the load fails.
  absl::Status EditVersion(const ModelKey& key, uint64_t version,
                           absl::FunctionRef<absl::Status(v1::ModelFile&)> edit);

  // Read access for views: `fn` runs under a shared lock (keep it short; no lifecycle calls).
  // Every model, in key order (a model's entities follow it).
  void ForEach(absl::FunctionRef<void(const ModelKey&, const ModelEntry&)> fn) const;
  // Exactly `key`'s entry; false (fn not run) when there is none.
  bool Visit(const ModelKey& key, absl::FunctionRef<void(const ModelEntry&)> fn) const;
  // True when `model` has entity models (Get then depends on the entity).
  bool HasEntities(const std::string& model) const;
  // The generic model `model` and its entity models, in key order.
  void ForEachOf(const std::string& model,
                 absl::FunctionRef<void(const ModelKey&, const ModelEntry&)> fn) const;

  const ModelStore& store() const { return store_; }
  // What every model is loaded with (the server's --model_threads, --precision, ...).
  const engine::ModelOptions& model_options() const { return model_options_; }
  // Bytes of loaded entity models now (what --model_memory_mb bounds).
  int64_t entity_bytes() const { return entity_bytes_.load(); }

 private:
  friend class StoreSync;  // fills and follows models_ from the store

  // Logs and counts a store entry that cannot be used.
  void ReportStoreError(const ModelKey& key, const char* kind, const std::string& message) const;
  // One version from the store: READY and warm, or UNAVAILABLE with the reason.
  VersionEntry LoadVersion(const ModelKey& key, uint64_t version) const;
  absl::StatusOr<std::shared_ptr<const engine::Model>> Build(const ModelKey& key,
                                                             const v1::ModelFile& file) const;
  // A version's file read from the store and built.
  struct Built {
    uint64_t stamp = 0;  // of the file read, even if it changed since
    absl::StatusOr<std::shared_ptr<const engine::Model>> model;
    bool file_error = false;  // the file could not be read (a store error), not built
  };
  Built BuildFromStore(const ModelKey& key, uint64_t version) const;
  // A READY entry for a built model (whose file had `stamp`): its instruments and live statistics.
  VersionEntry Ready(const ModelKey& key, uint64_t version,
                     std::shared_ptr<const engine::Model> model, uint64_t stamp) const;
  // A handle with a null model: the version is READY but unloaded (Resolve loads it).
  // `touch`: counts as a use (the LRU order).
  absl::StatusOr<ModelHandle> GetLocked(const ModelKey& key, uint64_t version,
                                        bool touch = true) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  VersionEntry* FindReady(const ModelKey& key, uint64_t version) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // GetLocked's answer, after loading the version again if it was unloaded.
  absl::StatusOr<ModelHandle> Resolve(absl::StatusOr<ModelHandle> h) const;
  // Loads an unloaded READY version from the store and installs it (unless another call did).
  absl::StatusOr<ModelHandle> ColdLoad(const ModelKey& key, uint64_t version) const;
  // Puts a built model (from the file with `stamp`) into `ver`, with its residency (entity
  // models count in entity_bytes_); Unload is the reverse.
  void Install(const ModelKey& key, VersionEntry& ver, std::shared_ptr<const engine::Model> model,
               uint64_t stamp) const;
  // A use now, in the LRU order.
  void Touch(const VersionEntry& ver) const;
  static ModelHandle HandleOf(const ModelKey& key, uint64_t version, const VersionEntry& ver);
  // Unloads a READY version, keeping its file without weights for views.
  void Unload(VersionEntry& ver, const char* reason) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unloads the least recently used entity models (never `keep`'s) until their bytes are at most
  // 90% of the budget, when they are over it.
  void EvictLocked(const ModelKey* keep) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unloads the inactive versions of `e` beyond the newest residence_.keep_versions (never
  // version `keep`, just asked for).
  void TrimVersionsLocked(ModelEntry& e, uint64_t keep = 0) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

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
  const Residence residence_;
  // Before models_: the entries' Residency tokens count down into it when they are destroyed.
  mutable std::atomic<int64_t> entity_bytes_{0};
  mutable std::atomic<uint64_t> clock_{0};  // ticks once per Get: the LRU order
  // Mutable: a const Get may load an unloaded version back (a cache fill; the set of models and
  // versions and their states never change there).
  mutable std::map<ModelKey, ModelEntry> models_ ABSL_GUARDED_BY(mu_);
  // Versions being loaded again now (one load each; others wait).
  mutable std::set<std::pair<ModelKey, uint64_t>> cold_loading_ ABSL_GUARDED_BY(mu_);
  // The anomaly-rate statistics the entity models of one model share while any is loaded.
  mutable absl::Mutex entity_stats_mu_;
  mutable std::map<std::string, std::weak_ptr<ModelStats>> entity_stats_
      ABSL_GUARDED_BY(entity_stats_mu_);
};

}  // namespace aeserve::server
