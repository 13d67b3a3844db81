// Bounded, non-blocking reads of regular files and atomic writes.
#include "engine/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace aeserve::engine {
namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

const char* KindOf(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

absl::StatusOr<std::string> ReadRegularFile(const std::string& path, uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, " does not exist"));
    return Errno("cannot open", path);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status s = Errno("cannot stat", path);
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is ", KindOf(st.st_mode), ", not a file"));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return absl::OutOfRangeError(
        absl::StrCat(path, " is ", st.st_size, " bytes, over the limit of ", max_bytes));
  }
  std::string out;
  out.resize(static_cast<size_t>(st.st_size));
  size_t got = 0;
  // Read one byte past the size to notice a file that grew meanwhile.
  for (;;) {
    if (got == out.size()) {
      if (out.size() >= max_bytes + 1) break;
      out.resize(std::min<uint64_t>(max_bytes + 1, std::max<size_t>(64, out.size() * 2)));
    }
    const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status s = Errno("cannot read", path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got > max_bytes) {
    return absl::OutOfRangeError(absl::StrCat(path, " is over the limit of ", max_bytes, " bytes"));
  }
  out.resize(got);
  return out;
}

bool WriteAll(int fd, absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

namespace {
constexpr absl::string_view kTempMark = ".tmp.";
}  // namespace

PathStamp StampOf(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return {};
  return {static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
          static_cast<uint64_t>(st.st_size), std::max<uint64_t>(st.st_ino, 1)};
}

uint64_t PathStamp::value() const {
  if (!exists()) return 0;
  const uint64_t mixed = static_cast<uint64_t>(mtime_ns) * 0x9E3779B97F4A7C15ull ^ (size << 1) ^
                         (inode * 0xC2B2AE3D27D4EB4Full);
  return mixed == 0 ? 1 : mixed;
}

bool IsWriteTemp(absl::string_view filename) { return absl::StrContains(filename, kTempMark); }

int RemoveWriteTemps(const std::string& dir) {
  std::error_code ec;
  std::vector<std::filesystem::path> temps;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (IsWriteTemp(it->path().filename().string())) temps.push_back(it->path());
  }
  int removed = 0;
  for (const auto& p : temps) removed += std::filesystem::remove(p, ec) ? 1 : 0;
  return removed;
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes) {
  const std::filesystem::path target(path);
  const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : ".";
  std::random_device rd;
  const std::string tmp =
      (dir / absl::StrCat(".", target.filename().string(), kTempMark, getpid(), ".", rd()))
          .string();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", tmp);
  auto fail = [&](absl::string_view what) {
    absl::Status s = Errno(what, tmp);
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  if (!WriteAll(fd, bytes)) return fail("cannot write");
  if (::fsync(fd) != 0) return fail("cannot fsync");
  if (::close(fd) != 0) {
    absl::Status s = Errno("cannot close", tmp);
    ::unlink(tmp.c_str());
    return s;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status s = Errno("cannot rename to", path);
    ::unlink(tmp.c_str());
    return s;
  }
  // The rename is durable only once the directory is.
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return Errno("cannot open directory", dir.string());
  const bool synced =
      ::fsync(dfd) == 0 || errno == EINVAL;  // some filesystems cannot fsync a directory
  const int saved = errno;
  ::close(dfd);
  if (!synced) {
    errno = saved;
    return Errno("cannot fsync directory", dir.string());
  }
  return absl::OkStatus();
}

}  // namespace aeserve::engine
