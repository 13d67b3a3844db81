// The model store on disk: versioned model files and the ACTIVE manifest of each key.
#include "server/model_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "engine/file_io.h"
#include "engine/model_file.h"

namespace aeserve::server {

const std::string& ReplicaName() {
  static const std::string name = [] {
    char host[256] = {};
    if (::gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "unknown");
    std::random_device rd;
    return absl::StrCat(host, ":", ::getpid(), ":", absl::Hex(rd() & 0xFFFFFF));
  }();
  return name;
}

namespace fs = std::filesystem;

absl::Status ValidateName(const std::string& name, const char* what, bool colon) {
  if (name.empty() || name.size() > 128 || name[0] == '.') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be 1-128 characters, not starting with '.'"));
  }
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' ||
          (colon && c == ':'))) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " '", name, "' may only use letters, digits, '_', '-', '.'", colon ? ", ':'" : ""));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelKey> MakeKey(const std::string& model, const std::string& entity) {
  if (auto st = ValidateName(model); !st.ok()) return st;
  if (!entity.empty()) {
    if (auto st = ValidateName(entity, "entity name", /*colon=*/true); !st.ok()) return st;
  }
  return ModelKey{model, entity};
}

ModelStore::ModelStore(std::string dir) : dir_(std::move(dir)) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();  // paths are joined with '/'
}

// Paths are joined as strings: the store poll builds tens of thousands per round.
std::string ModelStore::KeyDir(const ModelKey& key) const {
  if (key.entity.empty()) return absl::StrCat(dir_, "/", key.model);
  return absl::StrCat(dir_, "/", key.model, "/entities/", key.entity);
}

namespace {

bool IsVersionName(const std::string& s, uint64_t* v) {
  return !s.empty() && std::all_of(s.begin(), s.end(), ::isdigit) && absl::SimpleAtoi(s, v) &&
         *v > 0;
}

// Directory entries are inspected with error codes throughout: a store entry that cannot be
// read must never throw out of the store (one bad model would stop the whole server).
bool IsDir(const fs::directory_entry& e) {
  std::error_code ec;
  return e.is_directory(ec);
}

bool Exists(const fs::path& p) {
  std::error_code ec;
  return fs::symlink_status(p, ec).type() != fs::file_type::not_found && !ec;
}

bool HasModel(const fs::path& dir) {
  if (Exists(dir / "ACTIVE")) return true;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    uint64_t v = 0;
    if (IsDir(*it) && IsVersionName(it->path().filename().string(), &v)) return true;
  }
  return false;
}

// Renames `p` out of the way first, so readers never see a half-deleted directory.
absl::Status RemoveDir(const fs::path& p) {
  std::error_code ec;
  std::random_device rd;
  const fs::path gone =
      p.parent_path() / absl::StrCat(".deleted.", p.filename().string(), ".", rd());
  fs::rename(p, gone, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot delete ", p.string(), ": ", ec.message()));
  fs::remove_all(gone, ec);
  return absl::OkStatus();
}

}  // namespace

