// aeserve: parses flags into Options, starts the server, and shuts it down on SIGTERM/SIGINT.
#include <signal.h>

#include <cstdlib>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "server/server.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {
// The flags' defaults are Options' (server/options.h): one place for both.
const aeserve::server::Options& Defaults() {
  static const aeserve::server::Options defaults;
  return defaults;
}
}  // namespace

ABSL_FLAG(bool, lock_order_checks, false,
          "Abseil's lock-order (deadlock) detection: a debugging aid that updates a lock graph on "
          "every mutex operation (Debian's Abseil has it on unless the program turns it off).");
ABSL_FLAG(std::string, host, Defaults().host,
          "Address to listen on for gRPC (127.0.0.1 for local only).");
ABSL_FLAG(int, port, Defaults().port, "gRPC port; 0 picks a free port (printed at start).");
ABSL_FLAG(int, metrics_port, Defaults().metrics_port,
          "Port of the Prometheus /metrics endpoint (same host as gRPC); 0 = metrics off, -1 = any "
          "free port.");
ABSL_FLAG(std::string, metrics_host, Defaults().metrics_host,
          "Address of the /metrics endpoint; empty = the same as --host. 127.0.0.1 keeps it on the "
          "machine (e.g. behind a TLS/auth proxy or a sidecar).");
ABSL_FLAG(double, drift_threshold, Defaults().drift_threshold,
          "Kolmogorov-Smirnov distance between live and calibration errors above which a model is "
          "reported drifted (aeserve_model_drifted, GetModel).");
ABSL_FLAG(std::string, model_dir, Defaults().model_dir,
          "Model store: <dir>/<model>/<version>/model.pb and <dir>/<model>/ACTIVE.");
ABSL_FLAG(int, threads, Defaults().threads, "Scoring worker threads; 0 = one per core.");
ABSL_FLAG(int, model_threads, Defaults().model_threads,
          "oneDNN threads inside one scoring call (1 is best when calls run in parallel).");
ABSL_FLAG(std::string, precision, Defaults().precision,
          "Arithmetic of the versions whose scoring policy names none: f32, or bf16 (bfloat16 "
          "layers: half the weight bytes per multiply, scores within about 1.5%; faster only where "
          "the CPU's bf16 units outrun its f32 ones, slower on this project's test machine "
          "(bench/RESULTS.md, \"bf16\"); f32 without AVX-512).");
ABSL_FLAG(uint64_t, inline_max_madds, Defaults().inline_max_madds,
          "Score calls and stream batches of up to this many multiply-adds (samples x the "
          "model's work per sample: its layers and neighbour distances) are scored on the gRPC "
          "thread that received them when a scoring worker is idle and nothing is queued, saving "
          "the hand-off to the worker (the default: 256 rows of the default model with "
          "neighbours, ~55 us); heavier ones, and all while the workers are busy, are queued; "
          "0 = always hand off.");
ABSL_FLAG(uint64_t, model_memory_mb, Defaults().model_memory_mb,
          "Memory for entity models (MiB): beyond it the least recently used are unloaded and "
          "loaded again from the store on their next request; 0 = no bound.");
ABSL_FLAG(int, keep_loaded_versions, Defaults().keep_loaded_versions,
          "Inactive versions of each model kept loaded besides the active one (the newest); "
          "older ones are unloaded and loaded again when asked for by version; -1 = all.");
ABSL_FLAG(int, max_message_bytes, Defaults().max_message_bytes,
          "Largest request or response in bytes; larger requests get RESOURCE_EXHAUSTED.");
ABSL_FLAG(uint64_t, grpc_buffer_bytes, Defaults().grpc_buffer_bytes,
          "Bytes gRPC may buffer for incoming messages over all calls together (its resource "
          "quota); a message that would go past it is refused (RESOURCE_EXHAUSTED) before it is "
          "read in full. 0 = --max_message_bytes + 16 MiB.");
ABSL_FLAG(uint32_t, max_batch_rows, Defaults().max_batch_rows,
          "Most rows in one Score call or stream batch.");
