// The aeserve binary as users run it: health transitions while the demo model trains, and a clean
// exit on SIGTERM with streams open.
#include "tests/server_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <thread>

#include "aeserve/v1/scoring.grpc.pb.h"
#include "engine/model_file.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "tests/admin_client.h"
#include "tests/test_models.h"
#include "tests/wait_for.h"

// The health proto's generated client lives in gRPC's library; this is its wire form.
#include "grpc/health/v1/health.grpc.pb.h"

namespace aeserve::testing {
namespace {

std::shared_ptr<grpc::Channel> Channel(int port) {
  return grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                             grpc::InsecureChannelCredentials());
}

TEST(ServerProcess, HealthIsNotServingUntilTheDemoModelIsReady) {
  TempDir dir("aeserve_health");
  // The demo file's header and first 1,000 rows: the same path as `make run`, trained in a
  // fraction of the whole file's time.
  TempDir data("aeserve_health_csv");
  const std::string csv = data.path() + "/demo-head.csv";
  {
    std::ifstream in(AESERVE_SOURCE_DIR "/deploy/demo/smd-machine-3-4-train.csv");
    std::ofstream out(csv);
    std::string line;
    for (int i = 0; i <= 1000 && std::getline(in, line); ++i) out << line << '\n';
    ASSERT_TRUE(out.good());
  }
  ServerProcess p;
  ASSERT_TRUE(p.Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                       "--model_dir=" + dir.path(), "--demo_csv=" + csv}))
      << p.log();
  auto stub = grpc::health::v1::Health::NewStub(Channel(p.port()));
  std::vector<int> seen;
  // Up to 120 s: the demo model trains in about a second, but much slower under ThreadSanitizer.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < until) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    if (stub->Check(&ctx, req, &resp).ok()) {
      if (seen.empty() || seen.back() != resp.status()) seen.push_back(resp.status());
      if (resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(seen.size(), 2u) << p.log();
  EXPECT_EQ(seen[0], grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(seen[1], grpc::health::v1::HealthCheckResponse::SERVING);
  // The demo model serves, and was written to the store.
  auto scoring = v1::Scoring::NewStub(Channel(p.port()));
  grpc::ClientContext ctx;
  v1::GetModelRequest req;
  req.set_model("demo");
  v1::ModelInfo info;
  ASSERT_TRUE(scoring->GetModel(&ctx, req, &info).ok());
  EXPECT_EQ(info.num_features(), 38u);
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/demo/1/model.pb"));
  scoring.reset();
  stub.reset();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(20), 0) << p.log();
}

TEST(ServerProcess, SigtermClosesOpenStreamsAndExitsZero) {
  TempDir dir("aeserve_sigterm");
  Store(dir.path(), "plain", TrainSmall(v1::MODEL_KIND_PLAIN));
  ServerProcess p;
  ASSERT_TRUE(p.Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                       "--model_dir=" + dir.path(), "--shutdown_grace_seconds=5"}))
      << p.log();
  auto stub = v1::Scoring::NewStub(Channel(p.port()));
  // Wait until the model serves (it is listed as LOADING before).
  ASSERT_TRUE(WaitFor([&] { return ModelReady(stub.get(), "plain"); }, std::chrono::seconds(10)))
      << p.log();
  constexpr int kStreams = 3;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<
      std::unique_ptr<grpc::ClientReaderWriter<v1::StreamScoreRequest, v1::StreamScoreResponse>>>
      streams;
  auto data = engine::MakeSynthetic(50, 0, kFeatures, 3, 77);
  for (int i = 0; i < kStreams; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    ctxs.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    streams.push_back(stub->StreamScore(ctxs.back().get()));
    v1::StreamScoreRequest req;
    req.mutable_config()->set_model("plain");
    req.set_sequence(1);
    req.mutable_samples()->set_num_features(kFeatures);
    req.mutable_samples()->mutable_values()->Add(data.normal.begin(), data.normal.end());
    ASSERT_TRUE(streams.back()->Write(req));
    v1::StreamScoreResponse resp;
    ASSERT_TRUE(streams.back()->Read(&resp));  // the stream is live and answered
    ASSERT_TRUE(resp.has_result());
  }
  p.Signal(SIGTERM);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& s : streams) {
    v1::StreamScoreResponse resp;
    while (s->Read(&resp)) {
    }
    grpc::Status st = s->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  }
  // Closed with a status right away, not at the end of the grace period.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
  // A client that is done with its streams releases them; gRPC holds the shutdown for calls and
  // connections still open, up to --shutdown_grace_seconds.
  streams.clear();
  ctxs.clear();
  stub.reset();
  EXPECT_EQ(p.Wait(20), 0) << p.log();
  EXPECT_NE(p.log().find("shut down"), std::string::npos);
}

