// The models the server hosts: every version in the store, loaded and ready, and which one is
// active. A request takes a shared handle to one version for its duration only, so a swap never
// pulls a model from under it; a version is freed when its last handle drops.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/scoring.pb.h"
#include "model.h"
#include "model_store.h"

namespace aeserve::server {

struct ModelHandle {
  std::shared_ptr<const engine::Model> model;
  std::string name;
  uint64_t version = 0;
};

class ModelRegistry {
 public:
  ModelRegistry(ModelStore store, engine::ModelOptions model_options)
      : store_(std::move(store)), model_options_(model_options) {}

  // Loads every model in the store. A version that fails to load is UNAVAILABLE with the reason;
  // the rest serve. Returns how many models have a ready active version.
  int LoadAll();

  // The active version (version 0) or the given one. NOT_FOUND for unknown names or versions,
  // UNAVAILABLE for a model that failed to load.
  absl::StatusOr<ModelHandle> Get(const std::string& name, uint64_t version) const;

  // Adds an already-saved version to the registry, optionally activating it.
  absl::Status AddLoaded(const std::string& name, uint64_t version, v1::ModelFile file,
                         bool activate);

  std::vector<v1::ModelInfo> List() const;
  absl::StatusOr<v1::ModelInfo> Info(const std::string& name) const;
  const ModelStore& store() const { return store_; }

 private:
  struct Version {
    v1::ModelState state = v1::MODEL_STATE_UNSPECIFIED;
    std::string error;
    std::shared_ptr<const engine::Model> model;
  };
  struct Entry {
    std::map<uint64_t, Version> versions;
    uint64_t active = 0;
    std::string error;
  };
  v1::ModelInfo InfoLocked(const std::string& name, const Entry& e) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const ModelStore store_;
  const engine::ModelOptions model_options_;
  // Guards the map only; models themselves are immutable. Held for lookups and swaps, never
  // while loading or scoring.
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> models_ ABSL_GUARDED_BY(mu_);
};

}  // namespace aeserve::server
