// Retained traffic on its own (issue #15 part 1): segments, bounds, checksums, the flagged-rows
// policy and time order.
#include "server/retention.h"

#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/retained_files.h"
#include "tests/test_models.h"

namespace aeserve::testing {
namespace {

namespace fs = std::filesystem;
using server::Retention;

google::protobuf::RepeatedPtrField<std::string> Names(uint32_t d) {
  google::protobuf::RepeatedPtrField<std::string> out;
  for (uint32_t i = 0; i < d; ++i) *out.Add() = "f" + std::to_string(i);
  return out;
}

// Rows whose first value is their index, so order and identity can be checked.
std::vector<float> Rows(size_t first, size_t n, uint32_t d) {
  std::vector<float> v(n * d, 0.5f);
  for (size_t i = 0; i < n; ++i) v[i * d] = static_cast<float>(first + i);
  return v;
}

TEST(Retention, Crc32cKnownAnswers) {
  // The standard check value of CRC-32C, and the empty string.
  EXPECT_EQ(server::Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(server::Crc32c("", 0), 0u);
  const unsigned char zeros[32] = {};
  EXPECT_EQ(server::Crc32c(zeros, 32), 0x8A9136AAu);  // RFC 3720, B.4: 32 bytes of zeros
}

// The crc32 instruction path (taken on this machine when it has SSE4.2) agrees with the table
// for every length up to 100 bytes (the 8-byte loop and the byte tail) at every alignment.
TEST(Retention, Crc32cInstructionAndTableAgree) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("sse4.2")) GTEST_SKIP() << "no SSE4.2: Crc32c is the table";
#else
  GTEST_SKIP() << "not x86-64: Crc32c is the table";
#endif
  EXPECT_EQ(server::Crc32cBytewise("123456789", 9), 0xE3069283u);
  std::mt19937 rng(7);
  std::vector<unsigned char> buf(128);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t size = 0; size <= 100; ++size) {
      ASSERT_EQ(server::Crc32c(buf.data() + offset, size),
                server::Crc32cBytewise(buf.data() + offset, size))
          << "offset " << offset << ", size " << size;
    }
  }
}

// Rows arriving while the writer's queue has no room for another segment are counted as dropped
// without being copied; once the writer has caught up they are kept again.
TEST(Retention, AWriterBehindDropsRowsBeforeCopyingThem) {
  TempDir dir("aeserve_retention");
  const std::string d_dir = dir.path() + "/retained";
  Retention r(d_dir, "test");
  constexpr uint32_t d = 1000;  // a segment of 4,096 rows: 16.4 MB; the queue takes 64 MiB
  constexpr size_t n = Retention::kSegmentRows;
  r.SetBounds(0, 0, v1::FLAGGED_ROWS_KEEP);
  const std::vector<float> rows(n * d, 0.5f);
  int full = 0;  // calls whose rows were all kept
  while (full < 10 && r.Append(d, Names(d), rows, {}, {}, {}, 1000) == n) ++full;
  EXPECT_EQ(full, 4);  // 4 x 16.4 MB queued; a fifth would not fit
  EXPECT_EQ(r.Totals().rows, 4 * n);
  EXPECT_EQ(r.Totals().dropped_rows, n);
  EXPECT_EQ(r.Append(d, Names(d), rows, {}, {}, {}, 1000), 0u);
  EXPECT_EQ(r.Totals().dropped_rows, 2 * n);
  // Meanwhile a series stream's steps are counted once: re-sent steps (a window warming up) are
  // skipped as always, not counted as dropped again.
  const std::vector<float> steps(10 * d, 0.25f);
  std::vector<int64_t> times(10);
  std::iota(times.begin(), times.end(), int64_t{100});
  EXPECT_EQ(r.Append(d, Names(d), steps, times, {}, {}, 1000, /*series=*/true), 0u);
  EXPECT_EQ(r.Totals().dropped_rows, 2 * n + 10);
  EXPECT_EQ(r.Append(d, Names(d), steps, times, {}, {}, 1000, /*series=*/true), 0u);
  EXPECT_EQ(r.Totals().dropped_rows, 2 * n + 10);
  ASSERT_TRUE(r.Maintain(2000, /*force=*/false).ok());
  EXPECT_EQ(Segments(d_dir).size(), 4u);
  EXPECT_EQ(r.Append(d, Names(d), rows, {}, {}, {}, 3000), n);
  EXPECT_EQ(r.Totals().rows, 5 * n);
}

