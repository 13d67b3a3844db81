// A stream's periodic summary (StreamConfig.stats_every_batches / stats_every_seconds): samples,
// anomalies and error quantiles since the last one, and totals since the stream began. No gRPC:
// the stream reactor feeds it each answer and sends what it returns.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

#include "aeserve/v1/scoring.pb.h"

namespace aeserve::server {

class StreamStats {
 public:
  using Clock = std::chrono::steady_clock;
  // Errors kept per summary window for the quantiles (beyond it, counts go on, quantiles use the
  // first kMaxKept errors).
  static constexpr size_t kMaxKept = size_t{1} << 20;

  explicit StreamStats(Clock::time_point start = Clock::now()) : window_start_(start) {}

  // One answered batch (skipped and warming-up samples have a NaN error and stay out of the
  // quantiles).
  void Add(const v1::ScoreResponse& r);
  // The summary when `config` asks for one at `now` (enough batches or seconds since the last),
  // which starts the next window; nullopt otherwise. Quantiles are order statistics: the error at
  // index floor(p * n) of the window's sorted errors (p50, p90, p99), 0 with no errors.
  std::optional<v1::StreamStats> Take(const v1::StreamConfig& config,
                                      Clock::time_point now = Clock::now());

 private:
  uint64_t batches_ = 0, samples_ = 0, anomalies_ = 0;
  uint64_t total_samples_ = 0, total_anomalies_ = 0;
  std::vector<float> errors_;
  Clock::time_point window_start_;
};

}  // namespace aeserve::server
