// The aeserve server: gRPC services, registry, executor, graceful shutdown.
#include "server/server.h"

#include <chrono>
#include <cmath>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/csv.h"
#include "engine/spec.h"
#include "engine/trainer.h"
#include "grpc/grpc.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/server_builder.h"
#include "server/calls_in_flight.h"
#include "server/remote_write.h"
#include "server/rpc_metrics.h"
#include "server/store_sync.h"
#include "server/tls_files.h"

namespace aeserve::server {
namespace {

uint64_t GrpcBufferBytes(const Options& o) {
  return o.grpc_buffer_bytes > 0
             ? o.grpc_buffer_bytes
             : static_cast<uint64_t>(o.max_message_bytes) + (uint64_t{16} << 20);
}

// Removes the reflection plugin, which linking gRPC's reflection library registers for every
// server in the process.
class NoReflection : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(
        std::remove_if(plugins->begin(), plugins->end(),
                       [](const auto& p) { return p->name() == "proto_server_reflection"; }),
        plugins->end());
  }
};

}  // namespace

Server::Server(const Options& options, std::shared_ptr<spdlog::logger> log)
    : options_(options),
      log_(std::move(log)),
      streams_(options.max_stream_buffer_bytes,
               std::chrono::duration<double>(options.incident_resume_seconds)) {}

