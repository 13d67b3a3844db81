// Prometheus text exposition format 0.0.4.
#include "server/metrics/text_serializer.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace aeserve::metrics {

std::string EscapeLabelValue(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

namespace {

std::string EscapeHelp(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

void WriteLabels(std::string& out, const Labels& labels, const char* extra_name = nullptr,
                 const std::string& extra_value = "") {
  if (labels.empty() && extra_name == nullptr) return;
  out += '{';
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ',';
    first = false;
    out += k + "=\"" + EscapeLabelValue(v) + "\"";
  }
  if (extra_name != nullptr) {
    if (!first) out += ',';
    out += std::string(extra_name) + "=\"" + extra_value + "\"";
  }
  out += '}';
}

}  // namespace

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[32];
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string TextSerializer::Serialize(const std::vector<MetricFamily>& families) const {
  std::string out;
  for (const MetricFamily& f : families) {
    if (f.metric.empty()) continue;
    out += "# HELP " + f.name + " " + EscapeHelp(f.help) + "\n";
    const char* type = f.type == MetricType::kCounter     ? "counter"
                       : f.type == MetricType::kGauge     ? "gauge"
                       : f.type == MetricType::kHistogram ? "histogram"
                                                          : "untyped";
    out += "# TYPE " + f.name + " " + type + "\n";
    for (const ClientMetric& m : f.metric) {
      if (f.type == MetricType::kHistogram) {
        for (const auto& b : m.bucket) {
          out += f.name + "_bucket";
          WriteLabels(out, m.label, "le", FormatValue(b.upper_bound));
          out += " " + FormatValue(static_cast<double>(b.cumulative_count)) + "\n";
        }
        out += f.name + "_sum";
        WriteLabels(out, m.label);
        out += " " + FormatValue(m.sample_sum) + "\n";
        out += f.name + "_count";
        WriteLabels(out, m.label);
        out += " " + FormatValue(static_cast<double>(m.sample_count)) + "\n";
      } else {
        out += f.name;
        WriteLabels(out, m.label);
        out += " " + FormatValue(m.value) + "\n";
      }
    }
  }
  return out;
}

}  // namespace aeserve::metrics
