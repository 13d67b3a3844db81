// Serving benchmark: StreamScore throughput and unary Score latency of aeserve on loopback, each
// beside a bare gRPC echo server answering same-sized messages and the engine in-process, all in
// one run on one machine.
//
//   build/bench/serve_bench [--seconds=S] [--neighbors=N] [--series-only]
//
// Also: a series model (server-side windows) streamed one row per time step against plain rows
// of the same model input size.
// Model: 38-64-32-8-32-64-38 ReLU. Streams use one connection each.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "bench/stream_load.h"
#include "engine/dnnl_util.h"
#include "engine/spec.h"
#include "engine/synthetic_data.h"
#include "engine/trainer.h"
#include "engine/window.h"
#include "grpcpp/grpcpp.h"
#include "proto/echo.grpc.pb.h"
#include "server/model_store.h"
#include "server/server.h"
#include "spdlog/sinks/null_sink.h"

namespace {

using namespace aeserve;
using Clock = std::chrono::steady_clock;
constexpr uint32_t kFeatures = 38;

// A response of the size aeserve sends for `req`, with nothing computed.
void EchoResponse(const v1::Samples& s, v1::ScoreResponse* r) {
  const int rows = s.num_features() ? s.values_size() / static_cast<int>(s.num_features()) : 0;
  r->set_model("echo");
  r->set_version(1);
  r->set_num_samples(rows);
  r->mutable_errors()->Resize(rows, 0.5f);
  r->mutable_anomalous()->Resize(rows, false);
  r->mutable_p_values()->Resize(rows, 0.5f);
}

class EchoStream : public grpc::ServerBidiReactor<v1::StreamScoreRequest, v1::StreamScoreResponse> {
 public:
  EchoStream() {
    absl::MutexLock l(&mu_);
    reading_ = true;
    StartRead(&in_);
  }
  void OnReadDone(bool ok) override {
    absl::MutexLock l(&mu_);
    reading_ = false;
    if (!ok) {
      done_reading_ = true;
    } else {
      v1::StreamScoreResponse& r = out_.emplace_back();
      r.set_sequence(in_.sequence());
      EchoResponse(in_.samples(), r.mutable_result());
    }
    Pump();
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock l(&mu_);
    writing_ = false;
    out_.pop_front();
    if (!ok) done_reading_ = true;
    Pump();
  }
  void OnDone() override { delete this; }

 private:
  void Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!writing_ && !out_.empty()) {
      writing_ = true;
      StartWrite(&out_.front());
    }
    if (!reading_ && !done_reading_ && out_.size() < 8) {
      reading_ = true;
      StartRead(&in_);
    }
    if (done_reading_ && !writing_ && out_.empty() && !finished_) {
      finished_ = true;
      Finish(grpc::Status::OK);
    }
  }
  absl::Mutex mu_;
  v1::StreamScoreRequest in_;
  std::deque<v1::StreamScoreResponse> out_;
  bool reading_ = false, writing_ = false, done_reading_ = false, finished_ = false;
};

class EchoService final : public bench::Echo::CallbackService {
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx, const v1::ScoreRequest* req,
                                  v1::ScoreResponse* resp) override {
    EchoResponse(req->samples(), resp);
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }
  grpc::ServerBidiReactor<v1::StreamScoreRequest, v1::StreamScoreResponse>* StreamScore(
      grpc::CallbackServerContext*) override {
    return new EchoStream();
  }
};

std::shared_ptr<grpc::Channel> Channel(int port, int id) {
  return aeserve::bench::BenchChannel("127.0.0.1:" + std::to_string(port), id);
}

v1::Samples Batch(uint32_t rows) {
  auto d = engine::MakeSynthetic(rows, 0, kFeatures, 6, 11);
  v1::Samples s;
  s.set_num_features(kFeatures);
  s.mutable_values()->Add(d.normal.begin(), d.normal.end());
  return s;
}

// Samples per second answered over `streams` streams of `rows`-row batches for `seconds`.
template <typename Stub>
double StreamRate(int port, int streams, uint32_t rows, double seconds,
                  const std::string& model = "bench") {
  return aeserve::bench::StreamRate<Stub>("127.0.0.1:" + std::to_string(port), model, Batch(rows),
                                          streams, seconds);
}

