// A byte budget shared by many holders (training uploads and queued jobs; stream buffers): all or
// nothing acquisition, lock-free, and a movable reservation that gives its bytes back when it is
// destroyed or released.
#pragma once

#include <atomic>
#include <cstdint>
#include <utility>

namespace aeserve::server {

class ByteBudget {
 public:
  explicit ByteBudget(uint64_t limit) : limit_(limit) {}
  // Takes `n` bytes if they fit under the limit; false (and nothing taken) otherwise.
  bool TryAcquire(uint64_t n) {
    uint64_t used = used_.load();
    do {
      if (n > limit_ || used > limit_ - n) return false;
    } while (!used_.compare_exchange_weak(used, used + n));
    return true;
  }
  // Counts `n` bytes already held, even past the limit (which then refuses further acquisitions).
  void Add(uint64_t n) { used_.fetch_add(n); }
  void Release(uint64_t n) { used_.fetch_sub(n); }
  uint64_t used() const { return used_.load(); }
  uint64_t limit() const { return limit_; }

  class Reservation {
   public:
    Reservation() = default;
    Reservation(ByteBudget* budget, uint64_t bytes) : budget_(budget), bytes_(bytes) {}
    Reservation(Reservation&& o) noexcept
        : budget_(std::exchange(o.budget_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
    Reservation& operator=(Reservation&& o) noexcept {
      Release();
      budget_ = std::exchange(o.budget_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      return *this;
    }
    ~Reservation() { Release(); }
    void Release() {
      if (budget_ != nullptr) budget_->Release(bytes_);
      budget_ = nullptr;
      bytes_ = 0;
    }
    uint64_t bytes() const { return bytes_; }

   private:
    ByteBudget* budget_ = nullptr;
    uint64_t bytes_ = 0;
  };
  // A reservation of `n` bytes, or an empty one (bytes() == 0 for n > 0) when they do not fit.
  Reservation Reserve(uint64_t n) { return TryAcquire(n) ? Reservation(this, n) : Reservation(); }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};

}  // namespace aeserve::server
