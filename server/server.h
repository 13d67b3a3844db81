// The aeserve server: the gRPC server with the Scoring, health and reflection services, the
// model registry, the executor, and graceful shutdown.
#pragma once

#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server.h"
#include "server/admin_service.h"
#include "server/anomaly_feed.h"
#include "server/audit_log.h"
#include "server/auth.h"
#include "server/autopilot.h"
#include "server/calls_in_flight.h"
#include "server/executor.h"
#include "server/ingest.h"
#include "server/memory_trim.h"
#include "server/metrics/exposer.h"
#include "server/model_registry.h"
#include "server/options.h"
#include "server/otlp_service.h"
#include "server/scoring_service.h"
#include "server/server_metrics.h"
#include "server/stream_reactor.h"
#include "server/training_jobs.h"
#include "server/uploads.h"
#include "spdlog/logger.h"

namespace aeserve::server {

class Server {
 public:
  // Binds the port and starts serving with health NOT_SERVING; models are not loaded yet.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const Options& options,
                                                       std::shared_ptr<spdlog::logger> log);
  ~Server();

  // Trains the demo model when the store is empty and --demo_csv is set, loads every model,
  // then reports SERVING.
  absl::Status LoadModels();
  // Stops accepting, lets in-flight batches finish, closes streams with UNAVAILABLE, and waits
  // at most the grace period before cancelling what is left.
  void Shutdown();

  int port() const { return port_; }
  int metrics_port() const { return exposer_ ? exposer_->port() : 0; }
  ServerMetrics* metrics() { return metrics_.get(); }
  ModelRegistry& registry() { return *registry_; }
  TrainingJobs& jobs() { return *jobs_; }
  Autopilot& autopilot() { return *autopilot_; }
  // The port of POST /api/v1/write (the metrics port unless --ingest_port); 0 = none.
  int ingest_port() const { return ingest_exposer_ ? ingest_exposer_->port() : metrics_port(); }

 private:
  Server(const Options& options, std::shared_ptr<spdlog::logger> log);
  absl::Status TrainDemoModel();
  void AddCollectors();

  Options options_;
  std::shared_ptr<spdlog::logger> log_;
  Authorizer auth_;
  std::unique_ptr<ServerMetrics> metrics_;  // null with --metrics_port=0
  std::unique_ptr<AnomalyFeed> feed_;
  std::unique_ptr<metrics::Exposer> exposer_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<Executor> admin_executor_;
  std::unique_ptr<ByteBudget> upload_budget_;  // before jobs_: queued jobs hold reservations
  std::unique_ptr<TrainingJobs> jobs_;
  std::unique_ptr<Autopilot> autopilot_;
  std::unique_ptr<Uploads> uploads_;
  std::unique_ptr<ByteBudget> ingest_budget_;  // decoded remote-write bodies in flight
  std::unique_ptr<Ingest> ingest_;  // after executor_ (scores on it), before the listeners below
  std::unique_ptr<metrics::Exposer> ingest_exposer_;  // --ingest_port
  std::unique_ptr<OtlpService> otlp_;                 // OTLP/gRPC metrics into ingest_
  StreamTracker streams_;
  std::unique_ptr<ScoringService> scoring_;
  std::unique_ptr<AdminService> admin_;
  CallsInFlight* calls_ = nullptr;  // owned by grpc_ (its interceptor factory)
  std::unique_ptr<grpc::Server> grpc_;
  int port_ = 0;
  bool shut_down_ = false;
  std::unique_ptr<MemoryTrimmer> trimmer_;  // --memory_trim_seconds
  // Follows the shared model store (other replicas' versions and activations).
  std::thread store_watcher_;
  absl::Mutex watch_mu_;
  bool stop_watching_ ABSL_GUARDED_BY(watch_mu_) = false;
};

}  // namespace aeserve::server
