// What a model version's live traffic says about it, kept whether or not metrics are exported:
// how far its anomaly scores have drifted from calibration (GetModel, aeserve_drift_ks) and its
// recent anomaly rate (aeserve_anomaly_rate). The autopilot's drift trigger reads the same.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace aeserve::server {

// Drift is only reported once this many live scores are in the window.
inline constexpr size_t kMinDriftWindow = 500;

struct Drift {
  double ks = 0;      // two-sample Kolmogorov-Smirnov statistic, live scores vs calibration
  size_t window = 0;  // live scores it was computed over
  // Over `threshold` with a window full enough to mean it.
  bool drifted(double threshold) const { return window >= kMinDriftWindow && ks > threshold; }
};

class ModelStats {
 public:
  // `sorted_calibration`: the calibration scores, ascending (empty: drift is never computed,
  // as for per-entity models, which share one ModelStats per model for their anomaly rate).
  explicit ModelStats(std::vector<float> sorted_calibration);

  // One scored batch: every sample's anomaly score and flag (samples without a score are left out
  // by the caller).
  void Record(absl::Span<const float> scores, absl::Span<const uint8_t> anomalous);

  // Over the last kDriftWindow scores (ks 0 without calibration or before anything was scored).
  Drift ComputeDrift() const;
  // Anomalies / samples over about the last 60 seconds, from snapshots taken at each call
  // (NaN when nothing was scored since the oldest snapshot kept).
  double AnomalyRate();

  static constexpr size_t kDriftWindow = 2048;

 private:
  const std::vector<float> calibration_;
  std::atomic<uint64_t> samples_{0}, anomalies_{0};
  // Ring of the last kDriftWindow scores, written without locks: a reader may see a mix of two
  // batches, which a distribution statistic does not mind.
  std::array<std::atomic<float>, kDriftWindow> window_{};
  std::atomic<uint64_t> written_{0};
  // (time, samples, anomalies) at recent AnomalyRate calls.
  absl::Mutex mu_;
  std::deque<std::tuple<std::chrono::steady_clock::time_point, uint64_t, uint64_t>> snapshots_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace aeserve::server
