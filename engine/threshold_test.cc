// Known-answer tests of the threshold methods and p-values, and of the scaler.
#include "threshold.h"

#include <cmath>

#include "gtest/gtest.h"
#include "scaler.h"

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

TEST(PValue, ConformalShareOfCalibrationAtLeastAsLarge) {
  EXPECT_DOUBLE_EQ(PValue(10, kOneToTen), 2.0 / 11);   // 10 itself is at least as large
  EXPECT_DOUBLE_EQ(PValue(10.5, kOneToTen), 1.0 / 11);  // beyond everything seen
  EXPECT_DOUBLE_EQ(PValue(0, kOneToTen), 1.0);
  EXPECT_DOUBLE_EQ(PValue(5.5, kOneToTen), 6.0 / 11);
  EXPECT_DOUBLE_EQ(PValue(3, {}), 1.0);
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
