// Windows over a time series: time features worked out by hand, the window's contents step by
// step, gaps filled or restarting the window, timestamp checks, training windows with a stride,
// and a series model trained end to end.
#include "engine/window.h"

#include <cmath>
#include <limits>
#include <numbers>

#include "engine/model.h"
#include "engine/spec.h"
#include "engine/trainer.h"
#include "gtest/gtest.h"

namespace aeserve::engine {
namespace {

constexpr int64_t kHour = 3'600'000;

v1::Window MakeWindow(uint32_t length, uint32_t columns, int64_t interval_ms,
                      std::vector<v1::TimeFeature> features = {}) {
  v1::Window w;
  w.set_length(length);
  w.set_columns(columns);
  w.set_interval_ms(interval_ms);
  for (auto f : features) w.add_time_features(f);
  EXPECT_TRUE(ResolveWindow(&w).ok());
  return w;
}

v1::ScoringPolicy Gaps(v1::GapFill fill, int max_gap_steps = -1) {
  v1::ScoringPolicy p;
  p.set_gap_fill(fill);
  if (max_gap_steps >= 0) p.set_max_gap_steps(static_cast<uint32_t>(max_gap_steps));
  return p;
}

TEST(Window, TimeFeaturesByHand) {
  const v1::Window w =
      MakeWindow(1, 1, 1000, {v1::TIME_FEATURE_HOUR_OF_DAY, v1::TIME_FEATURE_DAY_OF_WEEK});
  float f[4];
  // 1970-01-01 00:00 UTC, a Thursday: hour phase 0; week phase 3/7 (Monday 00:00 is 0).
  TimeFeatures(w, 0, f);
  EXPECT_NEAR(f[0], 0, 1e-6);
  EXPECT_NEAR(f[1], 1, 1e-6);
  EXPECT_NEAR(f[2], std::sin(6 * std::numbers::pi / 7), 1e-6);
  EXPECT_NEAR(f[3], std::cos(6 * std::numbers::pi / 7), 1e-6);
  // 06:00: a quarter of the day.
  TimeFeatures(w, 6 * kHour, f);
  EXPECT_NEAR(f[0], 1, 1e-6);
  EXPECT_NEAR(f[1], 0, 1e-6);
  // Before the epoch: 1969-12-31 18:00, a Wednesday (week phase (2 + 0.75) / 7).
  TimeFeatures(w, -6 * kHour, f);
  EXPECT_NEAR(f[0], -1, 1e-6);
  EXPECT_NEAR(f[1], 0, 1e-6);
  EXPECT_NEAR(f[2], std::sin(2 * std::numbers::pi * 2.75 / 7), 1e-6);
  // 2024-01-01 (a Monday) 00:00 UTC = 1704067200 s: week phase 0.
  TimeFeatures(w, int64_t{1704067200} * 1000, f);
  EXPECT_NEAR(f[2], 0, 1e-5);
  EXPECT_NEAR(f[3], 1, 1e-5);
}

TEST(Window, InputNamesAndCount) {
  const v1::Window w = MakeWindow(3, 2, 1000, {v1::TIME_FEATURE_HOUR_OF_DAY});
  EXPECT_EQ(WindowInputs(w, 2), 3u * 2 + 2);
  const std::vector<std::string> cols = {"a", "b"};
  EXPECT_EQ(WindowInputNames(w, cols),
            (std::vector<std::string>{"a[t-2]", "b[t-2]", "a[t-1]", "b[t-1]", "a[t]", "b[t]",
                                      "hour_sin", "hour_cos"}));
  EXPECT_TRUE(WindowInputNames(w, {}).empty());
}

TEST(Window, ResolveChecksFields) {
  v1::Window w;
  w.set_length(kMaxWindowLength + 1);
  EXPECT_EQ(ResolveWindow(&w).code(), absl::StatusCode::kInvalidArgument);
  w.set_length(4);
  w.add_time_features(v1::TIME_FEATURE_HOUR_OF_DAY);
  w.add_time_features(v1::TIME_FEATURE_HOUR_OF_DAY);
  auto st = ResolveWindow(&w);
  EXPECT_NE(st.message().find("twice"), std::string::npos) << st;
  v1::Window only_time;
  only_time.add_time_features(v1::TIME_FEATURE_DAY_OF_WEEK);
  ASSERT_TRUE(ResolveWindow(&only_time).ok());
  EXPECT_EQ(only_time.length(), 1u);  // time features alone: a window of one step
  EXPECT_EQ(only_time.stride(), 1u);
}

TEST(Window, FillsStepByStepThenSlides) {
  WindowBuffer b(MakeWindow(3, 2, 1000), {});
  float out[6];
  const float rows[4][2] = {{1, 10}, {2, 20}, {3, 30}, {4, 40}};
  EXPECT_FALSE(b.Push(rows[0], 0, out));
  EXPECT_FALSE(b.Push(rows[1], 1000, out));
  ASSERT_TRUE(b.Push(rows[2], 2000, out));
  EXPECT_EQ(std::vector<float>(out, out + 6), (std::vector<float>{1, 10, 2, 20, 3, 30}));
  ASSERT_TRUE(b.Push(rows[3], 3100, out));  // jitter under half a step is no gap
  EXPECT_EQ(std::vector<float>(out, out + 6), (std::vector<float>{2, 20, 3, 30, 4, 40}));
}

TEST(Window, ShortGapIsClosedUpByDefault) {
  WindowBuffer b(MakeWindow(3, 1, 1000), {});
  float out[3];
  const float v[] = {1, 2, 3, 4};
  b.Push(&v[0], 0, out);
  b.Push(&v[1], 1000, out);
  ASSERT_TRUE(b.Push(&v[2], 4000, out));  // two steps missed: joined
  EXPECT_EQ(std::vector<float>(out, out + 3), (std::vector<float>{1, 2, 3}));
  EXPECT_FALSE(b.Push(&v[3], 9000, out));  // four missed, over the window length: restarts
}

TEST(Window, ShortGapIsMissingLongGapRestarts) {
  WindowBuffer b(MakeWindow(3, 1, 1000), Gaps(v1::GAP_FILL_MISSING, 1));
  float out[3];
  const float v[] = {1, 2, 3, 4, 5, 6};
  b.Push(&v[0], 0, out);
  b.Push(&v[1], 1000, out);
  // One step missed (3000 - 1000 = 2 intervals): it enters the window as missing.
  ASSERT_TRUE(b.Push(&v[2], 3000, out));
  EXPECT_EQ(out[0], 2);
  EXPECT_TRUE(std::isnan(out[1]));
  EXPECT_EQ(out[2], 3);
  // Three steps missed, over max_gap_steps 1: the window starts again.
  EXPECT_FALSE(b.Push(&v[3], 7000, out));
  EXPECT_FALSE(b.Push(&v[4], 8000, out));
  ASSERT_TRUE(b.Push(&v[5], 9000, out));
  EXPECT_EQ(std::vector<float>(out, out + 3), (std::vector<float>{4, 5, 6}));
}

TEST(Window, DefaultMaxGapIsTheWindowLength) {
  WindowBuffer b(MakeWindow(3, 1, 1000), Gaps(v1::GAP_FILL_MISSING));
  float out[3];
  const float v[] = {1, 2, 3};
  b.Push(&v[0], 0, out);
  b.Push(&v[1], 1000, out);
  // Three missed steps (= length) are filled: the window holds two of them and the new row.
  ASSERT_TRUE(b.Push(&v[2], 5000, out));
  EXPECT_TRUE(std::isnan(out[0]) && std::isnan(out[1]));
  EXPECT_EQ(out[2], 3);
  // Four missed steps restart it.
  EXPECT_FALSE(b.Push(&v[0], 10000, out));
}

TEST(Window, TimeFeaturesOfTheNewestStep) {
  WindowBuffer b(MakeWindow(2, 1, kHour, {v1::TIME_FEATURE_HOUR_OF_DAY}), {});
  float out[4];
  const float v[] = {7, 8};
  EXPECT_FALSE(b.Push(&v[0], 5 * kHour, out));
  ASSERT_TRUE(b.Push(&v[1], 6 * kHour, out));
  EXPECT_EQ(out[0], 7);
  EXPECT_EQ(out[1], 8);
  EXPECT_NEAR(out[2], 1, 1e-6);  // 06:00
  EXPECT_NEAR(out[3], 0, 1e-6);
}

TEST(Window, CheckTimesRefusesBackwardsAndMissingAndChangesNothing) {
  WindowBuffer b(MakeWindow(2, 1, 1000), {});
  float out[2];
  const float v[] = {1, 2};
  b.Push(&v[0], 5000, out);
  const int64_t ok[] = {6000, 7000};
  EXPECT_TRUE(b.CheckTimes(ok, 2).ok());
  const int64_t back[] = {6000, 5500};
  auto st = b.CheckTimes(back, 2);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("row 1"), std::string::npos) << st;
  const int64_t same_as_last[] = {5000};  // equal: the next step
  EXPECT_TRUE(b.CheckTimes(same_as_last, 1).ok());
  const int64_t before_last[] = {4000};
  st = b.CheckTimes(before_last, 1);
  EXPECT_NE(st.message().find("stream's last step"), std::string::npos) << st;
  st = b.CheckTimes({}, 3);
  EXPECT_NE(st.message().find("every row needs a timestamp"), std::string::npos) << st;
  // The buffer still continues from 5000.
  ASSERT_TRUE(b.Push(&v[1], 6000, out));
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[1], 2);
}

