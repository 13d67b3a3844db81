// Known-answer tests of the threshold methods and p-values, and of the scaler.
#include "engine/threshold.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "engine/scaler.h"
#include "gtest/gtest.h"

namespace aeserve::engine {
namespace {

const std::vector<float> kOneToTen = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};

double Thr(v1::ThresholdMethod m, double value, const std::vector<float>& e = kOneToTen) {
  v1::ThresholdConfig c;
  c.set_method(m);
  c.set_value(value);
  auto t = ComputeThreshold(c, e);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.value_or(NAN);
}

TEST(Threshold, PercentileInterpolatesLikeNumpy) {
  EXPECT_DOUBLE_EQ(Thr(v1::THRESHOLD_PERCENTILE, 50), 5.5);
  EXPECT_NEAR(Thr(v1::THRESHOLD_PERCENTILE, 90), 9.1, 1e-12);
  EXPECT_DOUBLE_EQ(Thr(v1::THRESHOLD_PERCENTILE, 100), 10);
  EXPECT_NEAR(Thr(v1::THRESHOLD_PERCENTILE, 99), 9.91, 1e-12);
}

TEST(Threshold, MeanPlusKStd) {
  // mean 5.5, population variance 8.25.
  EXPECT_NEAR(Thr(v1::THRESHOLD_MEAN_STD, 2), 5.5 + 2 * std::sqrt(8.25), 1e-9);
  EXPECT_NEAR(Thr(v1::THRESHOLD_MEAN_STD, 0), 5.5, 1e-12);
}

TEST(Threshold, MedianPlusKMad) {
  // Absolute deviations from 5.5: 4.5 3.5 2.5 1.5 .5 .5 1.5 2.5 3.5 4.5 -> median 2.5.
  EXPECT_NEAR(Thr(v1::THRESHOLD_MEDIAN_MAD, 1), 5.5 + 1.4826 * 2.5, 1e-6);
  EXPECT_NEAR(Thr(v1::THRESHOLD_MEDIAN_MAD, 3), 5.5 + 3 * 1.4826 * 2.5, 1e-6);
}

TEST(Threshold, TargetFalsePositiveRate) {
  // At most floor(0.2 * 10) = 2 calibration errors above the threshold: 9 and 10.
  const double t = Thr(v1::THRESHOLD_TARGET_FPR, 0.2);
  EXPECT_DOUBLE_EQ(t, 8);
  int above = 0;
  for (float e : kOneToTen) above += e > t;
  EXPECT_EQ(above, 2);
  EXPECT_DOUBLE_EQ(Thr(v1::THRESHOLD_TARGET_FPR, 0.0), 10);
  EXPECT_DOUBLE_EQ(Thr(v1::THRESHOLD_TARGET_FPR, 0.05), 10);  // floor(0.5) = 0 allowed above
}

TEST(Threshold, FixedNeedsNoCalibration) {
  EXPECT_DOUBLE_EQ(Thr(v1::THRESHOLD_FIXED, 0.25, {}), 0.25);
}

TEST(Threshold, DefaultIs99thPercentile) {
  auto t = ComputeThreshold(v1::ThresholdConfig(), kOneToTen);
  ASSERT_TRUE(t.ok());
  EXPECT_NEAR(*t, 9.91, 1e-12);
}

TEST(Threshold, RejectsBadConfigs) {
  v1::ThresholdConfig c;
  c.set_method(v1::THRESHOLD_PERCENTILE);
  c.set_value(101);
  EXPECT_EQ(ComputeThreshold(c, kOneToTen).status().code(), absl::StatusCode::kInvalidArgument);
  c.set_method(v1::THRESHOLD_TARGET_FPR);
  c.set_value(1.0);
  EXPECT_EQ(ComputeThreshold(c, kOneToTen).status().code(), absl::StatusCode::kInvalidArgument);
  c.set_method(v1::THRESHOLD_MEAN_STD);
  c.set_value(NAN);
  EXPECT_EQ(ComputeThreshold(c, kOneToTen).status().code(), absl::StatusCode::kInvalidArgument);
  c.set_value(3);
  EXPECT_EQ(ComputeThreshold(c, {}).status().code(), absl::StatusCode::kFailedPrecondition);
}

v1::ThresholdConfig Config(v1::ThresholdMethod m, double value) {
  v1::ThresholdConfig c;
  c.set_method(m);
  c.set_value(value);
  return c;
}

// A file calibrated on 1..10 with the anomaly level at the 90th percentile (9.1).
v1::ModelFile CalibratedFile() {
  v1::ModelFile f;
  for (float e : kOneToTen) f.add_calibration_errors(e);
  *f.mutable_threshold() = Config(v1::THRESHOLD_PERCENTILE, 90);
  f.set_threshold_value(9.1);
  return f;
}

TEST(SetThresholds, RecomputesEitherLevelFromCalibration) {
  v1::ModelFile f = CalibratedFile();
  ASSERT_TRUE(SetThresholds(f, Config(v1::THRESHOLD_PERCENTILE, 50), {}, false).ok());
  EXPECT_DOUBLE_EQ(f.threshold_value(), 5.5);
  EXPECT_EQ(f.threshold().value(), 50);
  EXPECT_FALSE(f.has_critical_threshold());
  // Critical only: the anomaly level stays; percentile 100 of 1..10 is 10.
  ASSERT_TRUE(SetThresholds(f, {}, Config(v1::THRESHOLD_PERCENTILE, 100), false).ok());
  EXPECT_DOUBLE_EQ(f.threshold_value(), 5.5);
  EXPECT_DOUBLE_EQ(f.critical_threshold_value(), 10);
  EXPECT_EQ(SetThresholds(f, {}, Config(v1::THRESHOLD_PERCENTILE, 100), true).code(),
            absl::StatusCode::kInvalidArgument)
      << "clearing and setting the critical level at once";
  EXPECT_DOUBLE_EQ(f.critical_threshold_value(), 10);
  ASSERT_TRUE(SetThresholds(f, {}, {}, true).ok());
  EXPECT_FALSE(f.has_critical_threshold());
  EXPECT_EQ(f.critical_threshold_value(), 0);
}

TEST(SetThresholds, RefusesACriticalLevelBelowTheAnomalyLevelAndLeavesTheFile) {
  v1::ModelFile f = CalibratedFile();
  ASSERT_TRUE(SetThresholds(f, {}, Config(v1::THRESHOLD_PERCENTILE, 100), false).ok());
  const std::string before = f.SerializeAsString();
  // Critical 50th percentile (5.5) under the anomaly level 9.1.
  EXPECT_EQ(SetThresholds(f, {}, Config(v1::THRESHOLD_PERCENTILE, 50), false).code(),
            absl::StatusCode::kInvalidArgument);
  // Raising the anomaly level above the existing critical level (10) is refused too.
  EXPECT_EQ(SetThresholds(f, Config(v1::THRESHOLD_FIXED, 11), {}, false).code(),
            absl::StatusCode::kInvalidArgument);
  // ... unless the critical level goes in the same edit.
  EXPECT_EQ(f.SerializeAsString(), before);
  ASSERT_TRUE(SetThresholds(f, Config(v1::THRESHOLD_FIXED, 11), {}, true).ok());
  EXPECT_DOUBLE_EQ(f.threshold_value(), 11);
  // A config that does not compute changes nothing.
  EXPECT_FALSE(SetThresholds(f, Config(v1::THRESHOLD_PERCENTILE, 101), {}, false).ok());
  EXPECT_DOUBLE_EQ(f.threshold_value(), 11);
}

TEST(EditThresholds, RecordsOldAndNewLevelsOnlyWhenTheEditSucceeds) {
  v1::ModelFile f = CalibratedFile();
  ASSERT_TRUE(EditThresholds(f, Config(v1::THRESHOLD_PERCENTILE, 50),
                             Config(v1::THRESHOLD_FIXED, 7), false, 1234)
                  .ok());
  ASSERT_EQ(f.threshold_history_size(), 1);
  const v1::ThresholdChange& c = f.threshold_history(0);
  EXPECT_EQ(c.unix_ms(), 1234);
  EXPECT_DOUBLE_EQ(c.old_value(), 9.1);
  EXPECT_DOUBLE_EQ(c.new_value(), 5.5);
  EXPECT_EQ(c.old_critical_value(), 0);
  EXPECT_DOUBLE_EQ(c.new_critical_value(), 7);
  EXPECT_EQ(c.new_critical().method(), v1::THRESHOLD_FIXED);
  EXPECT_FALSE(EditThresholds(f, Config(v1::THRESHOLD_FIXED, 8), {}, false, 5678).ok());
  EXPECT_EQ(f.threshold_history_size(), 1);
}

TEST(PValue, ConformalShareOfCalibrationAtLeastAsLarge) {
  EXPECT_DOUBLE_EQ(PValue(10, kOneToTen), 2.0 / 11);    // 10 itself is at least as large
  EXPECT_DOUBLE_EQ(PValue(10.5, kOneToTen), 1.0 / 11);  // beyond everything seen
  EXPECT_DOUBLE_EQ(PValue(0, kOneToTen), 1.0);
  EXPECT_DOUBLE_EQ(PValue(5.5, kOneToTen), 6.0 / 11);
  EXPECT_DOUBLE_EQ(PValue(3, {}), 1.0);
}

TEST(PValue, BranchFreeSearchAgreesWithStdLowerBound) {
  // Every size from 0 to 70, with ties (values drawn from 12 levels), searched for each level,
  // the points between and beyond them, and NaN.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> level(0, 11);
  for (size_t n = 0; n <= 70; ++n) {
    std::vector<float> sorted(n);
    for (float& v : sorted) v = static_cast<float>(level(rng));
    std::sort(sorted.begin(), sorted.end());
    for (float q = -1; q <= 12.5f; q += 0.5f) {
      const size_t want =
          static_cast<size_t>(std::lower_bound(sorted.begin(), sorted.end(), q) - sorted.begin());
      ASSERT_EQ(LowerBound(sorted, q), want) << "n=" << n << " q=" << q;
    }
    EXPECT_EQ(LowerBound(sorted, NAN), 0u) << n;  // as std::lower_bound: nothing is below NaN
  }
}

TEST(Scaler, StandardKnownAnswerAndConstantColumn) {
  // Column 0: 1, 2, 3 (mean 2, population std sqrt(2/3)); column 1 constant 5.
  const std::vector<float> data = {1, 5, 2, 5, 3, 5};
  auto s = FitScaler(v1::SCALING_STANDARD, data, 3, 2);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FLOAT_EQ(s->offset(0), 2);
  EXPECT_FLOAT_EQ(s->scale(0), std::sqrt(2.0 / 3.0));
  EXPECT_FLOAT_EQ(s->offset(1), 5);
  EXPECT_FLOAT_EQ(s->scale(1), 1);  // constant: no division by zero
}

TEST(Scaler, MinMaxKnownAnswerAndConstantColumn) {
  const std::vector<float> data = {-1, 7, 3, 7, 1, 7};
  auto s = FitScaler(v1::SCALING_MINMAX, data, 3, 2);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FLOAT_EQ(s->offset(0), -1);
  EXPECT_FLOAT_EQ(s->scale(0), 4);
  EXPECT_FLOAT_EQ(s->offset(1), 7);
  EXPECT_FLOAT_EQ(s->scale(1), 1);
}

TEST(Scaler, NoneIsIdentity) {
  auto s = FitScaler(v1::SCALING_NONE, std::vector<float>{3, 4}, 1, 2);
  ASSERT_TRUE(s.ok());
  EXPECT_FLOAT_EQ(s->offset(1), 0);
  EXPECT_FLOAT_EQ(s->scale(1), 1);
}

TEST(Scaler, RejectsBadShapesAndNonFinite) {
  EXPECT_FALSE(FitScaler(v1::SCALING_STANDARD, std::vector<float>{1, 2, 3}, 2, 2).ok());
  EXPECT_FALSE(FitScaler(v1::SCALING_STANDARD, std::vector<float>{1, INFINITY}, 1, 2).ok());
}

}  // namespace
}  // namespace aeserve::engine
