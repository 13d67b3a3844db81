// The scoring executor: a caller runs a task itself only while a scoring thread is idle and
// nothing is queued, with a worker state of its own; otherwise the task is queued as before.
#include "server/executor.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "tests/wait_for.h"

namespace aeserve::testing {
namespace {

using std::chrono::seconds;

TEST(Executor, ACallerRunsATaskItselfOnlyWhileAScoringThreadIsIdle) {
  server::Executor executor(1, 8);
  std::thread::id ran_on;
  server::Worker* used = nullptr;
  ASSERT_TRUE(executor.TryRunHere([&](server::Worker& w) {
    ran_on = std::this_thread::get_id();
    used = &w;
  }));
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  // The caller's worker state is kept for the next caller (its contexts are reused).
  server::Worker* again = nullptr;
  ASSERT_TRUE(executor.TryRunHere([&](server::Worker& w) { again = &w; }));
  EXPECT_EQ(again, used);

  // The one scoring thread busy: callers queue.
  absl::Notification started, release;
  executor.Submit([&](server::Worker&) {
    started.Notify();
    release.WaitForNotification();
  });
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(10)));
  bool ran = false;
  EXPECT_FALSE(executor.TryRunHere([&](server::Worker&) { ran = true; }));
  EXPECT_FALSE(ran);
  // Still busy with a task queued behind it: callers queue too; the queued task runs once the
  // thread is free.
  std::atomic<bool> queued_ran{false};
  executor.Submit([&](server::Worker&) { queued_ran = true; });
  EXPECT_FALSE(executor.TryRunHere([&](server::Worker&) { ran = true; }));
  release.Notify();
  ASSERT_TRUE(WaitFor([&] { return queued_ran.load(); }, seconds(10)));
  // The thread is idle again (its busy count given back when it looks for the next task).
  ASSERT_TRUE(WaitFor([&] { return executor.TryRunHere([&](server::Worker&) { ran = true; }); },
                      seconds(10)));
  EXPECT_TRUE(ran);

  // A caller running a task counts as busy: a second caller meanwhile queues.
  absl::Notification inside, leave;
  std::thread first([&] {
    EXPECT_TRUE(executor.TryRunHere([&](server::Worker&) {
      inside.Notify();
      leave.WaitForNotification();
    }));
  });
  ASSERT_TRUE(inside.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_FALSE(executor.TryRunHere([](server::Worker&) {}));
  // ... and a queued task waits for the slot although the scoring thread is idle: never more
  // tasks at once than scoring threads.
  std::atomic<bool> waited{false};
  executor.Submit([&](server::Worker&) { waited = true; });
  EXPECT_FALSE(WaitFor([&] { return waited.load(); }, std::chrono::milliseconds(300)));
  leave.Notify();
  first.join();
  ASSERT_TRUE(WaitFor([&] { return waited.load(); }, seconds(10)));

  executor.Stop();
  EXPECT_FALSE(executor.TryRunHere([&](server::Worker&) { ran = false; }));
  EXPECT_TRUE(ran);
}

}  // namespace
}  // namespace aeserve::testing
