// Anomaly thresholds calibrated on the reconstruction errors of held-out normal data.
#pragma once

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "aeserve/v1/model.pb.h"

namespace aeserve::engine {

// The threshold in error units for `config` over `sorted_errors` (ascending). A sample is
// anomalous when its error is strictly greater than the threshold.
//   percentile p: linear interpolation between order statistics (numpy's default);
//   mean + k*std: population standard deviation;
//   median + k*1.4826*MAD: MAD scaled to be consistent with std under normality;
//   target FPR f: the smallest calibration error with at most floor(f*n) errors above it;
//   fixed: the value itself.
absl::StatusOr<double> ComputeThreshold(const v1::ThresholdConfig& config,
                                        absl::Span<const float> sorted_errors);

// The optional critical (second) level against the anomaly level: INVALID_ARGUMENT when it is not
// above 0 (0 means "no critical level") or below the anomaly level.
absl::Status CheckCriticalLevel(double critical_value, double threshold_value);

// The same check before any calibration errors exist, for two configurations of one method
// (e.g. percentile 99 for the critical level under percentile 99.5 for the anomaly level); OK
// when the methods differ (the values are checked once computed).
absl::Status CheckCriticalConfig(const v1::ThresholdConfig& critical,
                                 const v1::ThresholdConfig& threshold);

// Sets a model's anomaly level to `threshold` and/or its critical level to `critical`, computed
// from the file's calibration errors. A config without a method leaves that level as it is;
// `clear_critical` removes the critical level. Fails (file unchanged) when a config does not
// compute or the critical level would be below the anomaly level. The one place where a trained
// model's levels change: training jobs (critical level) and SetThreshold (both) call it.
absl::Status SetThresholds(v1::ModelFile& file, const v1::ThresholdConfig& threshold,
                           const v1::ThresholdConfig& critical, bool clear_critical);

// SetThresholds, and the change (old and new levels, at `unix_ms`) appended to the file's
// threshold history.
absl::Status EditThresholds(v1::ModelFile& file, const v1::ThresholdConfig& threshold,
                            const v1::ThresholdConfig& critical, bool clear_critical,
                            int64_t unix_ms);

// Conformal p-value of `error`: (1 + #{calibration errors >= error}) / (n + 1), in (0, 1].
// Small means unusual. With no calibration errors it is 1.
double PValue(float error, absl::Span<const float> sorted_errors);
// The index of the first element of `sorted` not below `value` (std::lower_bound's answer).
size_t LowerBound(absl::Span<const float> sorted, float value);

}  // namespace aeserve::engine
