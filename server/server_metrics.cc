// What aeserve measures.
#include "server/server_metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"

namespace aeserve::server {
namespace {

using metrics::BuildCounter;
using metrics::BuildGauge;
using metrics::BuildHistogram;
using metrics::Histogram;

const Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* b =
      new Histogram::BucketBoundaries(Histogram::ExponentialBuckets(25e-6, 2, 18));
  return *b;  // 25 us .. 3.3 s
}
const Histogram::BucketBoundaries& ErrorBuckets() {
  static const auto* b =
      new Histogram::BucketBoundaries(Histogram::ExponentialBuckets(1e-4, 2, 28));
  return *b;  // 1e-4 .. 13400
}

}  // namespace

ModelMetrics::ModelMetrics(ServerMetrics& m, const std::string& model, const std::string& version)
    : m_(m),
      model_(model),
      version_(version),
      samples_(m.samples_.Add({{"model", model}, {"version", version}})),
      warnings_(
          m.anomalies_.Add({{"model", model}, {"version", version}, {"severity", "warning"}})),
      criticals_(
          m.anomalies_.Add({{"model", model}, {"version", version}, {"severity", "critical"}})),
      errors_(m.errors_.Add({{"model", model}, {"version", version}}, ErrorBuckets())),
      missing_values_(m.missing_values_.Add({{"model", model}, {"version", version}})),
      skipped_(m.skipped_.Add({{"model", model}, {"version", version}})) {}

ModelMetrics::~ModelMetrics() { m_.Release(model_, version_); }

void ModelMetrics::Record(absl::Span<const float> errors, absl::Span<const float> scores,
                          absl::Span<const uint8_t> anomalous, double critical) {
  uint64_t warn = 0, crit = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!anomalous[i]) continue;
    if (critical > 0 && scores[i] > critical)
      ++crit;
    else
      ++warn;
  }
  samples_.Increment(static_cast<double>(errors.size()));
  if (warn) warnings_.Increment(static_cast<double>(warn));
  if (crit) criticals_.Increment(static_cast<double>(crit));
  errors_.ObserveMany(errors);
}

void ModelMetrics::RecordGaps(uint64_t missing_values, uint64_t skipped) {
  if (missing_values) missing_values_.Increment(static_cast<double>(missing_values));
  if (skipped) skipped_.Increment(static_cast<double>(skipped));
}

