// The model store on disk: versioned model files and the ACTIVE manifest of each key.
#include "model_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "model_file.h"

namespace aeserve::server {

namespace fs = std::filesystem;

absl::Status ValidateName(const std::string& name, const char* what) {
  if (name.empty() || name.size() > 128 || name[0] == '.') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be 1-128 characters, not starting with '.'"));
  }
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", name, "' may only use letters, digits, '_', '-', '.'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelKey> MakeKey(const std::string& model, const std::string& entity) {
  if (auto st = ValidateName(model); !st.ok()) return st;
  if (!entity.empty()) {
    if (auto st = ValidateName(entity, "entity name"); !st.ok()) return st;
  }
  return ModelKey{model, entity};
}

std::string ModelStore::KeyDir(const ModelKey& key) const {
  fs::path p = fs::path(dir_) / key.model;
  if (!key.entity.empty()) p = p / "entities" / key.entity;
  return p.string();
}

namespace {

bool IsVersionName(const std::string& s, uint64_t* v) {
  return !s.empty() && std::all_of(s.begin(), s.end(), ::isdigit) && absl::SimpleAtoi(s, v) && *v > 0;
}

bool HasModel(const fs::path& dir) {
  std::error_code ec;
  if (fs::exists(dir / "ACTIVE", ec)) return true;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    uint64_t v = 0;
    if (e.is_directory() && IsVersionName(e.path().filename().string(), &v)) return true;
  }
  return false;
}

absl::Status WriteFileAtomically(const fs::path& path, const std::string& text) {
  std::random_device rd;
  const fs::path tmp = path.parent_path() / absl::StrCat(".", path.filename().string(), ".tmp.", getpid(), ".", rd());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", tmp.string()));
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  }
  const int dfd = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

// Renames `p` out of the way first, so readers never see a half-deleted directory.
absl::Status RemoveDir(const fs::path& p) {
  std::error_code ec;
  std::random_device rd;
  const fs::path gone = p.parent_path() / absl::StrCat(".deleted.", p.filename().string(), ".", rd());
  fs::rename(p, gone, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot delete ", p.string(), ": ", ec.message()));
  fs::remove_all(gone, ec);
  return absl::OkStatus();
}

}  // namespace