template <typename Stub>
void UnaryLatency(typename Stub::Stub& stub, int calls, std::vector<double>* us) {
  v1::ScoreRequest req;
  req.set_model("bench");
  *req.mutable_samples() = Batch(1);
  for (int i = 0; i < calls; ++i) {
    grpc::ClientContext ctx;
    v1::ScoreResponse resp;
    const auto t = Clock::now();
    grpc::Status st = stub.Score(&ctx, req, &resp);
    if (!st.ok()) std::fprintf(stderr, "unary: %s\n", st.error_message().c_str());
    us->push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
  }
}

std::pair<double, double> Percentiles(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 99 / 100]};
}

// The engine in-process on `threads` threads, each with its own context: the ceiling.
double EngineRate(const engine::Model& model, int threads, uint32_t rows, double seconds) {
  const v1::Samples s = Batch(rows);
  const absl::Span<const float> x(s.values().data(), s.values_size());
  std::atomic<uint64_t> done{0};
  std::vector<std::thread> ts;
  const auto stop_at = Clock::now() + std::chrono::duration<double>(seconds);
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      engine::ScopedThreads one(1);
      auto ctx = model.NewContext();
      engine::ScoreResult r;
      while (Clock::now() < stop_at) {
        (void)model.Score(*ctx, x, {}, &r);
        done += rows;
      }
    });
  }
  for (auto& t : ts) t.join();
  return done / seconds;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 1.5;
  int neighbors = -1;  // --neighbors=N: the model's ModelSpec.neighbors (unset = the default score)
  bool series_only = false;       // --series-only: just the windowed-vs-plain table
  bool unary_only = false;        // --unary-only: just the unary latency table
  bool small_only = false;        // --small-only: just the many-streams-of-small-batches table
  std::string precision = "f32";  // --precision=bf16: aeserve's --precision, and the engine's
  bool lock_order = false;  // --lock-order-checks: keep Abseil's deadlock detection (aeserve's
                            // --lock_order_checks), to measure what switching it off gains
  long long inline_max_madds = -1;  // --inline-max-madds=N: aeserve's --inline_max_madds (unset
                                    // = its default; 0 = every batch handed to a worker)
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf(
          "usage: serve_bench [--seconds=S] [--neighbors=N] [--series-only] [--unary-only]\n"
          "                   [--small-only] [--lock-order-checks] [--inline-max-madds=N]\n"
          "                   [--precision=f32|bf16]\n"
          "  StreamScore throughput and unary latency of aeserve beside a bare gRPC echo\n"
          "  and the engine in-process (about 70 s with the default 1.5 s per figure);\n"
          "  --neighbors=0 benchmarks the autoencoder alone; --series-only runs only the\n"
          "  windowed-vs-plain streaming table, --unary-only only the unary latency,\n"
          "  --small-only only batches of 1 and 16 rows on 4 and 16 streams;\n"
          "  --lock-order-checks keeps Abseil's deadlock detection on, as aeserve\n"
          "  --lock_order_checks does (the aeserve default is off); --inline-max-madds=N\n"
          "  is aeserve's --inline_max_madds (0: every batch goes to a scoring worker);\n"
          "  --precision=bf16 serves (and runs the in-process engine) in bf16.\n");
      return 0;
    }
    if (std::strncmp(argv[i], "--seconds=", 10) == 0) {
      seconds = std::atof(argv[i] + 10);
    } else if (std::strncmp(argv[i], "--neighbors=", 12) == 0) {
      neighbors = std::atoi(argv[i] + 12);
    } else if (std::strcmp(argv[i], "--series-only") == 0) {
      series_only = true;
    } else if (std::strcmp(argv[i], "--unary-only") == 0) {
      unary_only = true;
    } else if (std::strcmp(argv[i], "--small-only") == 0) {
      small_only = true;
    } else if (std::strncmp(argv[i], "--precision=", 12) == 0) {
      precision = argv[i] + 12;
    } else if (std::strcmp(argv[i], "--lock-order-checks") == 0) {
      lock_order = true;
    } else if (std::strncmp(argv[i], "--inline-max-madds=", 19) == 0) {
      inline_max_madds = std::atoll(argv[i] + 19);
    } else {
      std::fprintf(stderr, "serve_bench: unknown argument '%s' (--help lists them)\n", argv[i]);
      return 2;
    }
  }
  const std::string dir = "/tmp/aeserve_serve_bench_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  auto data = engine::MakeSynthetic(20000, 0, kFeatures, 6, 11);
  engine::TrainRequest req;
  req.spec = engine::DefaultSpec(kFeatures);  // 38-64-32-8-32-64-38
  if (neighbors >= 0) req.spec.set_neighbors(static_cast<uint32_t>(neighbors));
  req.options.set_epochs(2);
  auto file = engine::Train(req, engine::TrainingData{data.normal, 20000, kFeatures, {}, {}});
  if (!file.ok()) return 1;
  server::ModelStore store(dir);
  const server::ModelKey key{"bench", ""};
  (void)store.WriteActive(key, *store.AddVersion(key, *file));
  // The autopilot's cost (issue #15): the same model with retention on, and with a candidate (the
  // same weights, staged as version 2) in shadow beside it.
  const server::ModelKey kept{"kept", ""}, shadowed{"shadowed", ""};
  (void)store.WriteActive(kept, *store.AddVersion(kept, *file));
  (void)store.WriteActive(shadowed, *store.AddVersion(shadowed, *file));
  (void)store.AddVersion(shadowed, *file);

  // Series models: one row of 3 columns per time step, the server builds windows of 12 steps and
  // the hour of day (12 x 3 + 2 = 38 inputs, the same network) — against plain rows of 38.
  constexpr uint32_t kColumns = 3, kWindow = 12;
  const int64_t step_ms = 60'000;
  std::vector<float> series_values;
  std::vector<int64_t> series_ts;
  for (uint32_t i = 0; i < 20000; ++i) {
    for (uint32_t c = 0; c < kColumns; ++c) {
      series_values.push_back(static_cast<float>(std::sin(0.01 * i * (c + 1))));
    }
    series_ts.push_back(int64_t{i} * step_ms);
  }
  engine::TrainRequest sreq;
  sreq.spec.mutable_window()->set_length(kWindow);
  sreq.spec.mutable_window()->add_time_features(v1::TIME_FEATURE_HOUR_OF_DAY);
  if (neighbors >= 0) sreq.spec.set_neighbors(static_cast<uint32_t>(neighbors));
  sreq.options.set_epochs(2);
  auto sfile =
      engine::Train(sreq, engine::TrainingData{series_values, 20000, kColumns, {}, series_ts});
  if (!sfile.ok()) {
    std::fprintf(stderr, "series model: %s\n", sfile.status().ToString().c_str());
    return 1;
  }
  const server::ModelKey skey{"series", ""};
  (void)store.WriteActive(skey, *store.AddVersion(skey, *sfile));
  // The same network, weights, reference rows and calibration as a plain model: it is sent the
  // windows the server would build, so both sides score the same samples.
  v1::ModelFile windows_file = *sfile;
  windows_file.mutable_spec()->clear_window();
  windows_file.clear_series_columns();
  const server::ModelKey wkey{"windows", ""};
  (void)store.WriteActive(wkey, *store.AddVersion(wkey, windows_file));
  // As the aeserve binary does unless --lock_order_checks (server/main.cc).
  if (!lock_order) absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  server::Options o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.metrics_port = -1;
  o.model_dir = dir;
  o.threads = 2;
  if (inline_max_madds >= 0) o.inline_max_madds = static_cast<uint64_t>(inline_max_madds);
  o.precision = precision;
  auto aeserve = server::Server::Start(o, spdlog::null_logger_mt("bench"));
  if (!aeserve.ok()) {
    std::fprintf(stderr, "serve_bench: %s\n", aeserve.status().ToString().c_str());
    return 1;
  }
  if (!(*aeserve)->LoadModels().ok()) return 1;
  const int aeserve_port = (*aeserve)->port();

  EchoService echo;
  int echo_port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &echo_port);
  builder.SetMaxReceiveMessageSize(256 << 20);
  builder.RegisterService(&echo);
  auto echo_server = builder.BuildAndStart();

  // Unary latency, interleaved: 10 rounds of 500 calls to each (after 100 warm-up calls), so both
  // see the same machine.
  auto UnaryTable = [&] {
    auto a_stub = v1::Scoring::NewStub(Channel(aeserve_port, 100));
    auto b_stub = bench::Echo::NewStub(Channel(echo_port, 100));
    std::vector<double> a_us, b_us, warm;
    UnaryLatency<v1::Scoring>(*a_stub, 100, &warm);
    UnaryLatency<bench::Echo>(*b_stub, 100, &warm);
    for (int round = 0; round < 10; ++round) {
      UnaryLatency<v1::Scoring>(*a_stub, 500, &a_us);
      UnaryLatency<bench::Echo>(*b_stub, 500, &b_us);
    }
    const auto [a50, a99] = Percentiles(a_us);
    const auto [b50, b99] = Percentiles(b_us);
    std::printf("\nunary Score, one sample, sequential calls, 10 interleaved rounds (us)\n");
    std::printf("%-10s %10s %10s\n", "", "p50", "p99");
    std::printf("%-10s %10.1f %10.1f\n", "aeserve", a50, a99);
    std::printf("%-10s %10.1f %10.1f\n", "grpc echo", b50, b99);
    std::printf("p50 ratio aeserve / echo: %.2fx\n", a50 / b50);
  };
  // The servers stopped and the store removed, for the runs of a single table.
  auto Done = [&] {
    echo_server->Shutdown();
    (*aeserve)->Shutdown();
    std::filesystem::remove_all(dir);
    return 0;
  };
  if (unary_only) {
    UnaryTable();
    return Done();
  }
  engine::ModelOptions in_process;
  in_process.bf16 = precision == "bf16";
  auto model = *engine::Model::Create(*file, in_process);
  std::printf(
      "aeserve serving benchmark: model 38-64-32-8-32-64-38, loopback, %u cores, %d scoring "
      "workers, %s, %.1f s per figure\n\n",
      std::thread::hardware_concurrency(), o.threads, precision.c_str(), seconds);
  // Many streams of small batches (issue #20's coalescing question): what the engine costs per
  // sample at the streams' batch size, and at the size one coalesced batch of all of them would
  // have; the ceilings are the 2-core ceilings of the table below with either engine rate.
  auto SmallTable = [&] {
    std::printf(
        "\nmany streams of small batches: StreamScore samples/s, engine at the batch size "
        "and at batch x streams (one coalesced batch)\n");
    std::printf("%6s %8s %12s %12s %14s %16s %12s %14s %9s\n", "batch", "streams", "aeserve",
                "grpc echo", "engine batch", "engine coalesced", "ceiling", "ceil coalesced",
                "vs echo");
    for (uint32_t rows : {1u, 16u}) {
      const double e = EngineRate(*model, 2, rows, seconds / 2);
      for (int streams : {4, 16}) {
        const double c = EngineRate(*model, 2, rows * static_cast<uint32_t>(streams), seconds / 2);
        const double a = StreamRate<v1::Scoring>(aeserve_port, streams, rows, seconds);
        const double b = StreamRate<bench::Echo>(echo_port, streams, rows, seconds);
        std::printf("%6u %8d %12.0f %12.0f %14.0f %16.0f %12.0f %14.0f %8.0f%%\n", rows, streams, a,
                    b, e, c, 1 / (1 / b + 1 / e), 1 / (1 / b + 1 / c), 100 * a / b);
      }
    }
  };
  if (small_only) {
    SmallTable();
    return Done();
  }
  if (!series_only) {
    std::printf(
        "StreamScore samples/s; ceiling = what the 2 cores allow if aeserve cost nothing but the\n"
        "echo's work and the engine's: 1 / (1/echo + 1/engine 2 thr), and at most engine 1 thr\n"
        "for one stream (its batches are scored one at a time)\n");
    std::printf("%6s %8s %14s %14s %14s %14s %14s %9s %9s\n", "batch", "streams", "aeserve",
                "grpc echo", "engine 1 thr", "engine 2 thr", "ceiling", "vs echo", "vs ceil");
  }
  for (uint32_t rows : {16u, 256u, 4096u}) {
    if (series_only) break;
    const double e1 = EngineRate(*model, 1, rows, seconds / 2);
    const double e2 = EngineRate(*model, 2, rows, seconds / 2);
    for (int streams : {1, 4}) {
      const double a = StreamRate<v1::Scoring>(aeserve_port, streams, rows, seconds);
      const double b = StreamRate<bench::Echo>(echo_port, streams, rows, seconds);
      // The echo's work per sample keeps both cores busy at its rate; the engine's adds to it.
      double ceiling = 1 / (1 / b + 1 / e2);
      if (streams == 1) ceiling = std::min(ceiling, e1);
      std::printf("%6u %8d %14.0f %14.0f %14.0f %14.0f %14.0f %8.0f%% %8.0f%%\n", rows, streams, a,
                  b, e1, e2, ceiling, 100 * a / b, 100 * a / ceiling);
    }
  }
  // The cost of observation: the same server with metrics off (--metrics_port=0), runs interleaved.
  server::Options off = o;
  off.metrics_port = 0;
  auto quiet = server::Server::Start(off, spdlog::null_logger_mt("bench_off"));
  if (!quiet.ok() || !(*quiet)->LoadModels().ok()) return 1;
  std::printf("\nmetrics on vs off, StreamScore samples/s (median of 3 interleaved runs)\n");
  std::printf("%6s %8s %14s %14s %9s\n", "batch", "streams", "metrics on", "metrics off", "cost");
  for (uint32_t rows : {16u, 256u}) {
    if (series_only) break;
    for (int streams : {1, 4}) {
      std::vector<double> on_rates, off_rates;
      for (int rep = 0; rep < 3; ++rep) {
        on_rates.push_back(StreamRate<v1::Scoring>(aeserve_port, streams, rows, seconds));
        off_rates.push_back(StreamRate<v1::Scoring>((*quiet)->port(), streams, rows, seconds));
      }
      std::sort(on_rates.begin(), on_rates.end());
      std::sort(off_rates.begin(), off_rates.end());
      std::printf("%6u %8d %14.0f %14.0f %8.1f%%\n", rows, streams, on_rates[1], off_rates[1],
                  100 * (1 - on_rates[1] / off_rates[1]));
    }
  }
  (*quiet)->Shutdown();

  // The autopilot on the streaming path: every scored row kept (no trigger), and the same with a
  // candidate in shadow (twice the compute, off the response path); runs interleaved.
  if (!series_only) {
    v1::RetrainPolicy keep;
    keep.set_retain_rows(1'000'000);
    keep.set_promotion(v1::PROMOTION_STAGE);
    keep.set_shadow_samples(uint64_t{1} << 50);  // a window that lasts the whole run
    keep.set_shadow_seconds(1e9);
    server::Autopilot& ap = (*aeserve)->autopilot();
    if (!ap.SetPolicy(kept, keep, false, "bench").ok() ||
        !ap.SetPolicy(shadowed, keep, false, "bench").ok() ||
        !ap.StartShadow(shadowed, 2, "bench").ok()) {
      std::fprintf(stderr, "serve_bench: cannot set up the autopilot models\n");
      return 1;
    }
    std::printf(
        "\nautopilot, StreamScore samples/s (median of 3 interleaved runs, the autopilot drained "
        "between runs): no policy; retention "
        "(every row kept, segments written by the autopilot thread); retention + a candidate in "
        "shadow\n");
    std::printf("%6s %8s %12s %12s %8s %14s %8s %10s\n", "batch", "streams", "no policy",
                "retention", "cost", "+ shadow", "cost", "compared");
    const std::string address = "127.0.0.1:" + std::to_string(aeserve_port);
    // Each run starts with the autopilot idle: the shadow candidate has caught up with the
    // batches queued by the last run and the closed segments are written (the open one stays
    // in memory until it is full or 60 s old).
    auto Drained = [&](double rate) {
      if (!ap.WaitForShadowIdle(120)) {
        std::fprintf(stderr, "serve_bench: the shadow queue did not drain within 120 s\n");
      }
      ap.Tick();
      return rate;
    };
    for (uint32_t rows : {256u, 4096u}) {
      for (int streams : {1, 4}) {
        std::vector<double> none, keep_rates, shadow_rates;
        v1::AutopilotStatus before;
        ap.Status(shadowed, &before);
        for (int rep = 0; rep < 3; ++rep) {
          none.push_back(Drained(StreamRate<v1::Scoring>(aeserve_port, streams, rows, seconds)));
          keep_rates.push_back(
              Drained(StreamRate<v1::Scoring>(aeserve_port, streams, rows, seconds, "kept")));
          shadow_rates.push_back(
              Drained(StreamRate<v1::Scoring>(aeserve_port, streams, rows, seconds, "shadowed")));
        }
        v1::AutopilotStatus after;
        ap.Status(shadowed, &after);
        const double compared =
            static_cast<double>(after.shadow().samples() - before.shadow().samples());
        const double dropped = static_cast<double>(after.shadow().dropped_samples() -
                                                   before.shadow().dropped_samples());
        std::sort(none.begin(), none.end());
        std::sort(keep_rates.begin(), keep_rates.end());
        std::sort(shadow_rates.begin(), shadow_rates.end());
        std::printf("%6u %8d %12.0f %12.0f %7.1f%% %14.0f %7.1f%% %9.0f%%\n", rows, streams,
                    none[1], keep_rates[1], 100 * (1 - keep_rates[1] / none[1]), shadow_rates[1],
                    100 * (1 - shadow_rates[1] / none[1]),
                    compared + dropped > 0 ? 100 * compared / (compared + dropped) : 0.0);
      }
    }
    v1::AutopilotStatus k;
    ap.Status(kept, &k);
    std::printf("retention: %llu rows on disk in %u segments, %llu rows not kept (writer behind)\n",
                static_cast<unsigned long long>(k.retained_rows()), k.retained_segments(),
                static_cast<unsigned long long>(k.retained_dropped_rows()));
  }

  std::printf(
      "\nseries model (window %u x %u columns + hour = %u inputs), one row per step, vs the "
      "same model as a plain one sent the windows it would build (rows of %u), StreamScore "
      "rows/s (median of 3 interleaved runs; both send a timestamp per row)\n",
      kWindow, kColumns, kFeatures, kFeatures);
  std::printf("%6s %8s %14s %14s %9s\n", "batch", "streams", "windowed", "plain", "ratio");
  // Both streams go on along the training series (wrapping around after it): the windowed one
  // sends its next rows, the plain one the windows the server would build from them.
  std::vector<float> all_windows;  // window of step i at i * kFeatures (the first kWindow-1 unused)
  {
    engine::WindowBuffer b(sfile->spec().window(), sfile->policy());
    all_windows.resize(series_ts.size() * kFeatures);
    for (size_t i = 0; i < series_ts.size(); ++i) {
      (void)b.Push(series_values.data() + i * kColumns, series_ts[i],
                   all_windows.data() + i * kFeatures);
    }
  }
  const size_t steps = series_ts.size();
  for (uint32_t rows : {256u, 4096u}) {
    // Write `seq` carries steps seq * rows ... (the first kWindow - 1 steps of the series skipped).
    auto step_of = [rows, steps](uint64_t seq, uint32_t i) {
      return kWindow - 1 + (seq * rows + i) % (steps - kWindow + 1);
    };
    // A write's rows: `width` values per step from `source` (row i of it is step i), and times.
    auto steps_from = [&, rows](const float* source, uint32_t width) {
      return [&, rows, source, width](uint64_t seq, v1::StreamScoreRequest* req) {
        auto* v = req->mutable_samples()->mutable_values();
        auto* ts = req->mutable_samples()->mutable_timestamps_ms();
        v->Resize(static_cast<int>(rows * width), 0.f);
        ts->Resize(static_cast<int>(rows), 0);
        for (uint32_t i = 0; i < rows; ++i) {
          std::copy_n(source + step_of(seq, i) * width, width, v->mutable_data() + i * width);
          // Time goes on across wraps, one interval per step.
          ts->Set(static_cast<int>(i),
                  static_cast<int64_t>(seq * rows + i + kWindow - 1) * step_ms);
        }
      };
    };
    const auto windowed = steps_from(series_values.data(), kColumns);
    const auto plain = steps_from(all_windows.data(), kFeatures);
    v1::Samples series, built;
    series.set_num_features(kColumns);
    built.set_num_features(kFeatures);
    for (int streams : {1, 4}) {
      std::vector<double> w, p;
      for (int rep = 0; rep < 3; ++rep) {
        w.push_back(
            aeserve::bench::StreamRate<v1::Scoring>("127.0.0.1:" + std::to_string(aeserve_port),
                                                    "series", series, streams, seconds, windowed));
        p.push_back(
            aeserve::bench::StreamRate<v1::Scoring>("127.0.0.1:" + std::to_string(aeserve_port),
                                                    "windows", built, streams, seconds, plain));
      }
      std::sort(w.begin(), w.end());
      std::sort(p.begin(), p.end());
      std::printf("%6u %8d %14.0f %14.0f %8.0f%%\n", rows, streams, w[1], p[1], 100 * w[1] / p[1]);
    }
  }

  if (!series_only) UnaryTable();
  echo_server->Shutdown();
  (*aeserve)->Shutdown();
  std::filesystem::remove_all(dir);
  return 0;
}