// An idle connection (here one that never answers GOAWAY: an HTTP/2 preface and nothing more) does
// not hold SIGTERM for the grace period: with no call in flight the server closes it and exits.
// (Before, gRPC's shutdown waited for every client to hang up: 2-5 s for an idle gRPC client, the
// 20 s for this one, gRPC's limit for a GOAWAY ping.)
TEST(ServerProcess, AnIdleConnectionDoesNotHoldShutdown) {
  TempDir dir("aeserve_idle_conn");
  Store(dir.path(), "plain", TrainSmall(v1::MODEL_KIND_PLAIN));
  ServerProcess p;
  ASSERT_TRUE(p.Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                       "--model_dir=" + dir.path(), "--shutdown_grace_seconds=60"}))
      << p.log();
  auto stub = v1::Scoring::NewStub(Channel(p.port()));
  ASSERT_TRUE(WaitFor([&] { return ModelReady(stub.get(), "plain"); }, std::chrono::seconds(10)))
      << p.log();
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(p.port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string preface("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0", 33);
  ASSERT_EQ(write(fd, preface.data(), preface.size()), static_cast<ssize_t>(preface.size()));
  // The server has taken the connection when it has answered with its own SETTINGS.
  char frame[9];
  ASSERT_EQ(recv(fd, frame, sizeof frame, MSG_WAITALL), 9);
  EXPECT_EQ(frame[3], 4) << "a SETTINGS frame";
  p.Signal(SIGTERM);
  // Well inside the 60-s grace period, and inside the 20 s after which gRPC gives up on a client
  // that does not answer GOAWAY's ping (the bound leaves room for a slow sanitizer build).
  EXPECT_EQ(p.Wait(10), 0) << p.log();
  close(fd);
}

// Queues a job training a wide model (a model file of about 17 MB, so its write takes long
// enough to kill into, or to fill a small disk), retrying while the server is still loading.
grpc::Status CreateWideJob(v1::ModelAdmin::Stub* admin, const std::vector<float>& data,
                           v1::TrainingJob* job) {
  v1::TrainingJobHeader h;
  h.set_model("plain");
  h.set_num_features(kFeatures);
  h.mutable_spec()->add_encoder_units(2048);
  h.mutable_spec()->add_encoder_units(1024);
  h.mutable_spec()->set_code_size(8);
  h.mutable_options()->set_epochs(1);
  h.mutable_options()->set_batch_size(256);
  grpc::Status st;
  (void)WaitFor([&] { return (st = CreateJob(admin, h, data, job)).ok(); },
                std::chrono::seconds(2));
  return st;  // the caller asserts on the last answer
}

// True once any temp file of an atomic write exists under `dir`.
bool WriteInProgress(const std::string& dir) {
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->path().filename().string().find(".tmp.") != std::string::npos) return true;
  }
  return false;
}