ABSL_FLAG(int, max_queue, Defaults().max_queue, "Queued unary calls before RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, max_streams, Defaults().max_streams,
          "Concurrent StreamScore calls before RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, max_watchers, Defaults().max_watchers,
          "Concurrent WatchAnomalies calls before RESOURCE_EXHAUSTED.");
ABSL_FLAG(double, incident_resume_seconds, Defaults().incident_resume_seconds,
          "How long a debounced stream with a stream_id keeps its alarm and open incident after it "
          "ends, for a client that reconnects with the same stream_id. 0 = not kept.");
ABSL_FLAG(int, stream_max_pending, Defaults().stream_max_pending,
          "Batches read ahead per stream before backpressure.");
ABSL_FLAG(int, stream_max_unsent, Defaults().stream_max_unsent,
          "Answers held for a slow stream reader before backpressure.");
ABSL_FLAG(uint64_t, max_stream_buffer_bytes, Defaults().max_stream_buffer_bytes,
          "Bytes all StreamScore calls together may hold (batches read ahead and answers not yet "
          "taken by their clients); past it streams stop reading until some are released.");
ABSL_FLAG(double, shutdown_grace_seconds, Defaults().shutdown_grace_seconds,
          "Time in-flight work gets on SIGTERM/SIGINT.");
ABSL_FLAG(int, max_training_jobs, Defaults().max_training_jobs,
          "Training jobs running at once (each on one core).");
ABSL_FLAG(int, max_queued_jobs, Defaults().max_queued_jobs,
          "Training jobs waiting before RESOURCE_EXHAUSTED.");
ABSL_FLAG(
    int, max_finished_jobs, Defaults().max_finished_jobs,
    "Ended training jobs remembered for GetTrainingJob/ListTrainingJobs (oldest forgotten first).");
ABSL_FLAG(uint64_t, max_training_values, Defaults().max_training_values,
          "Most float values uploaded for one training job (rows x features).");
ABSL_FLAG(
    uint64_t, max_upload_bytes, Defaults().max_upload_bytes,
    "Training data held in memory at once, over all uploads in progress and queued or running "
    "jobs (each upload reserves rows x features x 4 bytes when its header arrives); an upload "
    "over it gets RESOURCE_EXHAUSTED.");
ABSL_FLAG(double, upload_idle_seconds, Defaults().upload_idle_seconds,
          "A training upload that sends no message for this long is ended with DEADLINE_EXCEEDED "
          "and creates no job; 0 = never.");
ABSL_FLAG(std::string, auth_tokens, Defaults().auth_tokens,
          "File of '<token> score|admin' lines; when set every call needs 'authorization: Bearer "
          "<token>' and admin calls the admin role.");
ABSL_FLAG(bool, reflection, Defaults().reflection,
          "Serve gRPC server reflection (the API schema, which is public; answered without a token "
          "even with --auth_tokens). --reflection=false turns it off.");
ABSL_FLAG(std::string, tls_cert, Defaults().tls_cert, "PEM certificate chain: serve TLS.");
ABSL_FLAG(std::string, tls_key, Defaults().tls_key, "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, Defaults().tls_client_ca,
          "PEM CA bundle: require and verify client certificates (mTLS).");
ABSL_FLAG(double, store_poll_seconds, Defaults().store_poll_seconds,
          "How often to pick up versions, activations and threshold changes other replicas made in "
          "the shared model store; 0 = never.");
ABSL_FLAG(double, memory_trim_seconds, Defaults().memory_trim_seconds,
          "How often memory the allocator holds free (what large requests left) is given back to "
          "the system (malloc_trim); 0 = never.");
ABSL_FLAG(double, autopilot_tick_seconds, Defaults().autopilot_tick_seconds,
          "How often retrain policies are re-read from the store, retained rows written, and "
          "retrain triggers and shadow windows checked.");
ABSL_FLAG(int, ingest_port, Defaults().ingest_port,
          "Port of the Prometheus remote-write endpoint POST /api/v1/write; 0 = the metrics "
          "port, -1 = any free port. With --tls_cert it serves HTTPS with that certificate "
          "(and --tls_client_ca), and the metrics port takes no remote writes.");
ABSL_FLAG(uint32_t, ingest_max_entities, Defaults().ingest_max_entities,
          "Entities per model the ingest keeps rows and gauges for; further ones are dropped "
          "and counted.");
