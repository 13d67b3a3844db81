// Fleet benchmark (issue #17): many per-entity models of the default 38-feature spec (kNN part
// included) in one store, served by one aeserve process with 2 scoring workers. Reports, in one
// run: the server's resident memory with the generic model alone and with every entity model
// loaded (bytes per entity model), the time from start to health SERVING, unary one-row latency
// on random entities beside the generic model, and 16-row batches on random entities beside the
// same batches on the generic model (samples/s). With --memory_mb, the server runs under that
// model-memory budget (--model_memory_mb), so most entities are evicted and scoring one is cold.
//
//   build/bench/fleet_bench [--entities=N] [--seconds=S] [--store=DIR] [--memory_mb=M]
//                           [--aeserve=PATH]
//
// The store is made once per entity count (one trained model, N copies with jittered weights
// and scaler) and reused by later runs.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "engine/model_file.h"
#include "engine/params.h"
#include "engine/spec.h"
#include "engine/synthetic_data.h"
#include "engine/trainer.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/model_store.h"

namespace {

using namespace aeserve;
using Clock = std::chrono::steady_clock;
constexpr uint32_t kFeatures = 38;
constexpr char kModel[] = "fleet";

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string EntityName(int i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "host-%05d", i);
  return buf;
}

// The store for `entities` entity models, made once: the generic model and N jittered copies.
bool MakeStore(const std::string& dir, int entities, const engine::SyntheticData& data) {
  const std::string done = dir + "/.complete";
  if (std::filesystem::exists(done)) return true;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  engine::TrainRequest req;
  req.options.set_epochs(5);
  auto file = engine::Train(
      req, engine::TrainingData{
               absl::MakeConstSpan(data.normal).first(4000 * kFeatures), 4000, kFeatures, {}, {}});
  if (!file.ok()) {
    std::fprintf(stderr, "training: %s\n", file.status().ToString().c_str());
    return false;
  }
  server::ModelStore store(dir);
  const server::ModelKey generic{kModel, ""};
  if (!store.WriteActive(generic, *store.AddVersion(generic, *file)).ok()) return false;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> jitter(0.f, 0.01f);
  const auto start = Clock::now();
  for (int i = 0; i < entities; ++i) {
    v1::ModelFile f = *file;
    for (float& w : *f.mutable_decoder()->rbegin()->mutable_weights()) w += jitter(rng);
    for (float& o : *f.mutable_scaler()->mutable_offset()) o += jitter(rng);
    const server::ModelKey key{kModel, EntityName(i)};
    auto v = store.AddVersion(key, f);
    if (!v.ok() || !store.WriteActive(key, *v).ok()) {
      std::fprintf(stderr, "writing %s: failed\n", key.str().c_str());
      return false;
    }
    if ((i + 1) % 2000 == 0) {
      std::fprintf(stderr, "  store: %d of %d entity models written (%.0f s)\n", i + 1, entities,
                   Seconds(start, Clock::now()));
    }
  }
  std::ofstream(done) << entities << "\n";
  return true;
}

