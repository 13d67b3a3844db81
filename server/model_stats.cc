// Drift and anomaly rate of a model version's live traffic.
#include "server/model_stats.h"

#include <algorithm>
#include <cmath>

namespace aeserve::server {

ModelStats::ModelStats(std::vector<float> sorted_calibration)
    : calibration_(std::move(sorted_calibration)) {}

void ModelStats::Record(absl::Span<const float> scores, absl::Span<const uint8_t> anomalous) {
  uint64_t flagged = 0;
  for (uint8_t a : anomalous) flagged += a != 0;
  samples_.fetch_add(scores.size(), std::memory_order_relaxed);
  anomalies_.fetch_add(flagged, std::memory_order_relaxed);
  // The drift window keeps the last kDriftWindow scores.
  const size_t start = scores.size() > kDriftWindow ? scores.size() - kDriftWindow : 0;
  const uint64_t n = scores.size() - start;
  const uint64_t at = written_.fetch_add(n, std::memory_order_relaxed);
  for (uint64_t i = 0; i < n; ++i) {
    window_[(at + i) % kDriftWindow].store(scores[start + i], std::memory_order_relaxed);
  }
}

Drift ModelStats::ComputeDrift() const {
  const size_t filled = static_cast<size_t>(std::min<uint64_t>(written_.load(), kDriftWindow));
  std::vector<float> live(filled);
  for (size_t i = 0; i < filled; ++i) live[i] = window_[i].load(std::memory_order_relaxed);
  Drift d;
  d.window = live.size();
  if (live.empty() || calibration_.empty()) return d;
  std::sort(live.begin(), live.end());
  // Walk both sorted samples; D = max |F_live(x) - F_calib(x)|.
  size_t i = 0, j = 0;
  const double n = static_cast<double>(live.size()), m = static_cast<double>(calibration_.size());
  while (i < live.size() && j < calibration_.size()) {
    const float x = std::min(live[i], calibration_[j]);
    while (i < live.size() && live[i] <= x) ++i;
    while (j < calibration_.size() && calibration_[j] <= x) ++j;
    d.ks = std::max(d.ks, std::abs(static_cast<double>(i) / n - static_cast<double>(j) / m));
  }
  return d;
}

double ModelStats::AnomalyRate() {
  const auto now = std::chrono::steady_clock::now();
  const uint64_t samples = samples_.load(), anomalies = anomalies_.load();
  absl::MutexLock lock(&mu_);
  snapshots_.emplace_back(now, samples, anomalies);
  // Keep the newest snapshot at least 60 s old as the baseline, and everything after it.
  while (snapshots_.size() > 2 && std::get<0>(snapshots_[1]) <= now - std::chrono::seconds(60)) {
    snapshots_.pop_front();
  }
  // With one snapshot only, the baseline is the start (all that was scored so far).
  uint64_t s0 = 0, a0 = 0;
  if (snapshots_.size() > 1) std::tie(std::ignore, s0, a0) = snapshots_.front();
  return samples > s0 ? static_cast<double>(anomalies - a0) / static_cast<double>(samples - s0)
                      : NAN;
}

}  // namespace aeserve::server
