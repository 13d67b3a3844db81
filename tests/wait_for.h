// One bounded wait for tests: polls `pred` until it holds or `timeout` passes. Callers assert on
// the result, so a wait that runs out fails the test instead of falling through.
#pragma once

#include <chrono>
#include <thread>

namespace aeserve::testing {

template <typename Pred>
[[nodiscard]] bool WaitFor(Pred pred, std::chrono::milliseconds timeout,
                           std::chrono::milliseconds every = std::chrono::milliseconds(10)) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(every);
  }
}

}  // namespace aeserve::testing