TEST(ServerProcess, SigkillDuringModelWritesLeavesOnlyCompleteVersions) {
  TempDir dir("aeserve_sigkill");
  Store(dir.path(), "plain", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto data = engine::MakeSynthetic(1500, 0, kFeatures, 3, 77);
  int kills_during_write = 0;
  // 4 rounds in `make test`; the soak run sets AESERVE_KILL_ROUNDS=50.
  const int rounds =
      std::getenv("AESERVE_KILL_ROUNDS") ? std::atoi(std::getenv("AESERVE_KILL_ROUNDS")) : 4;
  for (int round = 0; round < rounds; ++round) {
    ServerProcess p;
    ASSERT_TRUE(p.Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                         "--model_dir=" + dir.path()}))
        << p.log();
    auto ch = Channel(p.port());
    auto admin = v1::ModelAdmin::NewStub(ch);
    v1::TrainingJob job;
    const grpc::Status st = CreateWideJob(admin.get(), data.normal, &job);
    ASSERT_TRUE(st.ok()) << st.error_message();
    // Three of every four rounds kill the moment a temp file appears (mid-write); the fourth at a
    // delay that moves with the round, so kills land in training, calibration and writing.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    bool mid_write = false;
    while (std::chrono::steady_clock::now() < until) {
      if (round % 4 < 3 && WriteInProgress(dir.path())) {
        mid_write = true;
        break;
      }
      if (round % 4 == 3) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50 + 37 * (round % 13)));
        break;
      }
    }
    p.Signal(SIGKILL);
    EXPECT_EQ(p.Wait(10), 128 + SIGKILL);
    kills_during_write += mid_write;

    // Every version the store shows is complete; the active one loads.
    server::ModelStore store(dir.path());
    const server::ModelKey key{"plain", ""};
    for (uint64_t v : store.ListVersions(key)) {
      EXPECT_TRUE(store.Load(key, v).ok()) << "version " << v << " is visible but not complete";
    }
    auto active = store.ReadActive(key);
    ASSERT_TRUE(active.ok());
    EXPECT_TRUE(store.Load(key, *active).ok());

    // A restarted server serves the active version.
    ServerProcess again;
    ASSERT_TRUE(again.Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                             "--model_dir=" + dir.path()}));
    auto scoring = v1::Scoring::NewStub(Channel(again.port()));
    v1::ScoreRequest req;
    req.set_model("plain");
    req.mutable_samples()->set_num_features(kFeatures);
    req.mutable_samples()->mutable_values()->Add(data.normal.begin(),
                                                 data.normal.begin() + 5 * kFeatures);
    v1::ScoreResponse resp;
    grpc::Status scored;
    (void)WaitFor(
        [&] {
          grpc::ClientContext ctx;
          return (scored = scoring->Score(&ctx, req, &resp)).ok();
        },
        std::chrono::seconds(5));
    EXPECT_TRUE(scored.ok()) << scored.error_message() << again.log();
    EXPECT_EQ(resp.version(), *active);
    scoring.reset();
    again.Signal(SIGTERM);
    EXPECT_EQ(again.Wait(20), 0);
    EXPECT_FALSE(WriteInProgress(dir.path())) << "restart removes the debris of crashed writers";
  }
  EXPECT_GE(kills_during_write, 1) << "at least one kill must land inside a model write";
  std::printf("SIGKILL rounds: %d, inside a model write: %d\n", rounds, kills_during_write);
}

TEST(ServerProcess, DiskFullWhileSavingFailsTheJobNotTheServer) {
  TempDir dir("aeserve_diskfull");
  const std::string store = dir.path() + "/store";
  std::filesystem::create_directories(store);
  // A 2 MB filesystem: the existing model fits, a 17 MB one does not.
  if (std::system(("mount -t tmpfs -o size=2m tmpfs " + store + " 2>/dev/null").c_str()) != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root)";
  }
  struct Unmount {
    std::string path;
    ~Unmount() { std::system(("umount " + path).c_str()); }
  } unmount{store};
  Store(store, "plain", TrainSmall(v1::MODEL_KIND_PLAIN));
  ServerProcess p;
  ASSERT_TRUE(p.Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                       "--model_dir=" + store}));
  auto ch = Channel(p.port());
  auto admin = v1::ModelAdmin::NewStub(ch);
  auto scoring = v1::Scoring::NewStub(ch);
  auto data = engine::MakeSynthetic(1000, 0, kFeatures, 3, 77);
  v1::TrainingJob job;
  const grpc::Status st = CreateWideJob(admin.get(), data.normal, &job);
  ASSERT_TRUE(st.ok()) << st.error_message();
  auto states = WatchToEnd(admin.get(), job.id());
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back().state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(states.back().error().find("No space left"), std::string::npos)
      << states.back().error();
  // Still serving the version it had; nothing half-written is visible.
  v1::ScoreRequest req;
  req.set_model("plain");
  req.mutable_samples()->set_num_features(kFeatures);
  req.mutable_samples()->mutable_values()->Add(data.normal.begin(),
                                               data.normal.begin() + kFeatures);
  v1::ScoreResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(scoring->Score(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.version(), 1u);
  server::ModelStore s(store);
  EXPECT_EQ(s.ListVersions(server::ModelKey{"plain", ""}), std::vector<uint64_t>{1});
  EXPECT_FALSE(WriteInProgress(store));
  admin.reset();
  scoring.reset();
  ch.reset();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(20), 0);
}

}  // namespace
}  // namespace aeserve::testing
