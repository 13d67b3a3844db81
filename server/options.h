// Everything the server is configured with, and its defaults: main.cc's flags default to these.
#pragma once

#include <cstdint>
#include <string>

namespace aeserve::server {

struct Options {
  std::string host = "0.0.0.0";
  int port = 50051;
  int metrics_port = 9464;   // 0 = no /metrics endpoint
  std::string metrics_host;  // address of /metrics; empty = the gRPC host
  std::string model_dir = "./models";
  int threads = 0;                   // scoring workers; 0 = one per core
  int model_threads = 1;             // oneDNN threads inside one scoring call
  std::string precision = "f32";     // of versions whose policy leaves it unset: f32 or bf16
  uint64_t model_memory_mb = 0;      // loaded entity models' bytes at most; 0 = no bound
  int keep_loaded_versions = 2;      // inactive versions of a model kept loaded; -1 = all
  int max_message_bytes = 32 << 20;  // larger requests get RESOURCE_EXHAUSTED
  uint64_t grpc_buffer_bytes = 0;  // gRPC's buffers over all calls; 0 = max_message_bytes + 16 MiB
  uint32_t max_batch_rows = 1 << 20;  // rows per Score call or stream batch
  int max_queue = 1024;               // queued unary calls before RESOURCE_EXHAUSTED
  // Score calls and stream batches of up to this many multiply-adds (samples x the model's
  // madds_per_sample) are scored on the gRPC thread that received them when a scoring worker is
  // idle (no hand-off); 0 = always on the workers. The default: 256 rows of the default
  // 38-feature model with neighbours, ~55 us.
  uint64_t inline_max_madds = 5'000'000;
  int max_streams = 256;       // concurrent StreamScore calls
  int max_watchers = 1024;     // concurrent WatchAnomalies calls
  int stream_max_pending = 4;  // batches read ahead per stream (backpressure bound)
  int stream_max_unsent = 8;   // responses waiting for a slow reader per stream
  uint64_t max_stream_buffer_bytes = uint64_t{1} << 30;  // batches and answers held, all streams
  double shutdown_grace_seconds = 10;                    // in-flight work gets this long on SIGTERM
  std::string demo_csv;         // train model "demo" from this CSV if the store is empty
  int max_training_jobs = 1;    // jobs training at once
  int max_queued_jobs = 16;     // jobs waiting before RESOURCE_EXHAUSTED
  int max_finished_jobs = 100;  // ended jobs remembered for Get/List/Watch
  uint64_t max_training_values = 256u << 20;      // floats uploaded per job (1 GiB)
  uint64_t max_upload_bytes = uint64_t{2} << 30;  // training data of all uploads and queued jobs
  double upload_idle_seconds = 60;  // an upload with no message for this long is ended
  std::string auth_tokens;          // file of `<token> score|admin` lines; empty = no auth
  std::string tls_cert, tls_key;    // PEM files: serve TLS
  std::string tls_client_ca;        // PEM file: require client certificates (mutual TLS)
  double drift_threshold = 0.2;     // KS statistic above which a model is reported drifted
  bool reflection = true;           // gRPC server reflection (public schema, no token)
  double store_poll_seconds = 2;    // how often to pick up other replicas' changes; 0 = off
  double memory_trim_seconds = 10;  // how often free heap memory is given back; 0 = never
  double autopilot_tick_seconds =
      1;  // how often retrain policies, triggers and shadows are checked
  double incident_resume_seconds =
      300;  // a named stream's alarm and open incident survive a reconnect
  // Prometheus remote write (POST /api/v1/write): 0 = on the metrics port, N = its own port
  // (-1: a free one, for tests).
  int ingest_port = 0;
  uint32_t ingest_max_entities = 10000;       // per model: more entities' samples are dropped
  uint64_t ingest_max_body_bytes = 4u << 20;  // compressed request body (decoded: 4x); else 413
};

}  // namespace aeserve::server
