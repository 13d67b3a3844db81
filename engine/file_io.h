// Files on disk, the careful way: bounded reads of regular files that never block or throw, and
// atomic writes (temp file, every byte written, fsync, rename, fsync of the directory).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace aeserve::engine {

// Reads a whole regular file of at most `max_bytes`. NOT_FOUND when it does not exist;
// FAILED_PRECONDITION for a directory, FIFO, device or socket (opened without blocking, so a FIFO
// never hangs the caller); OUT_OF_RANGE when it is larger than `max_bytes`; INTERNAL for I/O
// errors. Every message names the path.
absl::StatusOr<std::string> ReadRegularFile(const std::string& path, uint64_t max_bytes);

// Writes every byte of `bytes` to `fd`, retrying partial writes and EINTR; false (errno set) on
// an error.
bool WriteAll(int fd, absl::string_view bytes);

// Replaces `path` with `bytes` atomically: readers see the old content or the new, never a mix.
// Partial writes and EINTR are retried; a failed write, fsync, close, rename or directory fsync
// is an error (the temp file is removed).
absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes);

// What stat() says of a path, to notice a change without reading it: a rename over it changes the
// inode, a write in place the time or the size. All zero when it does not exist.
struct PathStamp {
  int64_t mtime_ns = 0;
  uint64_t size = 0, inode = 0;
  bool exists() const { return inode != 0; }
  // The three as one number, 0 only when the path does not exist.
  uint64_t value() const;
  bool operator==(const PathStamp&) const = default;
};
PathStamp StampOf(const std::string& path);

// True for the name of a temp file WriteFileAtomically makes (".<name>.tmp.<pid>.<random>"):
// debris when its writer was killed before the rename.
bool IsWriteTemp(absl::string_view filename);
// Removes the temp files WriteFileAtomically left in `dir` (not below it); returns how many.
int RemoveWriteTemps(const std::string& dir);

}  // namespace aeserve::engine