TEST(Window, FitsSameLengthAndColumnsOnly) {
  WindowBuffer b(MakeWindow(4, 2, 1000), {});
  EXPECT_TRUE(b.Fits(MakeWindow(4, 2, 1000)));
  EXPECT_FALSE(b.Fits(MakeWindow(5, 2, 1000)));
  EXPECT_FALSE(b.Fits(MakeWindow(4, 3, 1000)));
}

TEST(Window, HandMadeSpecsCannotOverflowTheInputCount) {
  // 1024 x 2^22 columns + 2 wraps to 2 in 32 bits.
  v1::ModelSpec spec;
  spec.set_num_features(2);
  spec.mutable_window()->set_length(1024);
  spec.mutable_window()->set_columns(1u << 22);
  spec.mutable_window()->set_interval_ms(60000);
  spec.mutable_window()->add_time_features(v1::TIME_FEATURE_HOUR_OF_DAY);
  EXPECT_EQ(WindowInputs(spec.window(), 1u << 22), uint64_t{1024} << 22 | 2);
  EXPECT_EQ(ResolveSpec(spec, 2).status().code(), absl::StatusCode::kInvalidArgument);
  spec.mutable_window()->set_columns(1u << 16);  // in range, but 1024 x 65536 + 2 != 2
  EXPECT_EQ(ResolveSpec(spec, 2).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Window, TimestampsOutOfRangeAreRefused) {
  WindowBuffer b(MakeWindow(2, 1, 1000), {});
  const int64_t huge[] = {std::numeric_limits<int64_t>::min(), 0};
  auto st = b.CheckTimes(huge, 2);
  EXPECT_NE(st.message().find("outside +-1e15 ms"), std::string::npos) << st;
  EXPECT_EQ(MedianStep(huge).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Window, SwapKeepsTheWindowOnlyForTheSameLayout) {
  WindowBuffer::Names cm, mc;
  for (const char* n : {"cpu", "mem"}) *cm.Add() = n;
  for (const char* n : {"mem", "cpu"}) *mc.Add() = n;
  WindowBuffer b(MakeWindow(4, 2, 1000), {}, cm);
  EXPECT_TRUE(b.Fits(MakeWindow(4, 2, 1000), cm));
  EXPECT_FALSE(b.Fits(MakeWindow(4, 2, 1000), mc));   // the columns in another order
  EXPECT_FALSE(b.Fits(MakeWindow(4, 2, 60000), cm));  // another step
}

TEST(Window, MissingFillRestartsWhenThePolicyAllowsNoMissingValue) {
  v1::ScoringPolicy p = Gaps(v1::GAP_FILL_MISSING);
  p.set_max_missing_fraction(0);
  WindowBuffer b(MakeWindow(2, 1, 1000), p);
  float out[2];
  const float v[] = {1, 2, 3};
  b.Push(&v[0], 0, out);
  ASSERT_TRUE(b.Push(&v[1], 1000, out));
  EXPECT_FALSE(b.Push(&v[2], 3000, out));  // one missed step: restarts instead of a NaN row
}

TEST(Window, MedianStep) {
  const int64_t ts[] = {0, 10, 20, 35, 45};
  EXPECT_EQ(*MedianStep(ts), 10);
  const int64_t repeated[] = {0, 10, 10, 20};  // a repeated time is no step of 0
  EXPECT_EQ(*MedianStep(repeated), 10);
  const int64_t back[] = {0, 10, 5};
  EXPECT_NE(MedianStep(back).status().message().find("go backwards: row 2"), std::string::npos);
  const int64_t flat[] = {7, 7};
  EXPECT_EQ(MedianStep(flat).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(MedianStep(absl::Span<const int64_t>(ts, 1)).ok());
}

TEST(Window, TrainingWindowsWithStride) {
  v1::Window w = MakeWindow(3, 1, 1000);
  w.set_stride(2);
  std::vector<float> v(10);
  std::vector<int64_t> ts(10);
  for (int i = 0; i < 10; ++i) {
    v[i] = static_cast<float>(i);
    ts[i] = i * 1000;
  }
  size_t n = 0;
  auto x = TrainingWindows(w, {}, v, 10, ts, &n);
  ASSERT_TRUE(x.ok()) << x.status();
  // Full windows end at steps 2..9; every second one: 2, 4, 6, 8.
  EXPECT_EQ(n, 4u);
  EXPECT_EQ(*x, (std::vector<float>{0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7, 8}));
  // A window longer than the series.
  auto none = TrainingWindows(MakeWindow(12, 1, 1000), {}, v, 10, ts, &n);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("no full window of 12 steps"), std::string::npos)
      << none.status();
}

// A daily cycle (period 24 steps of one hour): a series model learns the shape of a window and
// the time of day; a flat stretch at the wrong time of day, and a spike, rank above every normal
// window of a held-out day.
TEST(Window, SeriesModelTrainsAndRanksBrokenWindowsAboveNormal) {
  const size_t days = 40, n = days * 24;
  std::vector<float> values(n);
  std::vector<int64_t> ts(n);
  for (size_t i = 0; i < n; ++i) {
    values[i] = static_cast<float>(std::sin(2 * std::numbers::pi * static_cast<double>(i) / 24));
    ts[i] = static_cast<int64_t>(i) * kHour;
  }
  TrainRequest req;
  req.spec.mutable_window()->set_length(6);
  req.spec.mutable_window()->add_time_features(v1::TIME_FEATURE_HOUR_OF_DAY);
  req.options.set_epochs(60);
  req.options.set_seed(3);
  auto file = Train(req, TrainingData{values, n, 1, {"load"}, ts});
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->spec().num_features(), 6u + 2);
  EXPECT_EQ(file->spec().window().interval_ms(), kHour);
  EXPECT_EQ(file->spec().window().columns(), 1u);
  ASSERT_EQ(file->series_columns_size(), 1);
  EXPECT_EQ(file->series_columns(0), "load");
  EXPECT_EQ(file->feature_names(5), "load[t]");
  EXPECT_EQ(file->metadata().data_rows(), n);
  auto model = Model::Create(*file);
  ASSERT_TRUE(model.ok()) << model.status();

  // Score one more normal day and the same day with a spike at hour 12.
  auto windows = [&](bool spike) {
    WindowBuffer b(file->spec().window(), file->policy());
    std::vector<float> x, sample(b.inputs());
    for (size_t i = 0; i < 48; ++i) {
      float v = static_cast<float>(std::sin(2 * std::numbers::pi * static_cast<double>(i) / 24));
      if (spike && i == 36) v += 3;
      if (b.Push(&v, static_cast<int64_t>(n + i) * kHour, sample.data()) && i >= 24) {
        x.insert(x.end(), sample.begin(), sample.end());
      }
    }
    return x;
  };
  auto ctx = (*model)->NewContext();
  ScoreResult normal, broken;
  ASSERT_TRUE((*model)->Score(*ctx, windows(false), {}, &normal).ok());
  ASSERT_TRUE((*model)->Score(*ctx, windows(true), {}, &broken).ok());
  const float worst_normal = *std::max_element(normal.score.begin(), normal.score.end());
  // The windows holding the spike: those ending at steps 36..41 (indices 12..17 of the day).
  for (size_t i = 12; i < 18; ++i) EXPECT_GT(broken.score[i], worst_normal) << i;

  // Timestamps are required and must not go backwards.
  auto no_ts = Train(req, TrainingData{values, n, 1, {"load"}, {}});
  EXPECT_NE(no_ts.status().message().find("every row needs a timestamp"), std::string::npos)
      << no_ts.status();
  std::swap(ts[10], ts[11]);
  auto back = Train(req, TrainingData{values, n, 1, {"load"}, ts});
  EXPECT_NE(back.status().message().find("timestamps go backwards"), std::string::npos)
      << back.status();
}

}  // namespace
}  // namespace aeserve::engine
