// What a scrape collects: metric families with their samples, independent of how they are kept.
// Shaped like prometheus-cpp's client_metric.h / metric_family.h.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace aeserve::metrics {

enum class MetricType { kCounter, kGauge, kHistogram, kUntyped };

using Labels = std::vector<std::pair<std::string, std::string>>;

struct ClientMetric {
  Labels label;
  double value = 0;  // counter, gauge, untyped
  // Histogram: cumulative counts per upper bound (the last bound is +Inf), sum and count.
  struct Bucket {
    double upper_bound;
    uint64_t cumulative_count;
  };
  std::vector<Bucket> bucket;
  uint64_t sample_count = 0;
  double sample_sum = 0;
};

struct MetricFamily {
  std::string name;
  std::string help;
  MetricType type = MetricType::kUntyped;
  std::vector<ClientMetric> metric;
};

}  // namespace aeserve::metrics