Server::~Server() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const Options& options,
                                                      std::shared_ptr<spdlog::logger> log) {
  std::unique_ptr<Server> s(new Server(options, std::move(log)));
  Options& o = s->options_;
  if (o.threads <= 0)
    o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (!o.auth_tokens.empty()) {
    auto auth = Authorizer::FromFile(o.auth_tokens);
    if (!auth.ok()) return auth.status();
    s->auth_ = *std::move(auth);
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!o.tls_cert.empty() || !o.tls_key.empty()) {
    // ReadTlsFiles refuses one without the other, unreadable files and a mismatched key.
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    auto tls = ReadTlsFiles(o);
    if (!tls.ok()) return tls.status();
    pair.cert_chain = tls->cert;
    pair.private_key = tls->key;
    ssl.pem_key_cert_pairs.push_back(pair);
    if (!o.tls_client_ca.empty()) {
      ssl.pem_root_certs = tls->client_ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(ssl);
  } else if (!o.tls_client_ca.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  if (o.precision != "f32" && o.precision != "bf16") {
    return absl::InvalidArgumentError(
        absl::StrCat("--precision is f32 or bf16, not '", o.precision, "'"));
  }
  if (o.precision == "bf16" && !engine::Model::Bf16Supported()) {
    s->log_->warn("--precision=bf16: this CPU has no AVX-512; models score in f32");
  }
  if (o.metrics_port != 0) s->metrics_ = std::make_unique<ServerMetrics>();
  s->trimmer_ = std::make_unique<MemoryTrimmer>(o.memory_trim_seconds);
  s->feed_ = std::make_unique<AnomalyFeed>(s->metrics_.get(), std::max(1, o.max_watchers));
  s->registry_ = std::make_unique<ModelRegistry>(
      ModelStore(o.model_dir),
      engine::ModelOptions{.threads = std::max(1, o.model_threads),
                           .max_batch = 4096,
                           .contexts = static_cast<size_t>(std::max(1, o.threads)),
                           .bf16 = o.precision == "bf16"},
      s->metrics_.get(), s->log_,
      Residence{o.model_memory_mb << 20, std::max(-1, o.keep_loaded_versions)});
  s->audit_ = std::make_unique<AuditLog>(o.model_dir);
  s->executor_ = std::make_unique<Executor>(o.threads, o.max_queue);
  s->admin_executor_ = std::make_unique<Executor>(1, 64);
  s->upload_budget_ = std::make_unique<ByteBudget>(o.max_upload_bytes);
  s->jobs_ = std::make_unique<TrainingJobs>(
      s->registry_.get(), std::max(1, o.max_training_jobs), std::max(1, o.max_queued_jobs), s->log_,
      s->metrics_.get(), o.max_finished_jobs, s->audit_.get());
  s->autopilot_ =
      std::make_unique<Autopilot>(s->registry_.get(), s->jobs_.get(), s->audit_.get(), s->log_,
                                  o.autopilot_tick_seconds, o.max_training_values);
  s->jobs_->SetRetainHook([a = s->autopilot_.get()](const v1::TrainingJobHeader& h,
                                                    const std::vector<float>& values,
                                                    const std::vector<int64_t>& timestamps) {
    return a->RetainUpload(h, values, timestamps);
  });
  {
    Ingest::Config ic;
    ic.limits.max_entities = std::max<uint32_t>(1, o.ingest_max_entities);
    ic.max_batch_rows = o.max_batch_rows;
    ic.max_queue = o.max_queue;
    ic.max_training_values = o.max_training_values;
    s->ingest_ = std::make_unique<Ingest>(
        s->registry_.get(), s->executor_.get(), s->feed_.get(), s->autopilot_.get(), s->jobs_.get(),
        s->metrics_ ? &s->metrics_->registry() : nullptr, ic, s->log_);
  }
  s->scoring_ = std::make_unique<ScoringService>(
      s->options_, s->registry_.get(), s->executor_.get(), &s->streams_, &s->auth_,
      s->metrics_.get(), s->feed_.get(), s->autopilot_.get(), s->jobs_.get(), s->ingest_.get());
  s->uploads_ = std::make_unique<Uploads>(s->options_, s->jobs_.get(), s->upload_budget_.get(),
                                          s->autopilot_.get());
  s->admin_ = std::make_unique<AdminService>(
      s->options_, s->registry_.get(), s->jobs_.get(), s->uploads_.get(), s->admin_executor_.get(),
      &s->auth_, s->audit_.get(), s->autopilot_.get(), s->ingest_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!o.reflection) builder.SetOption(std::make_unique<NoReflection>());
  // Without this a second server on the same port would bind it too (SO_REUSEPORT) and the two
  // would answer alternately; with it the second one fails with "address already in use".
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(absl::StrCat(o.host, ":", o.port), creds, &s->port_);
  builder.SetMaxReceiveMessageSize(o.max_message_bytes);
  // gRPC 1.51 reads a whole message before comparing it with the limit above, so one huge
  // message (even without a token) would be buffered in full. The resource quota bounds what the
  // transport buffers across all calls: past it, the stream is reset (RESOURCE_EXHAUSTED).
  grpc::ResourceQuota quota("aeserve");
  quota.Resize(static_cast<size_t>(GrpcBufferBytes(o)));
  builder.SetResourceQuota(quota);
  builder.SetMaxSendMessageSize(o.max_message_bytes);
  {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> hooks;
    auto calls = std::make_unique<CallsInFlight>();
    s->calls_ = calls.get();
    hooks.push_back(std::move(calls));
    // Every call of the two services is counted with the status it ends with (rpc_metrics.h).
    if (s->metrics_) hooks.push_back(std::make_unique<RpcMetricsFactory>(s->metrics_.get()));
    builder.experimental().SetInterceptorCreators(std::move(hooks));
  }
  builder.RegisterService(s->scoring_.get());
  builder.RegisterService(s->admin_.get());
  s->otlp_ = std::make_unique<OtlpService>(s->ingest_.get(), &s->auth_);
  builder.RegisterService(s->otlp_.get());
  s->grpc_ = builder.BuildAndStart();
  if (!s->grpc_ || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", o.host, ":", o.port,
        " (is another server using the port? is the host an address of this machine?)"));
  }
  s->grpc_->GetHealthCheckService()->SetServingStatus(false);
  // Without --metrics_host the gRPC host is the metrics host.
  const std::string& mhost = o.metrics_host.empty() ? o.host : o.metrics_host;
  if (s->metrics_) {
    s->AddCollectors();
    // -1 asks for a free port (tests).
    auto exposer =
        metrics::Exposer::Start(mhost, std::max(0, o.metrics_port), &s->metrics_->registry());
    if (!exposer.ok()) return exposer.status();
    s->exposer_ = *std::move(exposer);
    s->log_->info("metrics on http://{}:{}/metrics", mhost, s->exposer_->port());
  }
  {
    // Decoded bodies of requests being read at once, and their decoded views (up to 16 bytes per
    // byte of body): what remote write holds in memory.
    s->ingest_budget_ =
        std::make_unique<ByteBudget>(std::max<uint64_t>(64u << 20, 4 * o.ingest_max_body_bytes));
    const RemoteWriteLimits limits{.max_body_bytes = o.ingest_max_body_bytes,
                                   .max_decoded_bytes = 4 * o.ingest_max_body_bytes,
                                   .in_flight = s->ingest_budget_.get()};
    metrics::Exposer::Handler write = [ingest = s->ingest_.get(), auth = &s->auth_,
                                       limits](const metrics::HttpRequest& r) {
      return HandleRemoteWrite(r, *ingest, *auth, limits);
    };
    // With TLS the ingest port serves HTTPS with the same certificate (and client CA); the metrics
    // port stays HTTP, so it does not take remote writes (tokens and telemetry in clear).
    const bool tls = !o.tls_cert.empty();
    if (o.ingest_port != 0) {
      const metrics::ExposerTls files{o.tls_cert, o.tls_key, o.tls_client_ca};
      auto exposer = metrics::Exposer::Start(o.host, std::max(0, o.ingest_port), nullptr,
                                             tls ? &files : nullptr);
      if (!exposer.ok()) return exposer.status();
      s->ingest_exposer_ = *std::move(exposer);
      s->ingest_exposer_->Route("/api/v1/write", std::move(write));
      s->log_->info("remote write on {}://{}:{}/api/v1/write", tls ? "https" : "http", o.host,
                    s->ingest_exposer_->port());
    } else if (tls) {
      s->log_->warn(
          "remote write is off: with TLS it is served on its own HTTPS port (--ingest_port), not "
          "on the plain-HTTP metrics port");
    } else if (s->exposer_) {
      s->exposer_->Route("/api/v1/write", std::move(write));
      s->log_->info("remote write on http://{}:{}/api/v1/write", mhost, s->exposer_->port());
    }
  }
  s->log_->info("listening on {}:{} ({}{}; health NOT_SERVING until models are loaded)", o.host,
                s->port_,
                o.tls_cert.empty() ? "plaintext" : (o.tls_client_ca.empty() ? "TLS" : "mutual TLS"),
                s->auth_.enabled() ? ", bearer tokens required" : "");
  return s;
}

