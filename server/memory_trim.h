// Gives the allocator's free memory back to the system every few seconds (malloc_trim). glibc
// keeps what large requests freed in each thread's arena (a 4096-row batch of a 1024-feature
// model leaves ~60 MB behind for good); trimming now and then brings the server back to what it
// holds (bench/RESULTS.md, "Fleet"). Costs a few milliseconds of one thread per period.
#pragma once

#include <thread>

#include "absl/synchronization/mutex.h"

namespace aeserve::server {

class MemoryTrimmer {
 public:
  // Trims every `period_seconds` from a thread of its own; 0 (or less) = never.
  explicit MemoryTrimmer(double period_seconds);
  ~MemoryTrimmer();  // stops the thread
  MemoryTrimmer(const MemoryTrimmer&) = delete;
  MemoryTrimmer& operator=(const MemoryTrimmer&) = delete;

  // Trims made so far.
  int trims() const;

 private:
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int trims_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace aeserve::server
