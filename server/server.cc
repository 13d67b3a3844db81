// The aeserve server: gRPC services, registry, executor, graceful shutdown.
#include "server.h"

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "csv.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server_builder.h"
#include "spec.h"
#include "trainer.h"

namespace aeserve::server {

Server::Server(const Options& options, std::shared_ptr<spdlog::logger> log)
    : options_(options), log_(std::move(log)) {}

Server::~Server() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const Options& options,
                                                      std::shared_ptr<spdlog::logger> log) {
  std::unique_ptr<Server> s(new Server(options, std::move(log)));
  Options& o = s->options_;
  if (o.threads <= 0) o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  s->registry_ = std::make_unique<ModelRegistry>(
      ModelStore(o.model_dir), engine::ModelOptions{std::max(1, o.model_threads), 4096});
  s->executor_ = std::make_unique<Executor>(o.threads, o.max_queue);
  s->scoring_ = std::make_unique<ScoringService>(s->options_, s->registry_.get(),
                                                 s->executor_.get(), &s->streams_);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(o.host, ":", o.port), grpc::InsecureServerCredentials(),
                           &s->port_);
  builder.SetMaxReceiveMessageSize(o.max_message_bytes);
  builder.SetMaxSendMessageSize(o.max_message_bytes);
  builder.RegisterService(s->scoring_.get());
  s->grpc_ = builder.BuildAndStart();
  if (!s->grpc_ || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.host, ":", o.port));
  }
  s->grpc_->GetHealthCheckService()->SetServingStatus(false);
  s->log_->info("listening on {}:{} (health NOT_SERVING until models are loaded)", o.host, s->port_);
  return s;
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
  engine::TrainingData data{rows, rows.size() / table->features(), table->features(),
                            table->feature_names};
  auto file = engine::Train(req, data, [&](const engine::TrainingProgress& p) {
    log_->info("demo training: epoch {}/{} train loss {:.5f} validation loss {:.5f}", p.epoch,
               p.epochs, p.train_loss, p.validation_loss);
    return true;
  });
  if (!file.ok()) return file.status();
  auto version = registry_->AddVersion(ModelKey{"demo", ""}, *file, true);
  if (!version.ok()) return version.status();
  log_->info("demo model saved as version {} (threshold {:.5f})", *version, file->threshold_value());
  return absl::OkStatus();
}

absl::Status Server::LoadModels() {
  if (!options_.demo_csv.empty() && registry_->store().ListModels().empty()) {
    if (auto st = TrainDemoModel(); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("training the demo model: ", st.message()));
    }
  }
  const int ready = registry_->LoadAll();
  for (const auto& info : registry_->List()) {
    if (info.state() == v1::MODEL_STATE_READY) {
      log_->info("model '{}{}{}' ready: version {} of {}, {} features", info.name(),
                 info.entity().empty() ? "" : "/", info.entity(),
                 info.active_version(), info.versions_size(), info.num_features());
    } else {
      log_->error("model '{}{}{}' unavailable: {}", info.name(), info.entity().empty() ? "" : "/",
                  info.entity(), info.error());
    }
  }
  grpc_->GetHealthCheckService()->SetServingStatus(true);
  log_->info("{} model(s) ready; health SERVING", ready);
  return absl::OkStatus();
}

void Server::Shutdown() {
  if (shut_down_ || !grpc_) return;
  shut_down_ = true;
  log_->info("shutting down: finishing in-flight work (grace {} s)", options_.shutdown_grace_seconds);
  grpc_->GetHealthCheckService()->SetServingStatus(false);
  streams_.ShutdownAll();
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(options_.shutdown_grace_seconds * 1000));
  grpc_->Shutdown(deadline);
  executor_->Stop();
  grpc_->Wait();
  log_->info("shut down");
}

}  // namespace aeserve::server