// Gauges computed at scrape time from the server's state.
void Server::AddCollectors() {
  using metrics::ClientMetric;
  using metrics::MetricFamily;
  using metrics::MetricType;
  auto family = [](const char* name, const char* help, MetricType type) {
    MetricFamily f;
    f.name = name;
    f.help = help;
    f.type = type;
    return f;
  };
  auto sample = [](MetricFamily& f, metrics::Labels labels, double v) {
    ClientMetric m;
    m.label = std::move(labels);
    m.value = v;
    f.metric.push_back(std::move(m));
  };
  metrics::Registry& r = metrics_->registry();
  r.AddCollector([this, family, sample] {
    MetricFamily streams =
        family("aeserve_open_streams", "Open StreamScore calls.", MetricType::kGauge);
    sample(streams, {}, static_cast<double>(streams_.size()));
    MetricFamily stream_bytes = family("aeserve_stream_buffer_bytes",
                                       "Bytes held by all streams (batches read ahead, answers not "
                                       "yet sent), bounded by --max_stream_buffer_bytes.",
                                       MetricType::kGauge);
    sample(stream_bytes, {}, static_cast<double>(streams_.budget().used()));
    MetricFamily queue =
        family("aeserve_executor_queue_depth",
               "Calls and stream batches waiting for a scoring worker.", MetricType::kGauge);
    sample(queue, {}, static_cast<double>(executor_->queue_depth()));
    MetricFamily jobs =
        family("aeserve_training_jobs", "Training jobs by state.", MetricType::kGauge);
    const auto counts = jobs_->CountByState();
    for (v1::JobState st : {v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED,
                            v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED}) {
      std::string name = v1::JobState_Name(st).substr(10);
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      auto it = counts.find(st);
      sample(jobs, {{"state", name}}, it == counts.end() ? 0 : it->second);
    }
    MetricFamily watchers =
        family("aeserve_anomaly_watchers", "Open WatchAnomalies calls (bounded by --max_watchers).",
               MetricType::kGauge);
    sample(watchers, {}, static_cast<double>(feed_->watchers()));
    MetricFamily stalled = family("aeserve_anomaly_watchers_stalled",
                                  "WatchAnomalies calls whose client is not reading: their buffer "
                                  "is full and they drop one event per new event.",
                                  MetricType::kGauge);
    sample(stalled, {}, static_cast<double>(feed_->stalled()));
    MetricFamily upload = family("aeserve_training_data_bytes",
                                 "Training data held in memory by uploads in progress and queued "
                                 "or running jobs (bounded by --max_upload_bytes).",
                                 MetricType::kGauge);
    sample(upload, {}, static_cast<double>(upload_budget_->used()));
    return std::vector<MetricFamily>{streams, stream_bytes, queue, jobs, watchers, stalled, upload};
  });
  // The autopilot, per generic model with a retrain policy (entity models are not labels).
  r.AddCollector([this, family, sample] {
    MetricFamily rows =
        family("aeserve_retained_rows", "Scored rows kept as the model's history (retrain policy).",
               MetricType::kGauge);
    MetricFamily bytes = family("aeserve_retained_bytes", "Bytes of retained-row segments on disk.",
                                MetricType::kGauge);
    MetricFamily dropped = family("aeserve_retained_dropped_rows_total",
                                  "Scored rows not kept: flagged (policy) or a full write queue.",
                                  MetricType::kCounter);
    MetricFamily retraining =
        family("aeserve_retrain_running", "1 while an autopilot retrain of the model runs.",
               MetricType::kGauge);
    MetricFamily shadow_running =
        family("aeserve_shadow_running", "1 while a candidate version scores in shadow.",
               MetricType::kGauge);
    MetricFamily shadow_samples =
        family("aeserve_shadow_samples", "Samples compared in the current (or last) shadow window.",
               MetricType::kGauge);
    MetricFamily shadow_dropped = family(
        "aeserve_shadow_dropped_samples",
        "Samples the shadow could not keep up with in the current (or last) window (not compared).",
        MetricType::kGauge);
    MetricFamily shadow_rate =
        family("aeserve_shadow_flag_rate",
               "Share of compared samples each version flagged (role active or candidate).",
               MetricType::kGauge);
    MetricFamily shadow_agree =
        family("aeserve_shadow_agreement",
               "Compared samples flagged by both versions, only the active one, or only the "
               "candidate.",
               MetricType::kGauge);
    MetricFamily shadow_ks =
        family("aeserve_shadow_drift_ks",
               "Each version's KS distance between its shadow-window scores and its own "
               "calibration.",
               MetricType::kGauge);
    MetricFamily shadow_cost =
        family("aeserve_shadow_cost_ratio",
               "Scoring seconds the candidate spent per second the active version spent on the "
               "same batches.",
               MetricType::kGauge);
    for (const auto& [key, st] : autopilot_->AllStatus()) {
      if (!key.entity.empty()) continue;
      const metrics::Labels m{{"model", key.model}};
      sample(rows, m, static_cast<double>(st.retained_rows()));
      sample(bytes, m, static_cast<double>(st.retained_bytes()));
      sample(dropped, m, static_cast<double>(st.retained_dropped_rows()));
      sample(retraining, m, st.retrain().running() ? 1 : 0);
      const v1::ShadowReport& s = st.shadow();
      if (s.candidate_version() == 0) continue;
      sample(shadow_running, m, s.finished() ? 0 : 1);
      sample(shadow_samples, m, static_cast<double>(s.samples()));
      sample(shadow_dropped, m, static_cast<double>(s.dropped_samples()));
      const std::string active = std::to_string(s.active_version());
      const std::string candidate = std::to_string(s.candidate_version());
      sample(shadow_rate, {{"model", key.model}, {"role", "active"}, {"version", active}},
             s.active_flag_rate());
      sample(shadow_rate, {{"model", key.model}, {"role", "candidate"}, {"version", candidate}},
             s.candidate_flag_rate());
      sample(shadow_ks, {{"model", key.model}, {"role", "active"}, {"version", active}},
             s.active_drift_ks());
      sample(shadow_ks, {{"model", key.model}, {"role", "candidate"}, {"version", candidate}},
             s.candidate_drift_ks());
      sample(shadow_agree, {{"model", key.model}, {"flagged_by", "both"}},
             static_cast<double>(s.both_flagged()));
      sample(shadow_agree, {{"model", key.model}, {"flagged_by", "only_active"}},
             static_cast<double>(s.only_active()));
      sample(shadow_agree, {{"model", key.model}, {"flagged_by", "only_candidate"}},
             static_cast<double>(s.only_candidate()));
      if (s.active_compute_seconds() > 0) {
        sample(shadow_cost, m, s.candidate_compute_seconds() / s.active_compute_seconds());
      }
    }
    return std::vector<MetricFamily>{rows,           bytes,          dropped,        retraining,
                                     shadow_running, shadow_samples, shadow_dropped, shadow_rate,
                                     shadow_agree,   shadow_ks,      shadow_cost};
  });
  r.AddCollector([this, family, sample] {
    MetricFamily active = family("aeserve_model_active_version",
                                 "Active version of each model (0 = none).", MetricType::kGauge);
    MetricFamily ready = family("aeserve_model_ready", "1 when the model's active version serves.",
                                MetricType::kGauge);
    MetricFamily threshold =
        family("aeserve_model_threshold",
               "Anomaly threshold of the active version (reconstruction-error units).",
               MetricType::kGauge);
    MetricFamily critical =
        family("aeserve_model_critical_threshold",
               "Critical threshold of the active version (0 = none).", MetricType::kGauge);
    MetricFamily rate = family("aeserve_anomaly_rate",
                               "Share of samples flagged over the last 60 s.", MetricType::kGauge);
    MetricFamily drift = family("aeserve_drift_ks",
                                "Kolmogorov-Smirnov distance between the last 2048 live anomaly "
                                "scores and the calibration scores.",
                                MetricType::kGauge);
    MetricFamily drifted = family(
        "aeserve_model_drifted",
        "1 when aeserve_drift_ks exceeds --drift_threshold over a window of at least 500 samples.",
        MetricType::kGauge);
    MetricFamily resident =
        family("aeserve_models_loaded",
               "READY versions in memory, by kind (generic or entity); the others are loaded again "
               "from the store when a request needs them.",
               MetricType::kGauge);
    MetricFamily resident_bytes =
        family("aeserve_models_loaded_bytes",
               "Bytes the loaded versions hold (weights and file; not the scoring contexts models "
               "of one shape share), by kind. Entity models' bytes are what --model_memory_mb "
               "bounds.",
               MetricType::kGauge);
    // Statistics are read after the registry's lock is released: (labels, stats, with drift).
    std::vector<std::tuple<metrics::Labels, std::shared_ptr<ModelStats>, bool>> stats;
    std::set<const ModelStats*> entity_rates;             // the entity models of a model share one
    double loaded[2] = {0, 0}, loaded_bytes[2] = {0, 0};  // generic, entity
    registry_->ForEach([&](const ModelKey& key, const ModelEntry& e) {
      for (const auto& [v, ver] : e.versions) {
        if (ver.resident == nullptr) continue;
        loaded[!key.entity.empty()] += 1;
        loaded_bytes[!key.entity.empty()] += static_cast<double>(ver.resident->bytes());
      }
      if (!key.entity.empty()) {
        for (const auto& [v, ver] : e.versions) {
          if (ver.stats == nullptr || !entity_rates.insert(ver.stats.get()).second) continue;
          stats.emplace_back(metrics::Labels{{"model", key.model}, {"version", "entity"}},
                             ver.stats, false);
        }
        return;  // entities are not labels
      }
      auto act = e.versions.find(e.active);
      const bool serving = act != e.versions.end() && act->second.state == v1::MODEL_STATE_READY;
      sample(active, {{"model", key.model}}, static_cast<double>(e.active));
      sample(ready, {{"model", key.model}}, serving ? 1 : 0);
      if (serving) {
        const v1::ModelFile& f = *act->second.file();
        const metrics::Labels l = {{"model", key.model}, {"version", std::to_string(e.active)}};
        sample(threshold, l, f.threshold_value());
        sample(critical, l, f.critical_threshold_value());
      }
      for (const auto& [v, ver] : e.versions) {
        if (ver.stats == nullptr) continue;
        stats.emplace_back(metrics::Labels{{"model", key.model}, {"version", std::to_string(v)}},
                           ver.stats, true);
      }
    });
    for (const auto& [l, st, with_drift] : stats) {
      const double r = st->AnomalyRate();
      if (!std::isnan(r)) sample(rate, l, r);
      if (!with_drift) continue;
      const Drift d = st->ComputeDrift();
      if (d.window == 0) continue;
      sample(drift, l, d.ks);
      sample(drifted, l, d.drifted(options_.drift_threshold) ? 1 : 0);
    }
    for (int k = 0; k < 2; ++k) {
      const metrics::Labels l = {{"kind", k == 0 ? "generic" : "entity"}};
      sample(resident, l, loaded[k]);
      sample(resident_bytes, l, loaded_bytes[k]);
    }
    return std::vector<MetricFamily>{active, ready,   threshold, critical,      rate,
                                     drift,  drifted, resident,  resident_bytes};
  });
  r.AddCollector(CollectProcessMetrics);
}

