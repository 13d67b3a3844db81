// ThreadSanitizer builds only (AESERVE_SANITIZE=thread): makes absl::Mutex and absl::CondVar
// visible to TSan.
//
// Debian's libabsl_synchronization is not built with -fsanitize=thread, so its locks carry no TSan
// annotations: every access guarded by an absl::Mutex — in aeserve and inside gRPC, whose gpr_mu
// and gpr_cv are absl::Mutex and absl::CondVar — would be reported as a race. This file interposes
// the library's lock functions (a definition in the executable takes precedence over the shared
// library's for every caller, gRPC included), tells TSan about each acquire and release with its
// mutex annotation API — what absl itself does when it is compiled with TSan — and forwards to the
// real function found with dlsym(RTLD_NEXT). Await is re-implemented as "unlock, sleep, lock until
// the condition holds", so conditions are always evaluated with the lock held in TSan's eyes.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace {

#define AESERVE_STR2(x) #x
#define AESERVE_STR(x) AESERVE_STR2(x)

// The real function `mangled_tail` of absl's inline namespace, e.g. "5Mutex4LockEv".
template <typename Fn>
Fn Real(const char* mangled_tail) {
  const std::string ns = AESERVE_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const std::string name = "_ZN4absl" + std::to_string(ns.size()) + ns + mangled_tail;
  void* f = dlsym(RTLD_NEXT, name.c_str());
  if (f == nullptr) {
    std::fprintf(stderr, "absl_sync_annotations: %s not found\n", name.c_str());
    std::abort();
  }
  return reinterpret_cast<Fn>(f);
}

using MutexFn = void (*)(absl::Mutex*);
using TryFn = bool (*)(absl::Mutex*);

void RealLock(absl::Mutex* mu) {
  static const MutexFn f = Real<MutexFn>("5Mutex4LockEv");
  f(mu);
}
void RealUnlock(absl::Mutex* mu) {
  static const MutexFn f = Real<MutexFn>("5Mutex6UnlockEv");
  f(mu);
}

// Releases `mu` in TSan's eyes and for real, sleeps 50 us so that waiters do not starve the
// threads they wait for, and takes it back.
void YieldLock(absl::Mutex* mu) {
  mu->Unlock();
  absl::SleepFor(absl::Microseconds(50));
  mu->Lock();
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  __tsan_mutex_pre_lock(this, 0);
  RealLock(this);
  __tsan_mutex_post_lock(this, 0, 0);
}

void Mutex::Unlock() {
  __tsan_mutex_pre_unlock(this, 0);
  RealUnlock(this);
  __tsan_mutex_post_unlock(this, 0);
}

bool Mutex::TryLock() {
  static const TryFn f = Real<TryFn>("5Mutex7TryLockEv");
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool locked = f(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed),
                         0);
  return locked;
}

void Mutex::ReaderLock() {
  static const MutexFn f = Real<MutexFn>("5Mutex10ReaderLockEv");
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  f(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}

void Mutex::ReaderUnlock() {
  static const MutexFn f = Real<MutexFn>("5Mutex12ReaderUnlockEv");
  __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  f(this);
  __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

bool Mutex::ReaderTryLock() {
  static const TryFn f = Real<TryFn>("5Mutex13ReaderTryLockEv");
  const unsigned flags = __tsan_mutex_read_lock | __tsan_mutex_try_lock;
  __tsan_mutex_pre_lock(this, flags);
  const bool locked = f(this);
  __tsan_mutex_post_lock(this, flags | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
  return locked;
}

void Mutex::Await(const Condition& cond) {
  while (!cond.Eval()) YieldLock(this);
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  while (!cond.Eval()) {
    if (absl::Now() >= deadline) return false;
    YieldLock(this);
  }
  return true;
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  return AwaitWithDeadline(cond, absl::Now() + timeout);
}

void Mutex::LockWhen(const Condition& cond) {
  Lock();
  Await(cond);
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  Lock();
  return AwaitWithDeadline(cond, deadline);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  return LockWhenWithDeadline(cond, absl::Now() + timeout);
}

// No __tsan_mutex_destroy here: gRPC destroys mutexes in the thread that drops the last reference
// (an atomic count TSan cannot see), which TSan would report as a race with the last unlock. TSan
// forgets a mutex when its memory is freed.
Mutex::~Mutex() {
  static const MutexFn f = Real<MutexFn>("5MutexD1Ev");
  f(this);
}

// CondVar::Wait releases and re-takes the mutex inside the library: tell TSan around it.
void CondVar::Wait(Mutex* mu) {
  using Fn = void (*)(CondVar*, Mutex*);
  static const Fn f = Real<Fn>("7CondVar4WaitEPNS0_5MutexE");
  __tsan_mutex_pre_unlock(mu, 0);
  __tsan_mutex_post_unlock(mu, 0);
  f(this, mu);
  __tsan_mutex_pre_lock(mu, 0);
  __tsan_mutex_post_lock(mu, 0, 0);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  return WaitWithDeadline(mu, absl::Now() + timeout);
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  using Fn = bool (*)(CondVar*, Mutex*, absl::Time);
  static const Fn f = Real<Fn>("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_mutex_pre_unlock(mu, 0);
  __tsan_mutex_post_unlock(mu, 0);
  const bool timed_out = f(this, mu, deadline);
  __tsan_mutex_pre_lock(mu, 0);
  __tsan_mutex_post_lock(mu, 0, 0);
  return timed_out;
}

ABSL_NAMESPACE_END
}  // namespace absl
