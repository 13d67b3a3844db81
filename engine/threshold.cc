// Anomaly thresholds calibrated on the reconstruction errors of held-out normal data.
#include "engine/threshold.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/spec.h"
#include "engine/status_macros.h"

namespace aeserve::engine {
namespace {

double Quantile(absl::Span<const float> sorted, double q) {
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return sorted[lo] + frac * (static_cast<double>(sorted[hi]) - sorted[lo]);
}

}  // namespace

absl::StatusOr<double> ComputeThreshold(const v1::ThresholdConfig& config,
                                        absl::Span<const float> sorted) {
  AE_ASSIGN_OR_RETURN(v1::ThresholdConfig c, ResolveThresholdConfig(config));
  if (c.method() == v1::THRESHOLD_FIXED) return c.value();
  if (sorted.empty()) {
    return absl::FailedPreconditionError("threshold: the model has no calibration errors");
  }
  const size_t n = sorted.size();
  switch (c.method()) {
    case v1::THRESHOLD_PERCENTILE:
      return Quantile(sorted, c.value() / 100.0);
    case v1::THRESHOLD_MEAN_STD: {
      double mean = 0;
      for (float e : sorted) mean += e;
      mean /= static_cast<double>(n);
      double var = 0;
      for (float e : sorted) var += (e - mean) * (e - mean);
      return mean + c.value() * std::sqrt(var / static_cast<double>(n));
    }
    case v1::THRESHOLD_MEDIAN_MAD: {
      const double median = Quantile(sorted, 0.5);
      std::vector<float> dev(n);
      for (size_t i = 0; i < n; ++i) dev[i] = static_cast<float>(std::abs(sorted[i] - median));
      std::sort(dev.begin(), dev.end());
      return median + c.value() * 1.4826 * Quantile(dev, 0.5);
    }
    case v1::THRESHOLD_TARGET_FPR: {
      const size_t allowed_above = static_cast<size_t>(std::floor(c.value() * n));
      return sorted[n - 1 - std::min(allowed_above, n - 1)];
    }
    default:
      return absl::InvalidArgumentError("threshold: unknown method");
  }
}

size_t LowerBound(absl::Span<const float> sorted, float value) {
  // Branch-free binary search: the same answer as std::lower_bound, with conditional moves
  // instead of jumps the CPU cannot predict (one search per scored row).
  if (sorted.empty()) return 0;
  const float* base = sorted.data();
  size_t n = sorted.size();
  while (n > 1) {
    const size_t half = n / 2;
    base = base[half - 1] < value ? base + half : base;
    n -= half;
  }
  return static_cast<size_t>(base - sorted.data()) + (*base < value ? 1 : 0);
}

double PValue(float error, absl::Span<const float> sorted) {
  const size_t at_least = sorted.size() - LowerBound(sorted, error);
  return (1.0 + static_cast<double>(at_least)) / (static_cast<double>(sorted.size()) + 1.0);
}

absl::Status CheckCriticalLevel(double critical_value, double threshold_value) {
  if (!(critical_value > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("the critical level must be above 0 (got ",
                                                   critical_value, "; 0 means no critical level)"));
  }
  if (critical_value < threshold_value) {
    return absl::InvalidArgumentError(absl::StrCat("the critical level (", critical_value,
                                                   ") must not be below the anomaly level (",
                                                   threshold_value, ")"));
  }
  return absl::OkStatus();
}

absl::Status SetThresholds(v1::ModelFile& file, const v1::ThresholdConfig& threshold,
                           const v1::ThresholdConfig& critical, bool clear_critical) {
  if (clear_critical && critical.method() != v1::THRESHOLD_METHOD_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        "clear_critical and a critical_threshold exclude each other: give one");
  }
  const auto& calib = file.calibration_errors();
  const absl::Span<const float> errors(calib.data(), static_cast<size_t>(calib.size()));
  const bool set_threshold = threshold.method() != v1::THRESHOLD_METHOD_UNSPECIFIED;
  const bool set_critical =
      !clear_critical && critical.method() != v1::THRESHOLD_METHOD_UNSPECIFIED;
  double threshold_value = file.threshold_value(), critical_value = file.critical_threshold_value();
  if (set_threshold) {
    AE_ASSIGN_OR_RETURN(threshold_value, ComputeThreshold(threshold, errors));
  }
  if (set_critical) {
    AE_ASSIGN_OR_RETURN(critical_value, ComputeThreshold(critical, errors));
  }
  if (set_critical || (!clear_critical && file.has_critical_threshold())) {
    AE_RETURN_IF_ERROR(CheckCriticalLevel(critical_value, threshold_value));
  }
  if (set_threshold) {
    *file.mutable_threshold() = threshold;
    file.set_threshold_value(threshold_value);
  }
  if (clear_critical) {
    file.clear_critical_threshold();
    file.clear_critical_threshold_value();
  } else if (set_critical) {
    *file.mutable_critical_threshold() = critical;
    file.set_critical_threshold_value(critical_value);
  }
  return absl::OkStatus();
}

absl::Status EditThresholds(v1::ModelFile& file, const v1::ThresholdConfig& threshold,
                            const v1::ThresholdConfig& critical, bool clear_critical,
                            int64_t unix_ms) {
  v1::ThresholdChange change;
  change.set_unix_ms(unix_ms);
  *change.mutable_old_threshold() = file.threshold();
  change.set_old_value(file.threshold_value());
  *change.mutable_old_critical() = file.critical_threshold();
  change.set_old_critical_value(file.critical_threshold_value());
  AE_RETURN_IF_ERROR(SetThresholds(file, threshold, critical, clear_critical));
  *change.mutable_new_threshold() = file.threshold();
  change.set_new_value(file.threshold_value());
  *change.mutable_new_critical() = file.critical_threshold();
  change.set_new_critical_value(file.critical_threshold_value());
  *file.add_threshold_history() = change;
  return absl::OkStatus();
}

absl::Status CheckCriticalConfig(const v1::ThresholdConfig& critical,
                                 const v1::ThresholdConfig& threshold) {
  AE_ASSIGN_OR_RETURN(v1::ThresholdConfig c, ResolveThresholdConfig(critical));
  AE_ASSIGN_OR_RETURN(v1::ThresholdConfig t, ResolveThresholdConfig(threshold));
  if (c.method() == v1::THRESHOLD_FIXED && !(c.value() > 0))
    return CheckCriticalLevel(c.value(), 0);
  if (c.method() != t.method()) return absl::OkStatus();
  // A lower false-positive rate is a higher level; every other method grows with its value.
  const bool below =
      c.method() == v1::THRESHOLD_TARGET_FPR ? c.value() > t.value() : c.value() < t.value();
  if (below) {
    return absl::InvalidArgumentError(
        absl::StrCat("the critical level (", v1::ThresholdMethod_Name(c.method()), " ", c.value(),
                     ") would be below the anomaly level (", v1::ThresholdMethod_Name(t.method()),
                     " ", t.value(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace aeserve::engine