// A wide model alone: 1024 features, 1024-512-32 (neighbours off), random weights.
constexpr uint32_t kWideFeatures = 1024;
bool MakeWideStore(const std::string& dir, size_t* weight_bytes) {
  v1::ModelSpec s;
  s.add_encoder_units(1024);
  s.add_encoder_units(512);
  s.set_code_size(32);
  s.set_neighbors(0);
  const v1::ModelSpec spec = *engine::ResolveSpec(s, kWideFeatures);
  std::mt19937_64 rng(3);
  const engine::Params p = engine::InitParams(spec, rng);
  *weight_bytes = 0;
  for (const auto& l : p.layers) *weight_bytes += (l.weights.size() + l.bias.size()) * 4;
  if (std::filesystem::exists(dir + "/.complete")) return true;
  std::filesystem::remove_all(dir);
  v1::ModelFile f;
  f.set_format_version(engine::kModelFormatVersion);
  *f.mutable_spec() = spec;
  for (uint32_t j = 0; j < kWideFeatures; ++j) {
    f.mutable_scaler()->add_offset(0);
    f.mutable_scaler()->add_scale(1);
  }
  engine::ToModelFile(p, f);
  f.set_threshold_value(1);
  server::ModelStore store(dir);
  const server::ModelKey key{kModel, ""};
  auto v = store.AddVersion(key, f);
  if (!v.ok() || !store.WriteActive(key, *v).ok()) return false;
  std::ofstream(dir + "/.complete") << "1\n";
  return true;
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

double RssMb(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

// One aeserve process: started, SERVING, stopped.
class Server {
 public:
  Server(const std::string& binary, const std::string& store, int memory_mb)
      : port_(FreePort()), start_(Clock::now()) {
    pid_ = fork();
    if (pid_ == 0) {
      const int null = open("/dev/null", O_WRONLY);
      dup2(null, 1);
      dup2(null, 2);
      std::vector<std::string> args = {binary,
                                       absl::StrCat("--port=", port_),
                                       "--host=127.0.0.1",
                                       absl::StrCat("--model_dir=", store),
                                       "--threads=2",
                                       "--metrics_port=0",
                                       "--store_poll_seconds=0"};
      if (memory_mb > 0) args.push_back(absl::StrCat("--model_memory_mb=", memory_mb));
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials());
  }
  ~Server() {
    kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 3000 && waitpid(pid_, &status, WNOHANG) != pid_; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
  }
  // Seconds from start to health SERVING; negative after `timeout_s`.
  double WaitServing(double timeout_s) {
    while (Seconds(start_, Clock::now()) < timeout_s) {
      // A fresh channel (and subchannel) each attempt: no reconnect backoff carried over from
      // the attempts made before the server listened.
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      auto stub = grpc::health::v1::Health::NewStub(grpc::CreateCustomChannel(
          absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials(), args));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
      grpc::health::v1::HealthCheckRequest req;
      grpc::health::v1::HealthCheckResponse resp;
      if (stub->Check(&ctx, req, &resp).ok() &&
          resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
        return Seconds(start_, Clock::now());
      }
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }
  double rss_mb() const { return RssMb(pid_); }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  int port_;
  Clock::time_point start_;
  pid_t pid_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
};

struct Latency {
  double p50_ms = 0, p99_ms = 0;
  int failures = 0;
};

// `calls` one-row Score calls, one at a time, each on a random entity (or the generic model).
Latency OneRow(const Server& s, int entities, int calls, const std::vector<float>& rows,
               uint64_t seed) {
  auto stub = v1::Scoring::NewStub(s.channel());
  std::mt19937_64 rng(seed);
  std::vector<double> ms;
  Latency out;
  for (int i = 0; i < calls; ++i) {
    v1::ScoreRequest req;
    req.set_model(kModel);
    if (entities > 0) req.set_entity(EntityName(static_cast<int>(rng() % entities)));
    const size_t r = rng() % (rows.size() / kFeatures);
    req.mutable_samples()->set_num_features(kFeatures);
    req.mutable_samples()->mutable_values()->Add(rows.begin() + r * kFeatures,
                                                 rows.begin() + (r + 1) * kFeatures);
    grpc::ClientContext ctx;
    v1::ScoreResponse resp;
    const auto t0 = Clock::now();
    if (!stub->Score(&ctx, req, &resp).ok()) ++out.failures;
    ms.push_back(Seconds(t0, Clock::now()) * 1000);
  }
  std::sort(ms.begin(), ms.end());
  out.p50_ms = ms[ms.size() / 2];
  out.p99_ms = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
  return out;
}

// 16-row batches from `threads` client threads for `seconds`: samples/s.
double Batches(const Server& s, int entities, double seconds, int threads,
               const std::vector<float>& rows, int* failures) {
  std::atomic<long> samples{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> ts;
  const auto until = Clock::now() + std::chrono::duration<double>(seconds);
  const auto t0 = Clock::now();
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      auto stub = v1::Scoring::NewStub(s.channel());
      std::mt19937_64 rng(100 + t);
      while (Clock::now() < until) {
        v1::ScoreRequest req;
        req.set_model(kModel);
        if (entities > 0) req.set_entity(EntityName(static_cast<int>(rng() % entities)));
        const size_t r = rng() % (rows.size() / kFeatures - 16);
        req.mutable_samples()->set_num_features(kFeatures);
        req.mutable_samples()->mutable_values()->Add(rows.begin() + r * kFeatures,
                                                     rows.begin() + (r + 16) * kFeatures);
        grpc::ClientContext ctx;
        v1::ScoreResponse resp;
        if (stub->Score(&ctx, req, &resp).ok()) {
          samples += 16;
        } else {
          ++failed;
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  *failures = failed.load();
  return static_cast<double>(samples.load()) / Seconds(t0, Clock::now());
}

std::string Flag(int argc, char** argv, const char* name, const std::string& def) {
  const std::string prefix = absl::StrCat("--", name, "=");
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  }
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  const int entities = std::stoi(Flag(argc, argv, "entities", "10000"));
  const double seconds = std::stod(Flag(argc, argv, "seconds", "5"));
  const int memory_mb = std::stoi(Flag(argc, argv, "memory_mb", "0"));
  const std::string root = Flag(argc, argv, "store", "/tmp/aeserve_fleet_bench");
  const std::string binary =
      Flag(argc, argv, "aeserve",
           (std::filesystem::canonical("/proc/self/exe").parent_path().parent_path() / "server" /
            "aeserve")
               .string());
  const auto data = engine::MakeSynthetic(20000, 0, kFeatures, 6, 11);
  const std::string base_dir = root + "/generic", fleet_dir = absl::StrCat(root, "/", entities);
  if (!MakeStore(base_dir, 0, data) || !MakeStore(fleet_dir, entities, data)) return 1;

  std::printf(
      "aeserve fleet benchmark: %d entity models of the default 38-feature spec (kNN "
      "included), 2 workers%s\n",
      entities, memory_mb > 0 ? absl::StrCat(", --model_memory_mb=", memory_mb).c_str() : "");
  double base_rss = 0;
  {
    Server s(binary, base_dir, 0);
    if (s.WaitServing(60) < 0) {
      std::fprintf(stderr, "the generic-only server did not start\n");
      return 1;
    }
    base_rss = s.rss_mb();
  }
  Server s(binary, fleet_dir, memory_mb);
  const double load_s = s.WaitServing(600);
  if (load_s < 0) {
    std::fprintf(stderr, "the fleet server did not reach SERVING in 600 s\n");
    return 1;
  }
  const double loaded_rss = s.rss_mb();
  std::printf(
      "start to SERVING: %.1f s; RSS generic only %.1f MB, with %d entities %.1f MB "
      "(%.1f KB per entity model)\n",
      load_s, base_rss, entities, loaded_rss,
      (loaded_rss - base_rss) * 1024 / std::max(1, entities));
  const Latency generic = OneRow(s, 0, 2000, data.normal, 1);
  const Latency random = OneRow(s, entities, 2000, data.normal, 2);
  std::printf(
      "one-row Score, p50 / p99 ms: generic model %.3f / %.3f; random entity %.3f / %.3f"
      " (%d failed)\n",
      generic.p50_ms, generic.p99_ms, random.p50_ms, random.p99_ms,
      generic.failures + random.failures);
  int f1 = 0, f2 = 0;
  const double single = Batches(s, 0, seconds, 4, data.normal, &f1);
  const double mix = Batches(s, entities, seconds, 4, data.normal, &f2);
  std::printf(
      "16-row batches, 4 client threads: generic model %.0f samples/s; random-entity mix "
      "%.0f samples/s (%.0f%%; %d failed)\n",
      single, mix, 100 * mix / single, f1 + f2);
  std::printf("RSS after scoring: %.1f MB\n", s.rss_mb());

  // The wide model's RSS is counted over a server with an empty store (the generic-only server
  // above holds the generic model's contexts, 7 MB).
  double empty_rss = 0;
  {
    std::filesystem::create_directories(root + "/empty");
    Server e(binary, root + "/empty", 0);
    if (e.WaitServing(120) < 0) {
      std::fprintf(stderr, "the empty-store server did not start\n");
      return 1;
    }
    empty_rss = e.rss_mb();
  }
  size_t wide_bytes = 0;
  if (!MakeWideStore(root + "/wide", &wide_bytes)) return 1;
  Server w(binary, root + "/wide", 0);
  if (w.WaitServing(120) < 0) {
    std::fprintf(stderr, "the wide-model server did not start\n");
    return 1;
  }
  const double wide_loaded = w.rss_mb();
  auto wide_batches = [&](std::initializer_list<int> sizes) {
    auto stub = v1::Scoring::NewStub(w.channel());
    std::mt19937_64 rng(5);
    std::normal_distribution<float> n(0.f, 1.f);
    for (int rows : sizes) {
      v1::ScoreRequest req;
      req.set_model(kModel);
      req.mutable_samples()->set_num_features(kWideFeatures);
      for (size_t i = 0; i < size_t{kWideFeatures} * rows; ++i) {
        req.mutable_samples()->add_values(n(rng));
      }
      grpc::ClientContext ctx;
      v1::ScoreResponse resp;
      if (!stub->Score(&ctx, req, &resp).ok()) std::fprintf(stderr, "wide: a Score failed\n");
    }
  };
  // Batches up to 256 rows (the most one primitive call runs for this width), twice so that both
  // workers score; then 4096-row batches, whose request and response messages (16 MB each) the
  // server's allocator may keep.
  // Each measured right after the batches and again after the server's memory trim (every 10 s
  // by default: --memory_trim_seconds) has run.
  auto settled = [&] {
    std::this_thread::sleep_for(std::chrono::seconds(11));
    return w.rss_mb();
  };
  wide_batches({1, 16, 256, 1, 16, 256, 200, 100});
  const double wide_small = w.rss_mb();
  const double wide_small_trimmed = settled();
  wide_batches({4096, 4096, 1000});
  const double wide_large = w.rss_mb();
  const double wide_large_trimmed = settled();
  const double mb = wide_bytes / 1048576.0;
  std::printf(
      "wide model (1024 features, 1024-512-32), weights %.1f MB; server RSS over a server with "
      "an empty store (%.1f MB): loaded %.1f MB (%.2fx the weights); after batches of 1-256 rows "
      "%.1f MB (%.2fx), once trimmed %.1f MB (%.2fx); after 4096-row batches %.1f MB (%.2fx), "
      "once trimmed %.1f MB (%.2fx)\n",
      mb, empty_rss, wide_loaded - empty_rss, (wide_loaded - empty_rss) / mb,
      wide_small - empty_rss, (wide_small - empty_rss) / mb, wide_small_trimmed - empty_rss,
      (wide_small_trimmed - empty_rss) / mb, wide_large - empty_rss, (wide_large - empty_rss) / mb,
      wide_large_trimmed - empty_rss, (wide_large_trimmed - empty_rss) / mb);
  return 0;
}