std::vector<ModelKey> ModelStore::ListModels() const {
  std::vector<ModelKey> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || !ValidateName(name).ok()) continue;
    if (HasModel(e.path())) out.push_back({name, ""});
    for (const auto& ent : fs::directory_iterator(e.path() / "entities", ec)) {
      const std::string entity = ent.path().filename().string();
      if (ent.is_directory() && ValidateName(entity).ok() && HasModel(ent.path())) {
        out.push_back({name, entity});
      }
    }
    ec.clear();
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint64_t> ModelStore::ListVersions(const ModelKey& key) const {
  std::vector<uint64_t> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(KeyDir(key), ec)) {
    uint64_t v = 0;
    if (e.is_directory() && IsVersionName(e.path().filename().string(), &v) &&
        fs::exists(e.path() / "model.pb")) {
      out.push_back(v);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<uint64_t> ModelStore::ReadActive(const ModelKey& key) const {
  std::ifstream in(fs::path(KeyDir(key)) / "ACTIVE");
  if (!in) return absl::NotFoundError(absl::StrCat("model ", key.str(), " has no ACTIVE file"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t v = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &v) || v == 0) {
    return absl::DataLossError(absl::StrCat("model ", key.str(), ": ACTIVE does not hold a version"));
  }
  return v;
}

absl::Status ModelStore::WriteActive(const ModelKey& key, uint64_t version) const {
  std::error_code ec;
  fs::create_directories(KeyDir(key), ec);
  return WriteFileAtomically(fs::path(KeyDir(key)) / "ACTIVE", absl::StrCat(version, "\n"));
}

absl::Status ModelStore::ClearActive(const ModelKey& key) const {
  std::error_code ec;
  fs::remove(fs::path(KeyDir(key)) / "ACTIVE", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot remove ACTIVE of ", key.str()));
  return absl::OkStatus();
}

std::string ModelStore::VersionPath(const ModelKey& key, uint64_t version) const {
  return (fs::path(KeyDir(key)) / std::to_string(version) / "model.pb").string();
}

absl::StatusOr<v1::ModelFile> ModelStore::Load(const ModelKey& key, uint64_t version) const {
  return engine::LoadModelFile(VersionPath(key, version));
}

absl::StatusOr<uint64_t> ModelStore::AddVersion(const ModelKey& key, const v1::ModelFile& file) const {
  const fs::path kdir = KeyDir(key);
  std::error_code ec;
  fs::create_directories(kdir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", kdir.string(), ": ", ec.message()));
  // Claim the next number with mkdir, which fails if another writer (another replica) took it;
  // a directory a crashed writer left without model.pb is skipped, never reused.
  uint64_t next = 1;
  for (const auto& e : fs::directory_iterator(kdir, ec)) {
    uint64_t v = 0;
    if (IsVersionName(e.path().filename().string(), &v)) next = std::max(next, v + 1);
  }
  for (int attempt = 0; attempt < 1000; ++attempt, ++next) {
    const fs::path vdir = kdir / std::to_string(next);
    if (::mkdir(vdir.c_str(), 0755) != 0) {
      if (errno == EEXIST) continue;
      return absl::InternalError(absl::StrCat("cannot create ", vdir.string()));
    }
    if (auto st = engine::SaveModelFile(file, (vdir / "model.pb").string()); !st.ok()) return st;
    return next;
  }
  return absl::InternalError("cannot claim a version number");
}

absl::Status ModelStore::RewriteVersion(const ModelKey& key, uint64_t version,
                                        const v1::ModelFile& file) const {
  const std::string path = VersionPath(key, version);
  if (!fs::exists(path)) {
    return absl::NotFoundError(absl::StrCat("model ", key.str(), " has no version ", version));
  }
  return engine::SaveModelFile(file, path);
}

absl::Status ModelStore::DeleteVersion(const ModelKey& key, uint64_t version) const {
  const fs::path vdir = fs::path(KeyDir(key)) / std::to_string(version);
  if (!fs::exists(vdir)) {
    return absl::NotFoundError(absl::StrCat("model ", key.str(), " has no version ", version));
  }
  return RemoveDir(vdir);
}

absl::Status ModelStore::DeleteModel(const ModelKey& key) const {
  const fs::path kdir = KeyDir(key);
  if (!fs::exists(kdir)) return absl::NotFoundError(absl::StrCat("unknown model '", key.str(), "'"));
  return RemoveDir(kdir);
}

int ModelStore::RemoveDebris(const ModelKey& key) const {
  int removed = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(KeyDir(key), ec)) {
    const std::string name = e.path().filename().string();
    uint64_t v = 0;
    if (name.rfind(".deleted.", 0) == 0 || name.find(".tmp.") != std::string::npos) {
      fs::remove_all(e.path(), ec);
      ++removed;
    } else if (e.is_directory() && IsVersionName(name, &v)) {
      for (const auto& f : fs::directory_iterator(e.path(), ec)) {
        if (f.path().filename().string().find(".tmp.") != std::string::npos) {
          fs::remove(f.path(), ec);
          ++removed;
        }
      }
    }
  }
  return removed;
}

uint64_t ModelStore::Stamp(const ModelKey& key, uint64_t version) const {
  struct stat st;
  if (::stat(VersionPath(key, version).c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000ull + st.st_mtim.tv_nsec +
         (static_cast<uint64_t>(st.st_size) << 1);
}

ModelStore::Lock::Lock(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  fd_ = ::open((fs::path(dir) / ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ >= 0) ::flock(fd_, LOCK_EX);
}

ModelStore::Lock::~Lock() {
  if (fd_ >= 0) {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
}

}  // namespace aeserve::server
