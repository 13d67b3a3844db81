// What aeserve measures, on one injected metrics::Registry (no singletons). Names follow
// Prometheus conventions: aeserve_ prefix, base units, _total counters; labels are bounded
// (rpc, code, model, version, severity, reason) — never per request, stream or entity.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "grpcpp/support/status.h"
#include "server/metrics/metrics.h"

namespace aeserve::server {

class ServerMetrics;

// One model version's hot-path instruments. Per-entity models of a model share one, with
// version="entity". Its series leave /metrics when the last holder drops it (the registry when the
// version is deleted, and every request still scoring with it), never while a batch may record.
// (Drift and the anomaly rate are ModelStats: they work with metrics off.)
class ModelMetrics {
 public:
  ModelMetrics(ServerMetrics& m, const std::string& model, const std::string& version);
  ~ModelMetrics();
  ModelMetrics(const ModelMetrics&) = delete;
  ModelMetrics& operator=(const ModelMetrics&) = delete;
  // One scored batch: reconstruction errors (the histogram) and anomaly scores (severity against
  // `critical`, the critical threshold, 0 = none).
  void Record(absl::Span<const float> errors, absl::Span<const float> scores,
              absl::Span<const uint8_t> anomalous, double critical);
  // Gaps in one scored batch: missing values filled in, samples skipped.
  void RecordGaps(uint64_t missing_values, uint64_t skipped);

  const std::string& model() const { return model_; }
  const std::string& version() const { return version_; }

 private:
  ServerMetrics& m_;
  const std::string model_, version_;
  metrics::Counter& samples_;
  metrics::Counter& warnings_;
  metrics::Counter& criticals_;
  metrics::Histogram& errors_;
  metrics::Counter& missing_values_;
  metrics::Counter& skipped_;
};

class ServerMetrics {
 public:
  ServerMetrics();

  metrics::Registry& registry() { return registry_; }

  // Before the server starts (RpcMetricsFactory): one RPC that reports. Read-only afterwards.
  void AddRpc(const std::string& rpc);
  // A call ended with `code`; `seconds` from its arrival (< 0: a stream, no duration).
  void RecordRequest(const std::string& rpc, grpc::StatusCode code, double seconds);
  // A scoring call's or stream batch's wait for a worker and time on it.
  void RecordQueueAndCompute(const std::string& rpc, double queue_seconds, double compute_seconds);
  // One StreamScore batch answered, `seconds` after it was read.
  void RecordStreamBatch(double seconds);
  void RecordRejected(const std::string& reason);
  // A Score call (`stream` false) or stream batch scored on the gRPC thread that received it
  // (--inline_max_madds) instead of a worker.
  void RecordScoredHere(bool stream);
  void RecordDroppedEvents(uint64_t n);
  void RecordModelLoad(bool ok, double seconds);
  void RecordUnload(const char* reason);
  void RecordColdLoad(bool ok, double seconds);
  // A store entry that could not be used: kind "active" (ACTIVE file) or "model_file".
  void RecordStoreError(const std::string& kind);
  void RecordSwap();
  void RecordTrainingProgress(const std::string& model, uint32_t epoch, double train_loss,
                              double validation_loss);
  void RecordTrainingResult(const std::string& result);
  // A deleted model: its training gauges leave /metrics.
  void ForgetTraining(const std::string& model);

  // The instruments of one model version (shared by every caller asking for the same labels
  // while any holds them).
  std::shared_ptr<ModelMetrics> ForModel(const std::string& model, const std::string& version);

 private:
  friend class ModelMetrics;
  // Instruments of one RPC, looked up without allocating on every call.
  // The histograms and counters appear on first use, so an RPC never called adds no series.
  struct RpcInstruments {
    std::atomic<metrics::Histogram*> request{nullptr};
    std::atomic<metrics::Histogram*> queue{nullptr};
    std::atomic<metrics::Histogram*> compute{nullptr};
    std::array<std::atomic<metrics::Counter*>, 17> codes{};
  };
  RpcInstruments& Rpc(const std::string& rpc);
  // `rpc`'s histogram of `family` in `slot`, added on first use.
  static metrics::Histogram& Latency(std::atomic<metrics::Histogram*>& slot,
                                     metrics::Family<metrics::Histogram>& family,
                                     const std::string& rpc);
  // From ~ModelMetrics: removes the version's series unless a new holder took its labels since.
  void Release(const std::string& model, const std::string& version);

  metrics::Registry registry_;
  metrics::Family<metrics::Counter>& requests_;
  metrics::Family<metrics::Histogram>& request_seconds_;
  metrics::Family<metrics::Histogram>& queue_seconds_;
  metrics::Family<metrics::Histogram>& compute_seconds_;
  metrics::Family<metrics::Counter>& samples_;
  metrics::Family<metrics::Counter>& anomalies_;
  metrics::Family<metrics::Histogram>& errors_;
  metrics::Family<metrics::Counter>& missing_values_;
  metrics::Family<metrics::Counter>& skipped_;
  metrics::Family<metrics::Counter>& rejected_;
  metrics::Family<metrics::Counter>& scored_here_;
  metrics::Counter& scored_here_unary_;
  metrics::Counter& scored_here_stream_;
  metrics::Counter& dropped_events_;
  metrics::Family<metrics::Counter>& model_loads_;
  metrics::Histogram& model_load_seconds_;
  metrics::Family<metrics::Counter>& unloads_;
  metrics::Family<metrics::Counter>& cold_loads_;
  metrics::Histogram& cold_load_seconds_;
  metrics::Family<metrics::Counter>& store_errors_;
  metrics::Counter& swaps_;
  metrics::Family<metrics::Gauge>& training_epoch_;
  metrics::Family<metrics::Gauge>& training_loss_;
  metrics::Family<metrics::Counter>& training_jobs_total_;
  // Filled by AddRpc before the server starts, read-only afterwards.
  std::map<std::string, std::unique_ptr<RpcInstruments>, std::less<>> rpcs_;
  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, std::string>, std::weak_ptr<ModelMetrics>> models_
      ABSL_GUARDED_BY(mu_);
};

// Process metrics read from /proc: resident memory, CPU seconds, open fds, start time.
std::vector<metrics::MetricFamily> CollectProcessMetrics();

}  // namespace aeserve::server
