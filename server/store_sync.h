// Keeps the registry in line with the model store: the first load at start-up and the periodic
// poll that picks up what other replicas sharing the store changed (new versions, rewritten files,
// ACTIVE, deletions) — the registry's repository side, as Triton separates its repository
// manager from the model lifecycle.
#pragma once

#include <map>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "engine/file_io.h"
#include "server/model_registry.h"

namespace aeserve::server {

class StoreSync {
 public:
  explicit StoreSync(ModelRegistry& registry) : r_(registry) {}

  // Loads every model in the store. Every model found is listed at once as LOADING (GetModel
  // shows it; scoring it is UNAVAILABLE "is loading"), then loaded one by one; `loaded` runs after
  // each (progress logs). A version that fails to load is UNAVAILABLE with the reason; the rest
  // serve. An unusable ACTIVE file makes that model UNAVAILABLE with the reason (it never falls
  // back to another version); a missing one makes the highest version active. Each problem is
  // logged and counted (aeserve_model_store_errors_total). Returns how many models have a ready
  // active version.
  int LoadAll(absl::FunctionRef<void(const ModelKey&, const ModelEntry&)> loaded);

  // Brings the registry in line with the store: loads new models and versions (listed as LOADING
  // while they load) and rewritten ones, follows ACTIVE, drops deleted versions and models. A
  // rewritten file that no longer loads, or an ACTIVE file that became unusable, keeps what serves
  // now and is reported in GetModel's error, the log and the store-error counter. Returns how
  // many changes it applied. Called every --store_poll_seconds.
  //
  // A poll reads a model again only when stat() shows a change since its last reading: its
  // directory (a version added or removed), its ACTIVE file, one of its version files (time, size
  // or inode) or a version directory still without its file. What was read within the last second
  // before a poll is read again next time (a later change in the same clock tick could keep the
  // time), and so is a model whose reading met a passing problem (ACTIVE unreadable, a file gone
  // while it was read, a cold load of it under way); every kFullPollEvery-th poll reads
  // everything (file systems whose stat() may be cached, as NFS's).
  int Poll();
  static constexpr uint64_t kFullPollEvery = 30;
  // Models the last Poll read (the others were unchanged since a settled reading).
  size_t models_read() const { return models_read_; }

 private:
  // One model as stat() showed it when the poll last read it.
  struct Seen {
    engine::PathStamp dir, active;
    std::vector<std::pair<uint64_t, engine::PathStamp>> versions;  // their model.pb
    std::vector<std::pair<uint64_t, engine::PathStamp>> pending;   // directories without one
    bool operator==(const Seen&) const = default;
  };
  // The model's directory and ACTIVE now, the files of `versions` and the directories of
  // `pending` (stat() only).
  Seen Glance(const ModelKey& key, const std::vector<uint64_t>& versions,
              const std::vector<uint64_t>& pending) const;
  // Adds the stamps of the files of `versions` and of the directories of `pending` to `s`.
  void StampVersions(const ModelKey& key, const std::vector<uint64_t>& versions,
                     const std::vector<uint64_t>& pending, Seen& s) const;

  // A model's entry as the store holds it now (loads every version).
  ModelEntry Load(const ModelKey& key) const;
  // Follows the store's ACTIVE file for one model. Returns the changes made.
  int FollowActive(const ModelKey& key, ModelEntry& e,
                   const absl::StatusOr<uint64_t>& disk_active) const;

  ModelRegistry& r_;
  std::map<ModelKey, Seen> seen_;  // the models read last time whose stamps had settled
  uint64_t polls_ = 0;
  size_t models_read_ = 0;
};

}  // namespace aeserve::server
