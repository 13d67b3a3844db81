// Remote-write ingest speed (issue #18): Prometheus-shaped requests of 2,000 samples (its default
// batch: here 250 hosts x 8 features, one scrape each) POSTed over 4 connections to aeserve's
// /api/v1/write with a binding and a model scoring every row, and in the same run to a reference
// endpoint on the same HTTP server code that only reads, snappy-decompresses and decodes the body.
// Rounds alternate between the two; samples/s accepted are printed with the ratio, and samples per
// CPU-second of the server's threads (the client runs in this process, on the same 2 cores).
//
//   build/bench/ingest_bench [--seconds 5] [--rounds 2] [--connections 4] [--threads 1]
//                            [--requests 1200]   (per connection, built before the rounds; a
//                                                 round that uses them up ends early)
#include <pthread.h>
#include <snappy.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "aeserve/v1/admin.grpc.pb.h"
#include "engine/synthetic_data.h"
#include "engine/trainer.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/remote.pb.h"
#include "server/metrics/exposer.h"
#include "server/model_store.h"
#include "server/server.h"
#include "server/write_view.h"
#include "spdlog/sinks/null_sink.h"
#include "spdlog/spdlog.h"
#include "tests/http_get.h"

namespace {

using namespace aeserve;
using Clock = std::chrono::steady_clock;

constexpr int kHosts = 250, kFeatures = 8;
constexpr int64_t kStepMs = 15000;

// One POST on a fresh connection (the endpoint closes after each answer); the HTTP status.
int Post(int port, const std::string& body) {
  return testing::HttpCall(port, "POST", "/api/v1/write",
                           "Content-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\n"
                           "X-Prometheus-Remote-Write-Version: 0.1.0\r\n",
                           body)
      .status;
}

// Connection c's request r: hosts [c*250, c*250+250), scrape r, snappy-compressed.
std::string Request(int c, int r, const std::vector<float>& normal) {
  prometheus::WriteRequest w;
  for (int h = 0; h < kHosts; ++h) {
    const std::string instance = "10.0." + std::to_string(c) + "." + std::to_string(h) + ":9100";
    const size_t row = static_cast<size_t>((r * kHosts + h) % 1500);
    for (int f = 0; f < kFeatures; ++f) {
      prometheus::TimeSeries* ts = w.add_timeseries();
      auto label = [&](const char* name, const std::string& value) {
        prometheus::Label* l = ts->add_labels();
        l->set_name(name);
        l->set_value(value);
      };
      label("__name__", "node_metric_" + std::to_string(f));
      label("instance", instance);
      label("job", "node");
      prometheus::Sample* s = ts->add_samples();
      s->set_value(normal[row * kFeatures + static_cast<size_t>(f)]);
      s->set_timestamp(1'700'000'000'000 + static_cast<int64_t>(r) * kStepMs);
    }
  }
  const std::string raw = w.SerializeAsString();
  std::string out;
  snappy::Compress(raw.data(), raw.size(), &out);
  return out;
}

// CPU seconds of every thread of this process except the clients' (named "client"): the
// server's, with the main thread's (which only waits).
double ServerCpuSeconds() {
  double ticks = 0;
  for (const auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(t.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    if (stat.substr(open + 1, close - open - 1) == "client") continue;
    std::istringstream rest(stat.substr(close + 2));
    std::string field;
    for (int i = 3; i <= 13; ++i) rest >> field;  // state .. cmajflt
    double utime = 0, stime = 0;
    rest >> utime >> stime;
    ticks += utime + stime;
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

struct Round {
  double samples_per_second;
  double per_server_cpu_second;  // samples per CPU-second of the server's threads
  int failures;
};

// Each connection sends its next request as soon as the last is answered, for `seconds`.
// `wrap`: start again from the first request when they run out (the parse-only endpoint does
// not care that timestamps repeat; aeserve would count them late).
Round Run(int port, const std::vector<std::vector<std::string>>& requests, std::vector<int>* next,
          double seconds, bool wrap) {
  std::atomic<uint64_t> samples{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  const double cpu0 = ServerCpuSeconds();
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration<double>(seconds);
  for (size_t c = 0; c < requests.size(); ++c) {
    threads.emplace_back([&, c] {
      pthread_setname_np(pthread_self(), "client");
      int& r = (*next)[c];
      const int n = static_cast<int>(requests[c].size());
      while (Clock::now() < end && (wrap || r < n)) {
        if (wrap) r %= n;
        if (Post(port, requests[c][static_cast<size_t>(r)]) == 200) {
          samples += kHosts * kFeatures;
        } else {
          ++failures;
        }
        ++r;
      }
    });
  }
  for (auto& t : threads) t.join();
  const double s = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu = ServerCpuSeconds() - cpu0;
  return {static_cast<double>(samples.load()) / s, static_cast<double>(samples.load()) / cpu,
          failures.load()};
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 5;
  int rounds = 2, connections = 4, threads = 1, per_conn = 1200;
  bool ingest_only = false;  // for profiling
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "ingest_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--seconds") {
      seconds = std::stod(value());
    } else if (a == "--rounds") {
      rounds = std::stoi(value());
    } else if (a == "--connections") {
      connections = std::stoi(value());
    } else if (a == "--threads") {
      threads = std::stoi(value());
    } else if (a == "--ingest-only") {
      ingest_only = true;
    } else if (a == "--requests") {
      per_conn = std::stoi(value());
    } else {
      std::fprintf(stderr,
                   "usage: ingest_bench [--seconds 5] [--rounds 2] [--connections 4] "
                   "[--threads 1] [--requests 1200] [--ingest-only]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("ingest_bench_" + std::to_string(getpid())))
          .string();
  std::filesystem::create_directories(dir);

  // A model of 8 named features trained on synthetic data; its rows are what the hosts send.
  auto data = engine::MakeSynthetic(1500, 0, kFeatures, 3, 7);
  engine::TrainRequest treq;
  treq.spec.add_encoder_units(16);
  treq.spec.set_code_size(3);
  treq.options.set_epochs(10);
  std::vector<std::string> names;
  for (int f = 0; f < kFeatures; ++f) names.push_back("f" + std::to_string(f));
  auto file = engine::Train(treq, engine::TrainingData{data.normal, 1500, kFeatures, names, {}});
  if (!file.ok()) {
    std::fprintf(stderr, "training: %s\n", std::string(file.status().message()).c_str());
    return 1;
  }
  server::ModelStore store(dir);
  auto v = store.AddVersion({"node", ""}, *file);
  if (!v.ok() || !store.WriteActive({"node", ""}, *v).ok()) return 1;

  server::Options o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.metrics_port = -1;
  o.model_dir = dir;
  o.threads = threads;
  o.store_poll_seconds = 0;
  auto srv = server::Server::Start(o, spdlog::null_logger_mt("ingest_bench"));
  if (!srv.ok() || !(*srv)->LoadModels().ok()) return 1;
  {
    auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string((*srv)->port()),
                                  grpc::InsecureChannelCredentials());
    auto admin = v1::ModelAdmin::NewStub(ch);
    grpc::ClientContext ctx;
    v1::SetIngestBindingRequest req;
    req.set_model("node");
    for (int f = 0; f < kFeatures; ++f) {
      auto* b = req.mutable_binding()->add_features();
      b->set_name(names[static_cast<size_t>(f)]);
      b->set_selector("node_metric_" + std::to_string(f) + "{job=\"node\"}");
    }
    req.mutable_binding()->set_entity_label("instance");
    v1::IngestStatus st;
    if (grpc::Status s = admin->SetIngestBinding(&ctx, req, &st); !s.ok()) {
      std::fprintf(stderr, "bind: %s\n", s.error_message().c_str());
      return 1;
    }
  }
  // The reference: the same HTTP server code, reading, decompressing and decoding only (with
  // the endpoint's decoder).
  auto ref = metrics::Exposer::Start("127.0.0.1", 0, nullptr);
  if (!ref.ok()) return 1;
  (*ref)->Route("/api/v1/write", [](const metrics::HttpRequest& r) {
    metrics::HttpResponse out;
    auto body = r.read_body(64 << 20);
    std::string raw;
    server::WriteView::Shape shape;
    if (!body.ok() || !snappy::Uncompress(body->data(), body->size(), &raw) ||
        !server::MeasureWriteRequest(raw, &shape).ok()) {
      out.status = 400;
      return out;
    }
    server::WriteView view;
    server::DecodeWriteRequest(raw, shape, &view);
    if (view.samples.size() != shape.samples) out.status = 500;
    return out;
  });

  std::printf("building %d requests of %d samples per connection...\n", per_conn,
              kHosts * kFeatures);
  std::vector<std::vector<std::string>> requests(static_cast<size_t>(connections));
  for (int c = 0; c < connections; ++c) {
    for (int r = 0; r < per_conn; ++r) requests[c].push_back(Request(c, r, data.normal));
  }
  std::vector<int> next_ref(static_cast<size_t>(connections), 0),
      next_ingest(static_cast<size_t>(connections), 0);
  std::printf("%d connections, %d scoring thread(s), %.0f s rounds; samples/s accepted\n",
              connections, threads, seconds);
  std::printf("%-6s %14s %14s %8s %16s %16s\n", "round", "decode only", "aeserve", "ratio",
              "decode/server-s", "aeserve/server-s");
  for (int round = 1; round <= rounds; ++round) {
    const Round a =
        ingest_only ? Round{1, 1, 0} : Run((*ref)->port(), requests, &next_ref, seconds, true);
    const Round b = Run((*srv)->ingest_port(), requests, &next_ingest, seconds, false);
    std::printf("%-6d %14.0f %14.0f %7.1f%% %16.0f %16.0f%s\n", round, a.samples_per_second,
                b.samples_per_second, 100 * b.samples_per_second / a.samples_per_second,
                a.per_server_cpu_second, b.per_server_cpu_second,
                a.failures + b.failures > 0 ? "  (some requests failed)" : "");
  }
  ref->reset();
  (*srv)->Shutdown();
  std::filesystem::remove_all(dir);
  return 0;
}
