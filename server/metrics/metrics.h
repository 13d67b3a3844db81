// A small Prometheus client with prometheus-cpp's names and rules: Registry, Family<T>,
// BuildCounter()/BuildGauge()/BuildHistogram() builders, Counter, Gauge, Histogram, Collect().
// Observations are lock-free (atomics); Family::Add takes a lock and is meant to be called once,
// keeping the returned reference, never per observation.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "server/metrics/metric_family.h"

namespace aeserve::metrics {

class Counter {
 public:
  // Negative increments are ignored: a counter only goes up.
  void Increment(double v = 1.0) {
    if (v > 0) value_.fetch_add(v, std::memory_order_relaxed);
  }
  double Value() const { return value_.load(std::memory_order_relaxed); }
  ClientMetric Collect() const;

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Increment(double v = 1.0) { value_.fetch_add(v, std::memory_order_relaxed); }
  void Decrement(double v = 1.0) { value_.fetch_sub(v, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }
  ClientMetric Collect() const;

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  using BucketBoundaries = std::vector<double>;
  // `bounds` must be strictly increasing and finite; +Inf is implicit. Invalid bounds throw
  // std::invalid_argument at construction (a programming error, as in prometheus-cpp).
  explicit Histogram(const BucketBoundaries& bounds);
  void Observe(double v);
  // Many observations with one atomic add per bucket, for the scoring hot path.
  void ObserveMany(absl::Span<const float> values);
  ClientMetric Collect() const;

  // `count` bounds: start, start*factor, ...
  static BucketBoundaries ExponentialBuckets(double start, double factor, int count);

 private:
  size_t BucketOf(double v) const;
  const BucketBoundaries bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1 (the +Inf bucket)
  std::atomic<double> sum_{0};
};

// A named metric with one child per label set.
template <typename T>
class Family {
 public:
  Family(std::string name, std::string help, Labels constant_labels)
      : name_(std::move(name)), help_(std::move(help)), constant_(std::move(constant_labels)) {}

  // The child for `labels`, created on first use with `args` (e.g. histogram bounds).
  template <typename... Args>
  T& Add(const Labels& labels, Args&&... args) {
    absl::MutexLock lock(&mu_);
    auto it = children_.find(labels);
    if (it == children_.end()) {
      it = children_.emplace(labels, std::make_unique<T>(std::forward<Args>(args)...)).first;
    }
    return *it->second;
  }
  void Remove(const Labels& labels) {
    absl::MutexLock lock(&mu_);
    children_.erase(labels);
  }
  MetricFamily Collect() const;
  const std::string& name() const { return name_; }

 private:
  const std::string name_, help_;
  const Labels constant_;
  mutable absl::Mutex mu_;
  std::map<Labels, std::unique_ptr<T>> children_ ABSL_GUARDED_BY(mu_);
};

class Registry {
 public:
  using Collector = std::function<std::vector<MetricFamily>()>;

  template <typename T>
  Family<T>& Add(const std::string& name, const std::string& help, const Labels& constant) {
    auto family = std::make_shared<Family<T>>(name, help, constant);
    Family<T>& ref = *family;
    absl::MutexLock lock(&mu_);
    families_.push_back(
        [f = std::move(family)] { return std::vector<MetricFamily>{f->Collect()}; });
    return ref;
  }
  // Metrics computed at scrape time (process state, queue depths, drift).
  void AddCollector(Collector c) {
    absl::MutexLock lock(&mu_);
    families_.push_back(std::move(c));
  }
  std::vector<MetricFamily> Collect() const;

 private:
  mutable absl::Mutex mu_;
  std::vector<Collector> families_ ABSL_GUARDED_BY(mu_);
};

// BuildCounter().Name("x_total").Help("...").Register(registry), as in prometheus-cpp.
template <typename T>
class Builder {
 public:
  Builder& Name(const std::string& n) {
    name_ = n;
    return *this;
  }
  Builder& Help(const std::string& h) {
    help_ = h;
    return *this;
  }
  Builder& Labels(const metrics::Labels& l) {
    labels_ = l;
    return *this;
  }
  Family<T>& Register(Registry& registry) { return registry.Add<T>(name_, help_, labels_); }

 private:
  std::string name_, help_;
  metrics::Labels labels_;
};
inline Builder<Counter> BuildCounter() { return {}; }
inline Builder<Gauge> BuildGauge() { return {}; }
inline Builder<Histogram> BuildHistogram() { return {}; }

// Prometheus naming rules: metric names [a-zA-Z_:][a-zA-Z0-9_:]*, label names
// [a-zA-Z_][a-zA-Z0-9_]* not starting with "__".
bool IsValidMetricName(const std::string& name);
bool IsValidLabelName(const std::string& name);

}  // namespace aeserve::metrics