ServerMetrics::ServerMetrics()
    : requests_(BuildCounter()
                    .Name("aeserve_requests_total")
                    .Help("gRPC calls finished, by method and status code.")
                    .Register(registry_)),
      request_seconds_(
          BuildHistogram()
              .Name("aeserve_request_duration_seconds")
              .Help("Time from receiving a unary call to its status; for StreamScore, from "
                    "reading a batch to its answer being ready.")
              .Register(registry_)),
      queue_seconds_(BuildHistogram()
                         .Name("aeserve_queue_duration_seconds")
                         .Help("Time a call or stream batch waited for a scoring worker.")
                         .Register(registry_)),
      compute_seconds_(BuildHistogram()
                           .Name("aeserve_compute_duration_seconds")
                           .Help("Time a scoring worker spent on a call or stream batch.")
                           .Register(registry_)),
      samples_(BuildCounter()
                   .Name("aeserve_samples_scored_total")
                   .Help("Samples scored.")
                   .Register(registry_)),
      anomalies_(BuildCounter()
                     .Name("aeserve_anomalies_total")
                     .Help("Samples flagged anomalous, by severity (critical: above the critical "
                           "threshold; warning: above the threshold only).")
                     .Register(registry_)),
      errors_(BuildHistogram()
                  .Name("aeserve_reconstruction_error")
                  .Help("Reconstruction error (mean squared error over features, scaled units) "
                        "of scored samples.")
                  .Register(registry_)),
      missing_values_(BuildCounter()
                          .Name("aeserve_missing_values_total")
                          .Help("Missing feature values (NaN or absent named columns) in scored "
                                "samples, filled in by the model.")
                          .Register(registry_)),
      skipped_(BuildCounter()
                   .Name("aeserve_skipped_samples_total")
                   .Help("Samples not scored because they missed more features than the "
                         "model's max_missing_fraction allows.")
                   .Register(registry_)),
      rejected_(BuildCounter()
                    .Name("aeserve_rejected_requests_total")
                    .Help("Calls refused for capacity, by reason.")
                    .Register(registry_)),
      scored_here_(BuildCounter()
                       .Name("aeserve_scored_on_grpc_thread_total")
                       .Help("Score calls and stream batches scored on the gRPC thread that "
                             "received them (--inline_max_madds), not on a worker.")
                       .Register(registry_)),
      scored_here_unary_(scored_here_.Add({{"rpc", "Score"}})),
      scored_here_stream_(scored_here_.Add({{"rpc", "StreamScore"}})),
      dropped_events_(BuildCounter()
                          .Name("aeserve_anomaly_events_dropped_total")
                          .Help("Anomaly events dropped because a watcher's buffer was full.")
                          .Register(registry_)
                          .Add({})),
      model_loads_(BuildCounter()
                       .Name("aeserve_model_loads_total")
                       .Help("Model versions loaded, by result.")
                       .Register(registry_)),
      model_load_seconds_(BuildHistogram()
                              .Name("aeserve_model_load_duration_seconds")
                              .Help("Time to load a model version and build its inference plans.")
                              .Register(registry_)
                              .Add({}, LatencyBuckets())),
      unloads_(BuildCounter()
                   .Name("aeserve_model_unloads_total")
                   .Help("READY versions unloaded (kept in the store), by reason: memory (an "
                         "entity model, least recently used, over --model_memory_mb) or versions "
                         "(an inactive version beyond --keep_loaded_versions).")
                   .Register(registry_)),
      cold_loads_(BuildCounter()
                      .Name("aeserve_model_cold_loads_total")
                      .Help("Unloaded versions loaded again for a request, by result.")
                      .Register(registry_)),
      cold_load_seconds_(BuildHistogram()
                             .Name("aeserve_model_cold_load_duration_seconds")
                             .Help("Time a request waited for its unloaded version to load.")
                             .Register(registry_)
                             .Add({}, LatencyBuckets())),
      store_errors_(
          BuildCounter()
              .Name("aeserve_model_store_errors_total")
              .Help("Store entries found unusable (an ACTIVE file or a model file), by kind; "
                    "each is also logged and shown in GetModel's error.")
              .Register(registry_)),
      swaps_(BuildCounter()
                 .Name("aeserve_model_swaps_total")
                 .Help("Active-version changes.")
                 .Register(registry_)
                 .Add({})),
      training_epoch_(BuildGauge()
                          .Name("aeserve_training_epoch")
                          .Help("Epoch the latest training job of a model finished.")
                          .Register(registry_)),
      training_loss_(BuildGauge()
                         .Name("aeserve_training_loss")
                         .Help("Latest training and validation loss of a model's training job.")
                         .Register(registry_)),
      training_jobs_total_(BuildCounter()
                               .Name("aeserve_training_jobs_total")
                               .Help("Training jobs ended, by result.")
                               .Register(registry_)) {
  for (const char* rpc : {"Score", "StreamScore", "Encode", "Reconstruct", "Generate"}) AddRpc(rpc);
}

void ServerMetrics::AddRpc(const std::string& rpc) {
  auto& slot = rpcs_[rpc];
  if (slot == nullptr) slot = std::make_unique<RpcInstruments>();
}

ServerMetrics::RpcInstruments& ServerMetrics::Rpc(const std::string& rpc) {
  auto it = rpcs_.find(rpc);
  return *it->second;  // every RPC that reports is added before the server starts
}

// The series of `family` that `make()` adds, made on first use and kept in `slot`: after the
// first call only an atomic load (no labels are built on the hot path).
template <typename T, typename Make>
static T& Lazy(std::atomic<T*>& slot, Make make) {
  T* got = slot.load(std::memory_order_acquire);
  if (got == nullptr) {
    got = &make();  // Family::Add: the same series if two threads race here
    slot.store(got, std::memory_order_release);
  }
  return *got;
}

void ServerMetrics::RecordRequest(const std::string& rpc, grpc::StatusCode code, double seconds) {
  RpcInstruments& r = Rpc(rpc);
  const size_t c = std::min<size_t>(static_cast<size_t>(code), 16);
  Lazy(r.codes[c], [&]() -> metrics::Counter& {
    return requests_.Add(
        {{"rpc", rpc}, {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}});
  }).Increment();
  if (seconds >= 0) Latency(r.request, request_seconds_, rpc).Observe(seconds);
}

metrics::Histogram& ServerMetrics::Latency(std::atomic<metrics::Histogram*>& slot,
                                           metrics::Family<metrics::Histogram>& family,
                                           const std::string& rpc) {
  return Lazy(slot, [&]() -> metrics::Histogram& {
    return family.Add({{"rpc", rpc}}, LatencyBuckets());
  });
}

void ServerMetrics::RecordStreamBatch(double seconds) {
  Latency(Rpc("StreamScore").request, request_seconds_, "StreamScore").Observe(seconds);
}

void ServerMetrics::RecordQueueAndCompute(const std::string& rpc, double queue_s,
                                          double compute_s) {
  RpcInstruments& r = Rpc(rpc);
  Latency(r.queue, queue_seconds_, rpc).Observe(queue_s);
  Latency(r.compute, compute_seconds_, rpc).Observe(compute_s);
}

