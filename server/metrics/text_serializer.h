// Prometheus text exposition format 0.0.4, as prometheus-cpp's TextSerializer writes it.
#pragma once

#include <string>
#include <vector>

#include "server/metrics/metric_family.h"

namespace aeserve::metrics {

class TextSerializer {
 public:
  std::string Serialize(const std::vector<MetricFamily>& families) const;
};

// Label values escape backslash, double quote and newline; HELP text escapes backslash and
// newline. Numbers: NaN, +Inf, -Inf, otherwise the shortest text that reads back the same double.
std::string EscapeLabelValue(const std::string& v);
std::string FormatValue(double v);

}  // namespace aeserve::metrics
