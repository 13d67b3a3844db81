// The model store on disk: versioned model files and the ACTIVE manifest.
#include "model_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "model_file.h"

namespace aeserve::server {

namespace fs = std::filesystem;

absl::Status ValidateModelName(const std::string& name) {
  if (name.empty() || name.size() > 128 || name[0] == '.') {
    return absl::InvalidArgumentError("model name must be 1-128 characters, not starting with '.'");
  }
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) {
      return absl::InvalidArgumentError(
          absl::StrCat("model name '", name, "' may only use letters, digits, '_', '-', '.'"));
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> ModelStore::ListModels() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && ValidateModelName(name).ok()) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint64_t> ModelStore::ListVersions(const std::string& model) const {
  std::vector<uint64_t> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(dir_) / model, ec)) {
    uint64_t v = 0;
    if (e.is_directory() && absl::SimpleAtoi(e.path().filename().string(), &v) && v > 0 &&
        fs::exists(e.path() / "model.pb")) {
      out.push_back(v);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<uint64_t> ModelStore::ReadActive(const std::string& model) const {
  std::ifstream in(fs::path(dir_) / model / "ACTIVE");
  if (!in) return absl::NotFoundError(absl::StrCat("model ", model, " has no ACTIVE file"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t v = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &v) || v == 0) {
    return absl::DataLossError(absl::StrCat("model ", model, ": ACTIVE does not hold a version"));
  }
  return v;
}

absl::Status ModelStore::WriteActive(const std::string& model, uint64_t version) const {
  const fs::path dir = fs::path(dir_) / model;
  const fs::path tmp = dir / absl::StrCat(".ACTIVE.tmp.", getpid());
  const std::string text = absl::StrCat(version, "\n");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", tmp.string()));
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), (dir / "ACTIVE").c_str()) != 0) {
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", (dir / "ACTIVE").string()));
  }
  return absl::OkStatus();
}

std::string ModelStore::VersionPath(const std::string& model, uint64_t version) const {
  return (fs::path(dir_) / model / std::to_string(version) / "model.pb").string();
}

absl::StatusOr<v1::ModelFile> ModelStore::Load(const std::string& model, uint64_t version) const {
  return engine::LoadModelFile(VersionPath(model, version));
}

absl::StatusOr<uint64_t> ModelStore::AddVersion(const std::string& model,
                                                const v1::ModelFile& file) const {
  if (auto st = ValidateModelName(model); !st.ok()) return st;
  const std::vector<uint64_t> versions = ListVersions(model);
  uint64_t next = versions.empty() ? 1 : versions.back() + 1;
  // A version directory without model.pb (a crashed writer) is skipped, never reused.
  std::error_code ec;
  while (fs::exists(fs::path(dir_) / model / std::to_string(next), ec)) ++next;
  const fs::path vdir = fs::path(dir_) / model / std::to_string(next);
  fs::create_directories(vdir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", vdir.string(), ": ", ec.message()));
  if (auto st = engine::SaveModelFile(file, (vdir / "model.pb").string()); !st.ok()) return st;
  return next;
}

}  // namespace aeserve::server