void ServerMetrics::RecordScoredHere(bool stream) {
  (stream ? scored_here_stream_ : scored_here_unary_).Increment();
}

void ServerMetrics::RecordRejected(const std::string& reason) {
  rejected_.Add({{"reason", reason}}).Increment();
}

void ServerMetrics::RecordDroppedEvents(uint64_t n) {
  dropped_events_.Increment(static_cast<double>(n));
}

void ServerMetrics::RecordModelLoad(bool ok, double seconds) {
  model_loads_.Add({{"result", ok ? "ok" : "error"}}).Increment();
  if (ok) model_load_seconds_.Observe(seconds);
}

void ServerMetrics::RecordUnload(const char* reason) {
  unloads_.Add({{"reason", reason}}).Increment();
}

void ServerMetrics::RecordColdLoad(bool ok, double seconds) {
  cold_loads_.Add({{"result", ok ? "ok" : "error"}}).Increment();
  if (ok) cold_load_seconds_.Observe(seconds);
}

void ServerMetrics::RecordStoreError(const std::string& kind) {
  store_errors_.Add({{"kind", kind}}).Increment();
}

void ServerMetrics::RecordSwap() { swaps_.Increment(); }

void ServerMetrics::RecordTrainingProgress(const std::string& model, uint32_t epoch,
                                           double train_loss, double validation_loss) {
  training_epoch_.Add({{"model", model}}).Set(epoch);
  training_loss_.Add({{"model", model}, {"split", "train"}}).Set(train_loss);
  training_loss_.Add({{"model", model}, {"split", "validation"}}).Set(validation_loss);
}

void ServerMetrics::ForgetTraining(const std::string& model) {
  training_epoch_.Remove({{"model", model}});
  training_loss_.Remove({{"model", model}, {"split", "train"}});
  training_loss_.Remove({{"model", model}, {"split", "validation"}});
}

void ServerMetrics::RecordTrainingResult(const std::string& result) {
  training_jobs_total_.Add({{"result", result}}).Increment();
}

std::shared_ptr<ModelMetrics> ServerMetrics::ForModel(const std::string& model,
                                                      const std::string& version) {
  absl::MutexLock lock(&mu_);
  std::weak_ptr<ModelMetrics>& slot = models_[{model, version}];
  std::shared_ptr<ModelMetrics> m = slot.lock();
  if (m == nullptr) {
    m = std::make_shared<ModelMetrics>(*this, model, version);
    slot = m;
  }
  return m;
}

void ServerMetrics::Release(const std::string& model, const std::string& version) {
  absl::MutexLock lock(&mu_);
  auto it = models_.find({model, version});
  if (it != models_.end() && !it->second.expired()) return;  // labels taken again meanwhile
  if (it != models_.end()) models_.erase(it);
  const metrics::Labels l = {{"model", model}, {"version", version}};
  samples_.Remove(l);
  errors_.Remove(l);
  missing_values_.Remove(l);
  skipped_.Remove(l);
  anomalies_.Remove({{"model", model}, {"version", version}, {"severity", "warning"}});
  anomalies_.Remove({{"model", model}, {"version", version}, {"severity", "critical"}});
}

std::vector<metrics::MetricFamily> CollectProcessMetrics() {
  std::vector<metrics::MetricFamily> out;
  auto gauge = [&](const char* name, const char* help, metrics::MetricType type, double v) {
    metrics::MetricFamily f;
    f.name = name;
    f.help = help;
    f.type = type;
    metrics::ClientMetric m;
    m.value = v;
    f.metric.push_back(m);
    out.push_back(std::move(f));
  };
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  std::ifstream stat("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // Fields after the command name, which is in parentheses and may hold spaces.
  std::istringstream fields(text.substr(text.rfind(')') + 2));
  std::vector<std::string> f{std::istream_iterator<std::string>(fields), {}};
  if (f.size() > 21) {
    const double utime = std::stod(f[11]), stime = std::stod(f[12]);
    const double start_ticks = std::stod(f[19]);
    gauge("process_cpu_seconds_total", "User and system CPU time in seconds.",
          metrics::MetricType::kCounter, (utime + stime) / tick);
    std::ifstream pstat("/proc/stat");
    std::string line;
    double btime = 0;
    while (std::getline(pstat, line)) {
      if (line.rfind("btime ", 0) == 0) btime = std::stod(line.substr(6));
    }
    gauge("process_start_time_seconds",
          "Start time of the process since the Unix epoch in seconds.", metrics::MetricType::kGauge,
          btime + start_ticks / tick);
    gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
          metrics::MetricType::kGauge, std::stod(f[21]) * sysconf(_SC_PAGESIZE));
  }
  std::error_code ec;
  double fds = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++fds;
  }
  gauge("process_open_fds", "Number of open file descriptors.", metrics::MetricType::kGauge, fds);
  return out;
}

}  // namespace aeserve::server
