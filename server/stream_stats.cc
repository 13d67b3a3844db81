// A stream's periodic summary.
#include "server/stream_stats.h"

#include <algorithm>
#include <cmath>

namespace aeserve::server {

void StreamStats::Add(const v1::ScoreResponse& r) {
  ++batches_;
  samples_ += r.num_samples();
  anomalies_ += r.num_anomalies();
  total_samples_ += r.num_samples();
  total_anomalies_ += r.num_anomalies();
  for (float e : r.errors()) {
    if (std::isfinite(e) && errors_.size() < kMaxKept) errors_.push_back(e);
  }
}

std::optional<v1::StreamStats> StreamStats::Take(const v1::StreamConfig& config,
                                                 Clock::time_point now) {
  const double elapsed = std::chrono::duration<double>(now - window_start_).count();
  const bool by_count =
      config.stats_every_batches() > 0 && batches_ >= config.stats_every_batches();
  const bool by_time = config.stats_every_seconds() > 0 && elapsed >= config.stats_every_seconds();
  if (!by_count && !by_time) return std::nullopt;
  v1::StreamStats st;
  st.set_batches(batches_);
  st.set_samples(samples_);
  st.set_anomalies(anomalies_);
  st.set_anomaly_rate(samples_ ? static_cast<double>(anomalies_) / static_cast<double>(samples_)
                               : 0);
  double mean = 0;
  for (float e : errors_) mean += e;
  if (!errors_.empty()) mean /= static_cast<double>(errors_.size());
  st.set_error_mean(mean);
  auto quantile = [&](double p) -> double {
    if (errors_.empty()) return 0;
    const size_t i =
        std::min(errors_.size() - 1, static_cast<size_t>(p * static_cast<double>(errors_.size())));
    std::nth_element(errors_.begin(), errors_.begin() + static_cast<std::ptrdiff_t>(i),
                     errors_.end());
    return errors_[i];
  };
  st.set_error_p50(quantile(0.5));
  st.set_error_p90(quantile(0.9));
  st.set_error_p99(quantile(0.99));
  st.set_window_seconds(elapsed);
  st.set_total_samples(total_samples_);
  st.set_total_anomalies(total_anomalies_);
  batches_ = samples_ = anomalies_ = 0;
  errors_.clear();
  window_start_ = now;
  return st;
}

}  // namespace aeserve::server