// A wide model's segments hold fewer rows (at most kMaxSegmentBytes each), so its rows are kept
// and queued like a narrow model's; a full 4,096-row segment would not fit the writer's queue.
TEST(Retention, AWideModelKeepsItsRowsInSmallerSegments) {
  TempDir dir("aeserve_retention");
  const std::string d_dir = dir.path() + "/retained";
  Retention r(d_dir, "test");
  constexpr uint32_t d = 5000;
  const size_t per = Retention::SegmentRows(d);
  EXPECT_LT(per, Retention::kSegmentRows);
  EXPECT_LE(per * Retention::RowBytes(d), Retention::kMaxSegmentBytes);
  EXPECT_EQ(Retention::SegmentRows(38), Retention::kSegmentRows);
  EXPECT_EQ(Retention::SegmentRows(65536), 63u);
  r.SetBounds(0, 0, v1::FLAGGED_ROWS_KEEP);
  const size_t n = 2 * per + 10;
  const auto rows = Rows(0, n, d);
  EXPECT_EQ(r.Append(d, Names(d), rows, {}, {}, {}, 1000), n);
  ASSERT_TRUE(r.Maintain(2000, /*force=*/true).ok());
  EXPECT_EQ(Segments(d_dir).size(), 3u);
  EXPECT_EQ(r.Totals().dropped_rows, 0u);
  auto back = r.Read(d, 0);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->rows(), n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(back->values[i * d], static_cast<float>(i)) << i;
}

TEST(Retention, KeepsRowsInOrderAcrossSegmentsAndBoundsThemOldestFirst) {
  TempDir dir("aeserve_retention");
  const std::string d_dir = dir.path() + "/retained";
  Retention r(d_dir, "test");
  constexpr uint32_t d = 3;
  r.SetBounds(/*rows=*/2 * Retention::kSegmentRows, /*hours=*/0, v1::FLAGGED_ROWS_KEEP);
  // 3 full segments and 10 rows more, in batches that straddle the segment boundaries.
  const size_t total = 3 * Retention::kSegmentRows + 10;
  for (size_t at = 0; at < total; at += 1000) {
    const size_t n = std::min<size_t>(1000, total - at);
    auto rows = Rows(at, n, d);
    EXPECT_EQ(r.Append(d, Names(d), rows, {}, {}, {}, 1000 + static_cast<int64_t>(at)), n);
  }
  ASSERT_TRUE(r.Maintain(/*now_ms=*/5000, /*force=*/false).ok());
  // The full ones are written; the open one stays in memory (not old enough); the oldest full
  // segment went beyond the bound of 2 segments' rows.
  EXPECT_EQ(Segments(d_dir).size(), 2u);
  EXPECT_EQ(r.Totals().rows, 2 * Retention::kSegmentRows + 10);
  ASSERT_TRUE(r.Maintain(5000, /*force=*/true).ok());
  // With the open segment written: whole segments are kept until they hold the bound (the newest
  // 10 + 4096 rows are under it, so the one before stays too).
  EXPECT_EQ(Segments(d_dir).size(), 3u);
  auto back = r.Read(d, 0);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->rows(), 2 * Retention::kSegmentRows + 10);
  for (size_t i = 0; i < back->rows(); ++i) {
    ASSERT_EQ(back->values[i * d], static_cast<float>(Retention::kSegmentRows + i)) << i;
  }
  auto bounded = r.Read(d, 2 * Retention::kSegmentRows);  // what a retrain reads: the newest N
  ASSERT_TRUE(bounded.ok());
  ASSERT_EQ(bounded->rows(), 2 * Retention::kSegmentRows);
  EXPECT_EQ(bounded->values[0], static_cast<float>(Retention::kSegmentRows + 10));
  EXPECT_EQ(back->feature_names, (std::vector<std::string>{"f0", "f1", "f2"}));
  EXPECT_TRUE(back->timestamps_ms.empty());  // none were given
  auto newest = r.Read(d, 5);
  ASSERT_TRUE(newest.ok());
  ASSERT_EQ(newest->rows(), 5u);
  EXPECT_EQ(newest->values[0], static_cast<float>(total - 5));
}

TEST(Retention, AgeBoundDropsOldSegments) {
  TempDir dir("aeserve_retention");
  Retention r(dir.path() + "/retained", "test");
  r.SetBounds(1000000, /*hours=*/1, v1::FLAGGED_ROWS_KEEP);
  auto rows = Rows(0, 10, 2);
  r.Append(2, Names(2), rows, {}, {}, {}, /*now_ms=*/0);
  ASSERT_TRUE(r.Maintain(0, true).ok());
  r.Append(2, Names(2), rows, {}, {}, {}, /*now_ms=*/3600 * 1000);
  ASSERT_TRUE(r.Maintain(3600 * 1000, true).ok());
  EXPECT_EQ(r.Totals().rows, 20u);
  ASSERT_TRUE(r.Maintain(3600 * 1000 + 1, false).ok());  // the first is now over an hour old
  EXPECT_EQ(r.Totals().rows, 10u);
  EXPECT_EQ(Segments(dir.path() + "/retained").size(), 1u);
}

