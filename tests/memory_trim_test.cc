// The memory trimmer gives back what freed allocations left in the heap, and only it does.
#include "server/memory_trim.h"

#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace aeserve::testing {
namespace {

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// Sanitizers bring allocators of their own: the test is about glibc's.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kGlibcMalloc = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kGlibcMalloc = false;
#else
constexpr bool kGlibcMalloc = true;
#endif
#else
constexpr bool kGlibcMalloc = true;
#endif

TEST(MemoryTrimmer, GivesBackWhatFreedRequestsLeftInTheHeap) {
  constexpr size_t kBlock = 1 << 20;
  constexpr int kBlocks = 64;
  // A freed mmap'ed block raises glibc's mmap threshold above 1 MiB: later blocks of that size come
  // from the heap, as a server's large request buffers do.
  void* volatile first = std::malloc(kBlock);  // volatile: the pair is not optimised away
  std::free(first);
  const int64_t before = ResidentBytes();
  std::vector<void*> big, small;
  for (int i = 0; i < kBlocks; ++i) {
    big.push_back(std::malloc(kBlock));
    std::memset(big.back(), 1, kBlock);
    small.push_back(std::malloc(64));  // live between the big ones: the heap cannot shrink
  }
  for (void* p : big) std::free(p);
  const int64_t after_free = ResidentBytes();
  if (kGlibcMalloc) {
    ASSERT_GE(after_free - before, int64_t{48} << 20) << "glibc gave the freed blocks back itself";
  }

  server::MemoryTrimmer off(0);
  server::MemoryTrimmer trimmer(0.05);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (trimmer.trims() < 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GE(trimmer.trims(), 1) << "no trim within 10 s";
  EXPECT_EQ(off.trims(), 0);
  if (kGlibcMalloc) {
    EXPECT_LE(ResidentBytes() - before, int64_t{16} << 20);
  }
  for (void* p : small) std::free(p);
}

}  // namespace
}  // namespace aeserve::testing
