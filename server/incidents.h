// Alarms and incidents of a stream: the k-of-n debounce over its anomaly flags, and the incident
// each raised alarm becomes (opened, updated with a worse sample, closed). No gRPC here: the
// stream reactor feeds each scored batch in order; IncidentBook keeps a named stream's state
// across a reconnect.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/scoring.pb.h"

namespace aeserve::server {

// Who the incidents belong to, and the time a batch was scored.
struct IncidentSource {
  std::string model, entity, stream_id;
  int64_t now_unix_ms = 0;
};

class IncidentTracker {
 public:
  // Alarm when at least k of the last n samples were flagged; 1 <= k <= n.
  IncidentTracker(uint32_t k, uint32_t n);

  // One scored batch, in stream order (skipped samples count as not flagged): appends alarm[i]
  // for each sample and the incident changes of this batch to r->incidents.
  void Feed(const IncidentSource& source, v1::ScoreResponse* r);

  uint32_t k() const { return k_; }
  uint32_t n() const { return static_cast<uint32_t>(window_.size()); }
  uint64_t samples() const { return next_sample_; }  // samples fed so far
  bool open() const { return open_; }

 private:
  const uint32_t k_;
  std::vector<uint8_t> window_;  // ring of the last n flags
  size_t pos_ = 0, count_ = 0;
  uint64_t next_sample_ = 0;
  bool open_ = false;
  v1::Incident incident_;  // the open one
};

// Trackers of named streams that ended, kept for `resume` so a reconnecting client carries on
// with its alarm and open incident. At most `max_kept`; the oldest go first.
class IncidentBook {
 public:
  using Clock = std::chrono::steady_clock;
  explicit IncidentBook(std::chrono::duration<double> resume, size_t max_kept = 10000,
                        std::function<Clock::time_point()> now = Clock::now)
      : resume_(resume), max_kept_(max_kept), now_(std::move(now)) {}

  // The kept tracker for `key` when it ended within `resume` and has the same k and n; a new
  // tracker otherwise.
  std::unique_ptr<IncidentTracker> Take(const std::string& key, uint32_t k, uint32_t n);
  void Keep(const std::string& key, std::unique_ptr<IncidentTracker> tracker);
  size_t size() const;

 private:
  struct Kept {
    std::unique_ptr<IncidentTracker> tracker;
    Clock::time_point until;
  };
  const std::chrono::duration<double> resume_;
  const size_t max_kept_;
  const std::function<Clock::time_point()> now_;
  mutable absl::Mutex mu_;
  std::map<std::string, Kept> kept_ ABSL_GUARDED_BY(mu_);
};

}  // namespace aeserve::server
