// A small Prometheus client with prometheus-cpp's names and rules.
#include "server/metrics/metrics.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace aeserve::metrics {

ClientMetric Counter::Collect() const {
  ClientMetric m;
  m.value = Value();
  return m;
}

ClientMetric Gauge::Collect() const {
  ClientMetric m;
  m.value = Value();
  return m;
}

Histogram::Histogram(const BucketBoundaries& bounds)
    : bounds_(bounds), counts_(new std::atomic<uint64_t>[bounds.size() + 1]) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (!std::isfinite(bounds_[i]) || (i > 0 && !(bounds_[i] > bounds_[i - 1]))) {
      throw std::invalid_argument("histogram bounds must be finite and strictly increasing");
    }
  }
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i] = 0;
}

size_t Histogram::BucketOf(double v) const {
  // le semantics: the first bound >= v.
  return static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
}

void Histogram::Observe(double v) {
  counts_[BucketOf(v)].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

void Histogram::ObserveMany(absl::Span<const float> values) {
  if (values.empty()) return;
  // Bin locally (on the stack for the usual bucket counts), then one atomic add per bucket.
  uint64_t stack[64];
  std::vector<uint64_t> heap;
  uint64_t* local = stack;
  if (bounds_.size() + 1 > 64) {
    heap.assign(bounds_.size() + 1, 0);
    local = heap.data();
  } else {
    std::fill(stack, stack + bounds_.size() + 1, 0);
  }
  double sum = 0;
  for (float v : values) {
    ++local[BucketOf(v)];
    sum += v;
  }
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    if (local[i]) counts_[i].fetch_add(local[i], std::memory_order_relaxed);
  }
  sum_.fetch_add(sum, std::memory_order_relaxed);
}

ClientMetric Histogram::Collect() const {
  ClientMetric m;
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    m.bucket.push_back({i < bounds_.size() ? bounds_[i] : INFINITY, cumulative});
  }
  m.sample_count = cumulative;
  m.sample_sum = sum_.load(std::memory_order_relaxed);
  return m;
}

Histogram::BucketBoundaries Histogram::ExponentialBuckets(double start, double factor, int count) {
  BucketBoundaries b;
  for (int i = 0; i < count; ++i, start *= factor) b.push_back(start);
  return b;
}

template <typename T>
MetricFamily Family<T>::Collect() const {
  MetricFamily f;
  f.name = name_;
  f.help = help_;
  if constexpr (std::is_same_v<T, Counter>) f.type = MetricType::kCounter;
  if constexpr (std::is_same_v<T, Gauge>) f.type = MetricType::kGauge;
  if constexpr (std::is_same_v<T, Histogram>) f.type = MetricType::kHistogram;
  absl::MutexLock lock(&mu_);
  for (const auto& [labels, child] : children_) {
    ClientMetric m = child->Collect();
    m.label = constant_;
    m.label.insert(m.label.end(), labels.begin(), labels.end());
    f.metric.push_back(std::move(m));
  }
  return f;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

std::vector<MetricFamily> Registry::Collect() const {
  std::vector<Collector> collectors;
  {
    absl::MutexLock lock(&mu_);
    collectors = families_;
  }
  std::vector<MetricFamily> out;
  for (const auto& c : collectors) {
    for (auto& f : c()) out.push_back(std::move(f));
  }
  return out;
}

bool IsValidMetricName(const std::string& name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
                    (i > 0 && std::isdigit(static_cast<unsigned char>(c)));
    if (!ok) return false;
  }
  return true;
}

bool IsValidLabelName(const std::string& name) {
  if (name.empty() || name.rfind("__", 0) == 0) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = std::isalpha(static_cast<unsigned char>(c)) || c == '_' ||
                    (i > 0 && std::isdigit(static_cast<unsigned char>(c)));
    if (!ok) return false;
  }
  return true;
}

}  // namespace aeserve::metrics
