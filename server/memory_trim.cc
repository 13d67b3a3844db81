// Gives the allocator's free memory back to the system every few seconds.
#include "server/memory_trim.h"

#include <malloc.h>

#include <cstdint>

#include "absl/time/time.h"

namespace aeserve::server {

MemoryTrimmer::MemoryTrimmer(double period_seconds) {
  if (period_seconds <= 0) return;
  const absl::Duration period =
      absl::Milliseconds(static_cast<int64_t>(period_seconds * 1000 + 0.5));
  thread_ = std::thread([this, period] {
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
        if (mu_.AwaitWithTimeout(absl::Condition(&stop), period)) return;
      }
      malloc_trim(0);
      absl::MutexLock lock(&mu_);
      ++trims_;
    }
  });
}

MemoryTrimmer::~MemoryTrimmer() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

int MemoryTrimmer::trims() const {
  absl::MutexLock lock(&mu_);
  return trims_;
}

}  // namespace aeserve::server
