// The aeserve binary as users run it: health transitions while the demo model trains, and a clean
// exit on SIGTERM with streams open.
#include <signal.h>

#include <thread>

#include "aeserve/v1/scoring.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "server_process.h"
#include "test_models.h"

// The health proto's generated client lives in gRPC's library; this is its wire form.
#include "grpc/health/v1/health.grpc.pb.h"

namespace aeserve::testing {
namespace {

std::shared_ptr<grpc::Channel> Channel(int port) {
  return grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
}

TEST(ServerProcess, HealthIsNotServingUntilTheDemoModelIsReady) {
  TempDir dir("aeserve_health");
  ServerProcess p;
  ASSERT_TRUE(p.Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                       "--model_dir=" + dir.path(),
                                       "--demo_csv=" AESERVE_SOURCE_DIR "/deploy/demo/smd-machine-2-1-train.csv"}))
      << p.log();
  auto stub = grpc::health::v1::Health::NewStub(Channel(p.port()));
  std::vector<int> seen;
  for (int i = 0; i < 3000; ++i) {  // at most ~30 s
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
                                       "--model_dir=" + dir.path(),
                                       "--shutdown_grace_seconds=5"}))
      << p.log();
  auto stub = v1::Scoring::NewStub(Channel(p.port()));
  // Wait until the model serves.
  for (int i = 0; i < 500; ++i) {
    grpc::ClientContext ctx;
    v1::GetModelRequest req;
    req.set_model("plain");
    v1::ModelInfo info;
    if (stub->GetModel(&ctx, req, &info).ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  constexpr int kStreams = 3;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReaderWriter<v1::StreamScoreRequest, v1::StreamScoreResponse>>> streams;
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

}  // namespace
}  // namespace aeserve::testing
