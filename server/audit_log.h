// The audit log: every lifecycle change and every autopilot decision, appended to the model store
// as one JSON line per event (<store>/.events/events.jsonl; the previous file is events.1.jsonl
// once the current one reaches its size bound). Replicas on one store append to the same file
// under an advisory lock (flock), so the log is shared and survives restarts; a line torn by a
// crash is skipped when reading, and the next writer starts on a fresh line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "aeserve/v1/admin.pb.h"

namespace aeserve::server {

class AuditLog {
 public:
  // `store_dir` empty: a log that records nothing and lists nothing (tests, no store).
  explicit AuditLog(std::string store_dir, uint64_t max_file_bytes = kDefaultMaxFileBytes);

  // Appends `event`, filling its time and replica when unset; fsynced before it returns.
  absl::Status Record(v1::Event event) const;
  // Matching events, oldest first (the newest `limit` of them; response.truncated when more).
  absl::StatusOr<v1::ListEventsResponse> List(const v1::ListEventsRequest& request) const;

  static constexpr uint64_t kDefaultMaxFileBytes = 16 << 20;
  static constexpr uint32_t kDefaultLimit = 100;
  static constexpr uint32_t kMaxLimit = 10000;

 private:
  std::string dir_;   // <store>/.events, or empty
  std::string path_;  // current file
  std::string old_path_;
  uint64_t max_file_bytes_;
  std::string replica_;
};

}  // namespace aeserve::server
