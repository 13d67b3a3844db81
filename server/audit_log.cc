// The audit log in the model store.
#include "server/audit_log.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "engine/file_io.h"
#include "google/protobuf/util/json_util.h"
#include "server/model_store.h"

namespace aeserve::server {
namespace {

namespace fs = std::filesystem;

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat("audit log: cannot ", what, " ", path, ": ", std::strerror(errno)));
}

// An open, locked file descriptor of the log's current file; closing it releases the lock.
class LockedFile {
 public:
  ~LockedFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  // Opens `path` for appending and locks it. The file may have been rotated away between the
  // open and the lock; then it is reopened (the lock is held on the file that has the name).
  absl::Status Open(const std::string& path) {
    for (int attempt = 0; attempt < 8; ++attempt) {
      fd_ = ::open(path.c_str(),
                   O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW, 0644);
      if (fd_ < 0) return Errno("open", path);
      int rc;
      do {
        rc = ::flock(fd_, LOCK_EX);
      } while (rc != 0 && errno == EINTR);
      if (rc != 0) return Errno("lock", path);
      struct stat held {
      }, named{};
      if (::fstat(fd_, &held) != 0) return Errno("stat", path);
      if (!S_ISREG(held.st_mode)) {
        return absl::FailedPreconditionError(
            absl::StrCat("audit log: ", path, " is not a regular file"));
      }
      if (::stat(path.c_str(), &named) == 0 && named.st_ino == held.st_ino &&
          named.st_dev == held.st_dev) {
        size_ = static_cast<uint64_t>(held.st_size);
        return absl::OkStatus();
      }
      ::close(fd_);  // rotated meanwhile: lock the new file
      fd_ = -1;
    }
    return absl::UnavailableError(absl::StrCat("audit log: ", path, " keeps being rotated"));
  }
  int fd() const { return fd_; }
  uint64_t size() const { return size_; }

 private:
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace

AuditLog::AuditLog(std::string store_dir, uint64_t max_file_bytes)
    : max_file_bytes_(max_file_bytes), replica_(ReplicaName()) {
  if (store_dir.empty()) return;
  dir_ = (fs::path(store_dir) / ".events").string();
  path_ = (fs::path(dir_) / "events.jsonl").string();
  old_path_ = (fs::path(dir_) / "events.1.jsonl").string();
}

absl::Status AuditLog::Record(v1::Event event) const {
  if (dir_.empty()) return absl::OkStatus();
  if (event.time_unix_ms() == 0) event.set_time_unix_ms(absl::ToUnixMillis(absl::Now()));
  if (event.replica().empty()) event.set_replica(replica_);
  google::protobuf::util::JsonPrintOptions json;
  json.preserve_proto_field_names = true;
  std::string line;
  if (!google::protobuf::util::MessageToJsonString(event, &line, json).ok()) {
    return absl::InternalError("audit log: cannot render the event");
  }
  line += '\n';

  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("audit log: cannot create ", dir_, ": ", ec.message()));
  LockedFile file;
  if (auto st = file.Open(path_); !st.ok()) return st;
  std::string prefix;
  if (file.size() >= max_file_bytes_) {
    // Rotate under the lock: writers waiting on the old file notice the rename and reopen.
    if (::rename(path_.c_str(), old_path_.c_str()) != 0) return Errno("rotate", path_);
    LockedFile fresh;
    if (auto st = fresh.Open(path_); !st.ok()) return st;
    if (!engine::WriteAll(fresh.fd(), line) || ::fsync(fresh.fd()) != 0)
      return Errno("write", path_);
    return absl::OkStatus();
  }
  if (file.size() > 0) {
    // A writer killed mid-line left no newline: start on a fresh line so only that line is lost.
    int rfd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    char last = '\n';
    if (rfd >= 0) {
      if (::pread(rfd, &last, 1, static_cast<off_t>(file.size() - 1)) != 1) last = '\n';
      ::close(rfd);
    }
    if (last != '\n') prefix = "\n";
  }
  if (!engine::WriteAll(file.fd(), prefix + line) || ::fsync(file.fd()) != 0)
    return Errno("write", path_);
  return absl::OkStatus();
}

absl::StatusOr<v1::ListEventsResponse> AuditLog::List(const v1::ListEventsRequest& req) const {
  v1::ListEventsResponse out;
  if (dir_.empty()) return out;
  const uint32_t limit =
      req.limit() == 0 ? kDefaultLimit : std::min<uint32_t>(req.limit(), kMaxLimit);
  std::deque<v1::Event> newest;
  for (const std::string& path : {old_path_, path_}) {
    auto text = engine::ReadRegularFile(path, max_file_bytes_ + (1 << 20));
    if (absl::IsNotFound(text.status())) continue;
    if (!text.ok()) return text.status();
    for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
      v1::Event e;
      google::protobuf::util::JsonParseOptions parse;
      parse.ignore_unknown_fields = true;  // written by a newer replica
      if (!google::protobuf::util::JsonStringToMessage(std::string(line), &e, parse).ok()) {
        continue;  // torn by a crash mid-write
      }
      if (!req.model().empty() && e.model() != req.model()) continue;
      if (!req.entity().empty() && e.entity() != req.entity()) continue;
      if (e.time_unix_ms() < req.since_unix_ms()) continue;
      newest.push_back(std::move(e));
      if (newest.size() > limit) {
        newest.pop_front();
        out.set_truncated(true);
      }
    }
  }
  for (auto& e : newest) *out.add_events() = std::move(e);
  return out;
}

}  // namespace aeserve::server