std::vector<ModelKey> ModelStore::ListModels(bool* complete) const {
  std::vector<ModelKey> out;
  std::error_code ec;
  bool whole = true;
  fs::directory_iterator it(dir_, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!IsDir(*it) || !ValidateName(name).ok()) continue;
    if (HasModel(it->path())) out.push_back({name, ""});
    std::error_code eec;
    fs::directory_iterator ent(it->path() / "entities", eec);
    if (eec && eec != std::errc::no_such_file_or_directory) whole = false;
    for (; !eec && ent != end; ent.increment(eec)) {
      const std::string entity = ent->path().filename().string();
      if (IsDir(*ent) && ValidateName(entity, "entity name", /*colon=*/true).ok() &&
          HasModel(ent->path())) {
        out.push_back({name, entity});
      }
    }
    if (eec && eec != std::errc::no_such_file_or_directory) whole = false;
  }
  if (ec && ec != std::errc::no_such_file_or_directory) whole = false;  // no store yet: empty
  if (complete != nullptr) *complete = whole;
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint64_t> ModelStore::ListVersions(const ModelKey& key, bool* complete,
                                               std::vector<uint64_t>* pending) const {
  std::vector<uint64_t> out;
  std::error_code ec;
  if (pending != nullptr) pending->clear();
  for (fs::directory_iterator it(KeyDir(key), ec), end; !ec && it != end; it.increment(ec)) {
    uint64_t v = 0;
    if (!IsDir(*it) || !IsVersionName(it->path().filename().string(), &v)) continue;
    if (Exists(it->path() / "model.pb")) {
      out.push_back(v);
    } else if (pending != nullptr) {
      pending->push_back(v);
    }
  }
  if (complete != nullptr) *complete = !ec || ec == std::errc::no_such_file_or_directory;
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status RequireVersion(uint64_t version) {
  if (version == 0) {
    return absl::InvalidArgumentError("version is required (versions are numbered from 1)");
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ModelStore::ReadActive(const ModelKey& key) const {
  const std::string path = (fs::path(KeyDir(key)) / "ACTIVE").string();
  auto text = engine::ReadRegularFile(path, kMaxActiveBytes);
  if (!text.ok()) {
    if (text.status().code() == absl::StatusCode::kNotFound) {
      return absl::NotFoundError(absl::StrCat("model ", key.str(), " has no ACTIVE file"));
    }
    return absl::DataLossError(
        absl::StrCat("model ", key.str(), ": ACTIVE: ", text.status().message()));
  }
  const absl::string_view value = absl::StripAsciiWhitespace(*text);
  if (value == kNoActive) return 0;
  uint64_t v = 0;
  if (value.empty() || !std::all_of(value.begin(), value.end(), ::isdigit) ||
      !absl::SimpleAtoi(value, &v) || v == 0) {
    return absl::DataLossError(absl::StrCat("model ", key.str(), ": ACTIVE holds '",
                                            absl::CEscape(value.substr(0, 32)),
                                            "', not a version number or '", kNoActive, "'"));
  }
  return v;
}

absl::Status ModelStore::WriteActive(const ModelKey& key, uint64_t version) const {
  if (auto st = RequireVersion(version); !st.ok()) return st;
  std::error_code ec;
  fs::create_directories(KeyDir(key), ec);
  return engine::WriteFileAtomically((fs::path(KeyDir(key)) / "ACTIVE").string(),
                                     absl::StrCat(version, "\n"));
}

absl::Status ModelStore::ClearActive(const ModelKey& key) const {
  // An explicit "none", so that a restart agrees with the running servers (a missing ACTIVE
  // would make the highest version active).
  return engine::WriteFileAtomically((fs::path(KeyDir(key)) / "ACTIVE").string(),
                                     absl::StrCat(kNoActive, "\n"));
}

std::string ModelStore::VersionDir(const ModelKey& key, uint64_t version) const {
  return absl::StrCat(KeyDir(key), "/", version);
}

std::string ModelStore::VersionPath(const ModelKey& key, uint64_t version) const {
  return absl::StrCat(VersionDir(key, version), "/model.pb");
}

absl::StatusOr<v1::ModelFile> ModelStore::Load(const ModelKey& key, uint64_t version) const {
  return engine::LoadModelFile(VersionPath(key, version));
}

absl::StatusOr<uint64_t> ModelStore::AddVersion(const ModelKey& key,
                                                const v1::ModelFile& file) const {
  const fs::path kdir = KeyDir(key);
  std::error_code ec;
  fs::create_directories(kdir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create ", kdir.string(), ": ", ec.message()));
  // Claim the next number with mkdir, which fails if another writer (another replica) took it;
  // a directory a crashed writer left without model.pb is skipped, never reused.
  uint64_t next = 1;
  for (fs::directory_iterator it(kdir, ec), end; !ec && it != end; it.increment(ec)) {
    uint64_t v = 0;
    if (IsVersionName(it->path().filename().string(), &v)) next = std::max(next, v + 1);
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
  if (!Exists(path)) {
    return absl::NotFoundError(absl::StrCat("model ", key.str(), " has no version ", version));
  }
  return engine::SaveModelFile(file, path);
}

absl::Status ModelStore::DeleteVersion(const ModelKey& key, uint64_t version) const {
  const fs::path vdir = VersionDir(key, version);
  if (!Exists(vdir)) {
    return absl::NotFoundError(absl::StrCat("model ", key.str(), " has no version ", version));
  }
  return RemoveDir(vdir);
}

absl::Status ModelStore::DeleteModel(const ModelKey& key) const {
  const fs::path kdir = KeyDir(key);
  if (!Exists(kdir)) return absl::NotFoundError(absl::StrCat("unknown model '", key.str(), "'"));
  return RemoveDir(kdir);
}

int ModelStore::RemoveDebris(const ModelKey& key) const {
  int removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(KeyDir(key), ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    uint64_t v = 0;
    std::error_code rec;
    if (name.rfind(".deleted.", 0) == 0 || engine::IsWriteTemp(name)) {
      fs::remove_all(it->path(), rec);
      ++removed;
    } else if (IsDir(*it) && IsVersionName(name, &v)) {
      removed += engine::RemoveWriteTemps(it->path().string());
    }
  }
  return removed;
}

uint64_t ModelStore::Stamp(const ModelKey& key, uint64_t version) const {
  return engine::StampOf(VersionPath(key, version)).value();
}

ModelStore::Lock::Lock(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  const std::string path = (fs::path(dir) / ".lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
  int rc = -1;
  if (fd_ >= 0) {
    do {
      rc = ::flock(fd_, LOCK_EX);
    } while (rc != 0 && errno == EINTR);
  }
  if (rc != 0) {
    status_ =
        absl::UnavailableError(absl::StrCat("cannot lock the model store (", path,
                                            "): ", std::strerror(errno), "; nothing was changed"));
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
}

ModelStore::Lock::~Lock() {
  if (fd_ >= 0) {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
}

}  // namespace aeserve::server