TEST(Retention, ACorruptSegmentIsSkippedAndCounted) {
  TempDir dir("aeserve_retention");
  const std::string d_dir = dir.path() + "/retained";
  Retention r(d_dir, "test");
  r.SetBounds(1000000, 0, v1::FLAGGED_ROWS_KEEP);
  for (int seg = 0; seg < 3; ++seg) {
    auto rows = Rows(seg * 100, 100, 4);
    r.Append(4, Names(4), rows, {}, {}, {}, 1000 * (seg + 1));
    ASSERT_TRUE(r.Maintain(1000 * (seg + 1), true).ok());
  }
  auto files = Segments(d_dir);
  ASSERT_EQ(files.size(), 3u);
  FlipBit(files[1], 40);  // in the middle segment's payload
  std::ofstream(files[0].string() + ".junk.seg") << "not a segment";
  auto back = r.Read(4, 0);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->rows(), 200u);
  EXPECT_EQ(back->corrupt_segments, 2u);  // the flipped bit and the junk file
  EXPECT_EQ(back->values[0], 0.f);
  EXPECT_EQ(back->values[100 * 4], 200.f);
  auto other = r.Read(5, 0);  // another feature count: nothing matches
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->rows(), 0u);
  EXPECT_EQ(other->other_features, 2u);
}

TEST(Retention, FlaggedRowsPolicyAndTimeOrder) {
  TempDir dir("aeserve_retention");
  Retention r(dir.path() + "/retained", "test");
  auto rows = Rows(0, 4, 1);
  const std::vector<uint8_t> flagged{0, 1, 1, 0}, alarmed{0, 0, 1, 1};
  const std::vector<int64_t> stamps{40, 30, 20, 10};
  r.SetBounds(100, 0, v1::FLAGGED_ROWS_DROP);
  EXPECT_EQ(r.Append(1, Names(1), rows, stamps, flagged, alarmed, 1), 2u);
  r.SetBounds(100, 0, v1::FLAGGED_ROWS_KEEP_UNLESS_INCIDENT);  // drops flagged rows in an alarm
  EXPECT_EQ(r.Append(1, Names(1), rows, stamps, flagged, alarmed, 2), 3u);
  r.SetBounds(100, 0, v1::FLAGGED_ROWS_KEEP);
  EXPECT_EQ(r.Append(1, Names(1), rows, stamps, flagged, alarmed, 3), 4u);
  EXPECT_EQ(r.Totals().dropped_rows, 3u);
  ASSERT_TRUE(r.Maintain(10, true).ok());
  auto back = r.Read(1, 0);
  ASSERT_TRUE(back.ok());
  // Rows with timestamps come back in time order (rows of one time in the order they came).
  EXPECT_EQ(back->timestamps_ms, (std::vector<int64_t>{10, 10, 10, 20, 30, 30, 40, 40, 40}));
  EXPECT_EQ(back->values, (std::vector<float>{3, 3, 3, 2, 1, 1, 0, 0, 0}));
}

TEST(Retention, ASeriesSentAgainToWarmAWindowUpIsKeptOnce) {
  TempDir dir("aeserve_retention");
  Retention r(dir.path() + "/retained", "test");
  r.SetBounds(100, 0, v1::FLAGGED_ROWS_KEEP);
  const std::vector<float> first{1, 2, 3};
  EXPECT_EQ(r.Append(1, Names(1), first, std::vector<int64_t>{100, 200, 300}, {}, {}, 1, true), 3u);
  // A stream re-sends the last two steps, then goes on; a repeated time with another value is the
  // next step (a daylight-saving hour), the same value at that time again is a re-send.
  const std::vector<float> again{2, 3, 4, 5, 5};
  EXPECT_EQ(
      r.Append(1, Names(1), again, std::vector<int64_t>{200, 300, 400, 400, 400}, {}, {}, 2, true),
      2u);
  ASSERT_TRUE(r.Maintain(10, true).ok());
  auto back = r.Read(1, 0);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->timestamps_ms, (std::vector<int64_t>{100, 200, 300, 400, 400}));
  EXPECT_EQ(back->values, (std::vector<float>{1, 2, 3, 4, 5}));
}

}  // namespace
}  // namespace aeserve::testing
