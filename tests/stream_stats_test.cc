// StreamStats known answers: counts, mean and order-statistic quantiles per window, totals across
// windows, and when a summary is due (by batches, by seconds).
#include "server/stream_stats.h"

#include <cmath>

#include "gtest/gtest.h"

namespace aeserve::server {
namespace {

using std::chrono::milliseconds;

v1::ScoreResponse Batch(const std::vector<float>& errors, uint32_t anomalies) {
  v1::ScoreResponse r;
  r.set_num_samples(static_cast<uint32_t>(errors.size()));
  r.set_num_anomalies(anomalies);
  for (float e : errors) r.add_errors(e);
  return r;
}

v1::StreamConfig Every(uint32_t batches, double seconds) {
  v1::StreamConfig c;
  c.set_stats_every_batches(batches);
  c.set_stats_every_seconds(seconds);
  return c;
}

TEST(StreamStats, QuantilesAreOrderStatisticsOfTheWindow) {
  const auto t0 = StreamStats::Clock::time_point{};
  StreamStats s(t0);
  // Errors 100, 99, ..., 1 over two batches, plus a skipped sample (NaN) left out.
  std::vector<float> a, b;
  for (int e = 100; e > 50; --e) a.push_back(static_cast<float>(e));
  for (int e = 50; e >= 1; --e) b.push_back(static_cast<float>(e));
  b.push_back(NAN);
  s.Add(Batch(a, 3));
  EXPECT_FALSE(s.Take(Every(2, 0), t0 + milliseconds(10))) << "one batch of two";
  s.Add(Batch(b, 2));
  auto st = s.Take(Every(2, 0), t0 + milliseconds(1500));
  ASSERT_TRUE(st);
  EXPECT_EQ(st->batches(), 2u);
  EXPECT_EQ(st->samples(), 101u);
  EXPECT_EQ(st->anomalies(), 5u);
  EXPECT_DOUBLE_EQ(st->anomaly_rate(), 5.0 / 101);
  EXPECT_DOUBLE_EQ(st->error_mean(), 50.5);  // (1 + ... + 100) / 100
  EXPECT_EQ(st->error_p50(), 51);            // sorted index floor(0.5 * 100) = 50
  EXPECT_EQ(st->error_p90(), 91);
  EXPECT_EQ(st->error_p99(), 100);
  EXPECT_DOUBLE_EQ(st->window_seconds(), 1.5);
  EXPECT_EQ(st->total_samples(), 101u);
  // The next window starts empty; totals carry on.
  s.Add(Batch({7}, 1));
  s.Add(Batch({}, 0));
  st = s.Take(Every(2, 0), t0 + milliseconds(2000));
  ASSERT_TRUE(st);
  EXPECT_EQ(st->samples(), 1u);
  EXPECT_EQ(st->error_p50(), 7);
  EXPECT_EQ(st->error_p99(), 7);
  EXPECT_DOUBLE_EQ(st->window_seconds(), 0.5);
  EXPECT_EQ(st->total_samples(), 102u);
  EXPECT_EQ(st->total_anomalies(), 6u);
}

TEST(StreamStats, DueBySecondsEvenWithoutErrorsAndNeverWhenOff) {
  const auto t0 = StreamStats::Clock::time_point{};
  StreamStats s(t0);
  EXPECT_FALSE(s.Take(Every(0, 0), t0 + std::chrono::hours(1))) << "no summary asked for";
  EXPECT_FALSE(s.Take(Every(0, 2), t0 + milliseconds(1999)));
  auto st = s.Take(Every(0, 2), t0 + milliseconds(2000));
  ASSERT_TRUE(st);
  EXPECT_EQ(st->batches(), 0u);
  EXPECT_EQ(st->error_p50(), 0);
  EXPECT_EQ(st->anomaly_rate(), 0);
  EXPECT_FALSE(s.Take(Every(0, 2), t0 + milliseconds(3000))) << "the window restarted at 2 s";
}

}  // namespace
}  // namespace aeserve::server