absl::Status Server::TrainDemoModel() {
  log_->info("model store {} is empty: training model 'demo' on {}", options_.model_dir,
             options_.demo_csv);
  auto table = engine::ReadCsvFile(options_.demo_csv);
  if (!table.ok()) return table.status();
  // Train on the normal rows only when the file is labelled.
  std::vector<float> rows;
  for (size_t r = 0; r < table->rows; ++r) {
    if (!table->labels.empty() && table->labels[r] != 0) continue;
    rows.insert(rows.end(), table->values.begin() + r * table->features(),
                table->values.begin() + (r + 1) * table->features());
  }
  engine::TrainRequest req;
  req.spec = engine::DefaultSpec(static_cast<uint32_t>(table->features()));
  req.options.set_epochs(100);
  req.options.set_patience(10);
  req.options.set_batch_size(64);
  req.options.set_seed(1);
  req.threshold.set_method(v1::THRESHOLD_PERCENTILE);
  req.threshold.set_value(99.5);
  req.description = absl::StrCat("demo model trained at start-up on ", options_.demo_csv);
  req.bf16 = options_.precision == "bf16";
  engine::TrainingData data{
      rows, rows.size() / table->features(), table->features(), table->feature_names, {}};
  auto file = engine::Train(req, data, [&](const engine::TrainingProgress& p) {
    log_->info("demo training: epoch {}/{} train loss {:.5f} validation loss {:.5f}", p.epoch,
               p.epochs, p.train_loss, p.validation_loss);
    return true;
  });
  if (!file.ok()) return file.status();
  auto version = registry_->AddVersion(ModelKey{"demo", ""}, *file, true);
  if (!version.ok()) return version.status();
  log_->info("demo model saved as version {} (threshold {:.5f})", *version,
             file->threshold_value());
  return absl::OkStatus();
}