ABSL_FLAG(uint64_t, ingest_max_body_bytes, Defaults().ingest_max_body_bytes,
          "Largest remote-write body (compressed; decoded at most 4x); larger ones get 413 "
          "before they are read.");
ABSL_FLAG(std::string, demo_csv, Defaults().demo_csv,
          "If the model store is empty, train model 'demo' on this CSV at start-up.");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "aeserve: anomaly detection with autoencoders over gRPC.\n"
      "  aeserve --model_dir=./models --port=50051\n"
      "Scores with aeserve.v1.Scoring; health via grpc.health.v1; reflection on.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_lock_order_checks)) {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  }

  // Block the stop signals in every thread; one thread waits for them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  auto log = spdlog::stdout_color_mt("aeserve");
  log->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  aeserve::server::Options o;
  o.host = absl::GetFlag(FLAGS_host);
  o.port = absl::GetFlag(FLAGS_port);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.ingest_port = absl::GetFlag(FLAGS_ingest_port);
  o.ingest_max_entities = absl::GetFlag(FLAGS_ingest_max_entities);
  o.ingest_max_body_bytes = absl::GetFlag(FLAGS_ingest_max_body_bytes);
  o.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  o.model_dir = absl::GetFlag(FLAGS_model_dir);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.model_threads = absl::GetFlag(FLAGS_model_threads);
  o.precision = absl::GetFlag(FLAGS_precision);
  o.model_memory_mb = absl::GetFlag(FLAGS_model_memory_mb);
  o.keep_loaded_versions = absl::GetFlag(FLAGS_keep_loaded_versions);
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o.grpc_buffer_bytes = absl::GetFlag(FLAGS_grpc_buffer_bytes);
  o.max_batch_rows = absl::GetFlag(FLAGS_max_batch_rows);
  o.max_queue = absl::GetFlag(FLAGS_max_queue);
  o.inline_max_madds = absl::GetFlag(FLAGS_inline_max_madds);
  o.max_streams = absl::GetFlag(FLAGS_max_streams);
  o.max_watchers = absl::GetFlag(FLAGS_max_watchers);
  o.incident_resume_seconds = absl::GetFlag(FLAGS_incident_resume_seconds);
  o.stream_max_pending = absl::GetFlag(FLAGS_stream_max_pending);
  o.stream_max_unsent = absl::GetFlag(FLAGS_stream_max_unsent);
  o.max_stream_buffer_bytes = absl::GetFlag(FLAGS_max_stream_buffer_bytes);
  o.shutdown_grace_seconds = absl::GetFlag(FLAGS_shutdown_grace_seconds);
  o.demo_csv = absl::GetFlag(FLAGS_demo_csv);
  o.max_training_jobs = absl::GetFlag(FLAGS_max_training_jobs);
  o.max_queued_jobs = absl::GetFlag(FLAGS_max_queued_jobs);
  o.max_training_values = absl::GetFlag(FLAGS_max_training_values);
  o.max_finished_jobs = absl::GetFlag(FLAGS_max_finished_jobs);
  o.reflection = absl::GetFlag(FLAGS_reflection);
  o.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  o.upload_idle_seconds = absl::GetFlag(FLAGS_upload_idle_seconds);
  o.auth_tokens = absl::GetFlag(FLAGS_auth_tokens);
  o.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  o.drift_threshold = absl::GetFlag(FLAGS_drift_threshold);
  o.store_poll_seconds = absl::GetFlag(FLAGS_store_poll_seconds);
  o.memory_trim_seconds = absl::GetFlag(FLAGS_memory_trim_seconds);
  o.autopilot_tick_seconds = absl::GetFlag(FLAGS_autopilot_tick_seconds);

  auto server = aeserve::server::Server::Start(o, log);
  if (!server.ok()) {
    log->critical("{}", server.status().ToString());
    return 1;
  }
  std::thread loader([&] {
    if (auto st = (*server)->LoadModels(); !st.ok()) {
      log->critical("{}", st.ToString());
      std::exit(1);
    }
  });
  int sig = 0;
  sigwait(&stop, &sig);
  log->info("received {}", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  loader.join();
  (*server)->Shutdown();
  return 0;
}
