// The model file: header (magic, payload length, XXH64) and a serialized v1::ModelFile.
#include "model_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "xxhash.h"

namespace aeserve::engine {
namespace {

constexpr char kMagic[8] = {'A', 'E', 'S', 'V', 'M', 'D', 'L', '1'};
constexpr size_t kHeaderSize = 24;
// Protobuf refuses messages over 2 GiB; a model is far smaller.
constexpr uint64_t kMaxPayload = uint64_t{1} << 31;

void PutU64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

}  // namespace

std::string SerializeModelFile(const v1::ModelFile& file) {
  std::string payload;
  file.SerializeToString(&payload);
  std::string out(kMagic, sizeof kMagic);
  PutU64(out, payload.size());
  PutU64(out, XXH64(payload.data(), payload.size(), 0));
  out += payload;
  return out;
}

absl::StatusOr<v1::ModelFile> ParseModelFile(absl::string_view bytes) {
  if (bytes.size() < kHeaderSize || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    return absl::DataLossError("model file: not an aeserve model file (bad magic or too short)");
  }
  const uint64_t length = GetU64(bytes.data() + 8);
  const uint64_t checksum = GetU64(bytes.data() + 16);
  if (length > kMaxPayload || length != bytes.size() - kHeaderSize) {
    return absl::DataLossError(absl::StrCat("model file: truncated or padded (header says ", length,
                                            " bytes, file has ", bytes.size() - kHeaderSize, ")"));
  }
  const char* payload = bytes.data() + kHeaderSize;
  if (XXH64(payload, length, 0) != checksum) {
    return absl::DataLossError("model file: checksum mismatch (corrupted)");
  }
  v1::ModelFile file;
  if (!file.ParseFromArray(payload, static_cast<int>(length))) {
    return absl::DataLossError("model file: payload does not parse");
  }
  if (file.format_version() != kModelFormatVersion) {
    return absl::DataLossError(
        absl::StrCat("model file: unsupported format version ", file.format_version()));
  }
  return file;
}

absl::StatusOr<v1::ModelFile> LoadModelFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!std::filesystem::exists(path)) {
      return absl::NotFoundError(absl::StrCat("model file ", path, " does not exist"));
    }
    return Errno("cannot open", path);
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  auto file = ParseModelFile(buf.str());
  if (!file.ok()) return absl::Status(file.status().code(), absl::StrCat(path, ": ", file.status().message()));
  return file;
}

absl::Status SaveModelFile(const v1::ModelFile& file, const std::string& path) {
  const std::string bytes = SerializeModelFile(file);
  const std::filesystem::path target(path);
  const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : ".";
  std::random_device rd;
  const std::string tmp =
      (dir / absl::StrCat(".", target.filename().string(), ".tmp.", getpid(), ".", rd())).string();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", tmp);
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status st = Errno("cannot write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return st;
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    absl::Status st = Errno("cannot fsync", tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status st = Errno("cannot rename to", path);
    ::unlink(tmp.c_str());
    return st;
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

}  // namespace aeserve::engine