absl::Status Server::LoadModels() {
  if (!options_.demo_csv.empty() && registry_->store().ListModels().empty()) {
    if (auto st = TrainDemoModel(); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("training the demo model: ", st.message()));
    }
  }
  StoreSync sync(*registry_);
  const int ready = sync.LoadAll([this](const ModelKey& key, const ModelEntry& e) {
    if (e.error.empty()) {
      log_->info("model '{}' ready: version {} of {}", key.str(), e.active, e.versions.size());
    } else {
      log_->error("model '{}' unavailable: {}", key.str(), e.error);
    }
  });
  autopilot_->Start();  // retrain policies in the store: retention on before the first call
  ingest_->Start();     // ingest bindings in the store
  grpc_->GetHealthCheckService()->SetServingStatus(true);
  log_->info("{} model(s) ready; health SERVING", ready);
  if (options_.store_poll_seconds > 0) {
    store_watcher_ = std::thread([this, sync]() mutable {
      const auto period =
          absl::Milliseconds(static_cast<int64_t>(options_.store_poll_seconds * 1000));
      for (;;) {
        {
          absl::MutexLock lock(&watch_mu_);
          auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_mu_) { return stop_watching_; };
          if (watch_mu_.AwaitWithTimeout(absl::Condition(&stop), period)) return;
        }
        if (const int changes = sync.Poll(); changes > 0) {
          log_->info("model store: picked up {} change(s) made elsewhere", changes);
        }
        jobs_->SyncWithStore();  // other replicas' cancel requests and jobs being watched here
        ingest_->Reload();
      }
    });
  }
  return absl::OkStatus();
}

