// The model store on disk, shared by every replica that mounts it:
//   <dir>/<model>/<version>/model.pb             the generic model's versions (1, 2, ...)
//   <dir>/<model>/ACTIVE                          the active version number, as text
//   <dir>/<model>/entities/<entity>/<version>/model.pb and .../ACTIVE   per-entity models
// Every write is atomic (temp file, fsync, rename); a crashed writer leaves at most a temp file
// or a version directory without model.pb, both of which readers ignore. Every read is bounded,
// refuses anything but a regular file, never blocks and never throws: a bad entry is reported as
// a status for that model only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "aeserve/v1/model.pb.h"

namespace aeserve::server {

// This server process as it names itself in the store (audit log entries, retrain claims, shadow
// windows, retained segments): host:pid and a random part chosen once per process (host:pid alone
// repeats when a container restarts in the same pod, as pid 1 again).
const std::string& ReplicaName();

// Names of models and entities: 1-128 characters of [A-Za-z0-9_.-], not starting with '.'; with
// `colon`, ':' too (entity names: Prometheus's instance labels are "host:port").
absl::Status ValidateName(const std::string& name, const char* what = "model name",
                          bool colon = false);

// A generic model ("cpu") or a per-entity one ("cpu" + "host-7", shown as "cpu/host-7").
struct ModelKey {
  std::string model;
  std::string entity;
  std::string str() const { return entity.empty() ? model : model + "/" + entity; }
  bool operator<(const ModelKey& o) const {
    return std::tie(model, entity) < std::tie(o.model, o.entity);
  }
  bool operator==(const ModelKey& o) const { return model == o.model && entity == o.entity; }
};
absl::StatusOr<ModelKey> MakeKey(const std::string& model, const std::string& entity);

// INVALID_ARGUMENT for version 0 where a version must be named (activate, delete).
absl::Status RequireVersion(uint64_t version);

// ACTIVE holds a version number, or this word when the model deliberately has none.
inline constexpr char kNoActive[] = "none";
// ACTIVE is a few bytes; anything larger is not one of ours.
inline constexpr uint64_t kMaxActiveBytes = 64;

class ModelStore {
 public:
  explicit ModelStore(std::string dir);

  const std::string& dir() const { return dir_; }
  // Every key with at least one version directory or an ACTIVE file. `*complete` (optional) is
  // false when a directory could not be read to the end: the list may then miss keys.
  std::vector<ModelKey> ListModels(bool* complete = nullptr) const;
  // Versions with a model.pb, ascending; `*complete` as above. `*pending` (optional) gets the
  // version directories with no model.pb yet (being written, or a crashed writer's debris).
  std::vector<uint64_t> ListVersions(const ModelKey& key, bool* complete = nullptr,
                                     std::vector<uint64_t>* pending = nullptr) const;
  // The version named by ACTIVE; 0 when it says "none"; NOT_FOUND when there is no ACTIVE file;
  // DATA_LOSS with the reason when it is not a small regular file holding a version number.
  // Never blocks (a FIFO is refused) and never throws.
  absl::StatusOr<uint64_t> ReadActive(const ModelKey& key) const;
  absl::Status WriteActive(const ModelKey& key, uint64_t version) const;
  // Records that the model has no active version ("none").
  absl::Status ClearActive(const ModelKey& key) const;
  std::string VersionDir(const ModelKey& key, uint64_t version) const;   // <key dir>/<version>
  std::string VersionPath(const ModelKey& key, uint64_t version) const;  // .../<version>/model.pb
  absl::StatusOr<v1::ModelFile> Load(const ModelKey& key, uint64_t version) const;
  // Writes a new version numbered above every version directory present and returns it.
  absl::StatusOr<uint64_t> AddVersion(const ModelKey& key, const v1::ModelFile& file) const;
  // Replaces an existing version's file atomically (threshold changes; the weights stay).
  absl::Status RewriteVersion(const ModelKey& key, uint64_t version,
                              const v1::ModelFile& file) const;
  absl::Status DeleteVersion(const ModelKey& key, uint64_t version) const;
  // Removes the key's directory (a generic model's includes its entities).
  absl::Status DeleteModel(const ModelKey& key) const;
  // Deletes temp files and version directories without model.pb left by crashed writers.
  int RemoveDebris(const ModelKey& key) const;

  // The key's directory (<dir>/<model> or <dir>/<model>/entities/<entity>).
  std::string KeyDir(const ModelKey& key) const;

  // Modification stamp (engine::PathStamp's value: time, size, inode) of a version's file, to
  // notice rewrites by other replicas; 0 when it does not exist.
  uint64_t Stamp(const ModelKey& key, uint64_t version) const;

  // An exclusive advisory lock (flock) on the store, held for read-modify-write sequences so that
  // several replicas sharing the store serialise their lifecycle changes. When it cannot be taken
  // (status() not OK) the change must not go ahead: it would run unserialised.
  class Lock {
   public:
    explicit Lock(const std::string& dir);
    ~Lock();
    const absl::Status& status() const { return status_; }
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;

   private:
    int fd_ = -1;
    absl::Status status_;
  };

 private:
  std::string dir_;
};

}  // namespace aeserve::server
