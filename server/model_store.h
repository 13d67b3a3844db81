// The model store on disk: <dir>/<model>/<version>/model.pb and <dir>/<model>/ACTIVE holding the
// active version number. Every write is atomic (temp file, fsync, rename).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "aeserve/v1/model.pb.h"

namespace aeserve::server {

// Model names: 1-128 characters of [A-Za-z0-9_.-], not starting with '.'.
absl::Status ValidateModelName(const std::string& name);

class ModelStore {
 public:
  explicit ModelStore(std::string dir) : dir_(std::move(dir)) {}

  const std::string& dir() const { return dir_; }
  std::vector<std::string> ListModels() const;
  // Versions with a model.pb, ascending. Temp files and other entries are ignored.
  std::vector<uint64_t> ListVersions(const std::string& model) const;
  // The version named by ACTIVE; NOT_FOUND when there is none.
  absl::StatusOr<uint64_t> ReadActive(const std::string& model) const;
  absl::Status WriteActive(const std::string& model, uint64_t version) const;
  std::string VersionPath(const std::string& model, uint64_t version) const;
  absl::StatusOr<v1::ModelFile> Load(const std::string& model, uint64_t version) const;
  // Writes a new version numbered one above the highest present and returns its number.
  absl::StatusOr<uint64_t> AddVersion(const std::string& model, const v1::ModelFile& file) const;

 private:
  std::string dir_;
};

}  // namespace aeserve::server