void Server::Shutdown() {
  if (shut_down_ || !grpc_) return;

  shut_down_ = true;
  {
    absl::MutexLock lock(&watch_mu_);
    stop_watching_ = true;
  }
  if (store_watcher_.joinable()) store_watcher_.join();
  log_->info("shutting down: finishing in-flight work (grace {} s)",
             options_.shutdown_grace_seconds);
  grpc_->GetHealthCheckService()->SetServingStatus(false);
  ingest_exposer_.reset();
  ingest_->Stop();  // remote writes get 503 from here on: Prometheus retries them elsewhere
  streams_.ShutdownAll();
  feed_->CloseAll();
  const auto deadline =
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(options_.shutdown_grace_seconds * 1000));
  jobs_->Stop();
  // In-flight calls get the grace period; once none has been in flight for 50 ms, idle
  // connections are closed instead of waiting for their clients to hang up (gRPC's shutdown waits
  // for every connection). The server stops listening and sends GOAWAY before the closer starts
  // (the shutdown below repeats that and waits); the quiet period lets GOAWAY reach the clients
  // first. A call gRPC has handed to a method but whose interceptor does not exist yet is not
  // counted, so a stall of over 50 ms at that point could still cut it (UNAVAILABLE). Closing is
  // repeated until the shutdown ends (a client may have connected before the listener closed).
  grpc_completion_queue* shut = grpc_completion_queue_create_for_next(nullptr);
  int shut_tag = 0;
  grpc_server_shutdown_and_notify(grpc_->c_server(), shut, &shut_tag);
  std::atomic<bool> ended{false};
  std::thread closer([&] {
    auto quiet_since = std::chrono::steady_clock::now();
    while (!ended.load(std::memory_order_acquire)) {
      const auto now = std::chrono::steady_clock::now();
      if (calls_->count() != 0) {
        quiet_since = now;
      } else if (now - quiet_since >= std::chrono::milliseconds(50)) {
        grpc_server_cancel_all_calls(grpc_->c_server());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  grpc_->Shutdown(deadline);
  ended.store(true, std::memory_order_release);
  closer.join();
  // The server has shut down, so the first notification is already in the queue.
  grpc_completion_queue_shutdown(shut);
  while (grpc_completion_queue_next(shut, gpr_inf_future(GPR_CLOCK_REALTIME), nullptr).type !=
         GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(shut);
  executor_->Stop();
  admin_executor_->Stop();
  grpc_->Wait();
  autopilot_->Stop();  // after the last scored batch: writes the rows still in memory
  log_->info("shut down");
  exposer_.reset();
}

}  // namespace aeserve::server
