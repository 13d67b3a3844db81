// An aeserve process on 127.0.0.1 with a channel and both stubs, for tests of the real binary.
#pragma once

#include <signal.h>

#include <cstdlib>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "aeserve/v1/admin.grpc.pb.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "tests/http_get.h"
#include "tests/server_process.h"
#include "tests/test_models.h"
#include "tests/wait_for.h"

namespace aeserve::testing {

struct RunningServer {
  ServerProcess process;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Scoring::Stub> scoring;
  std::unique_ptr<v1::ModelAdmin::Stub> admin;

  // Drops the channel, sends SIGTERM and returns the exit code (-1 if it did not exit in 20 s).
  int Stop() {
    scoring.reset();
    admin.reset();
    channel.reset();
    process.Signal(SIGTERM);
    return process.Wait(20);
  }
};

// The binary under test: AESERVE_TEST_BINARY runs these tests against another build (e.g. an
// older one), else the one built beside the tests.
inline std::string TestBinary() {
  const char* binary = std::getenv("AESERVE_TEST_BINARY");
  return binary != nullptr ? binary : AESERVE_BINARY;
}

// Starts aeserve on a free port with `model_dir` and `extra` flags (metrics off unless given).
inline std::unique_ptr<RunningServer> StartServer(const std::string& model_dir,
                                                  std::vector<std::string> extra = {}) {
  auto r = std::make_unique<RunningServer>();
  std::vector<std::string> args{"--host=127.0.0.1", "--port=0", "--model_dir=" + model_dir};
  bool metrics = false;
  for (const auto& a : extra) metrics = metrics || a.rfind("--metrics_port", 0) == 0;
  if (!metrics) args.push_back("--metrics_port=0");
  args.insert(args.end(), extra.begin(), extra.end());
  if (!r->process.Start(TestBinary(), args)) return r;
  r->channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(r->process.port()),
                                   grpc::InsecureChannelCredentials());
  r->scoring = v1::Scoring::NewStub(r->channel);
  r->admin = v1::ModelAdmin::NewStub(r->channel);
  return r;
}

inline grpc::Status GetModel(RunningServer& r, const std::string& model, v1::ModelInfo* info) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::GetModelRequest req;
  req.set_model(model);
  return r.scoring->GetModel(&ctx, req, info);
}

// Scores `rows` rows whose every value is `value` with `model`'s active version.
inline grpc::Status ScoreFilled(RunningServer& r, const std::string& model, uint32_t features,
                                float value, v1::ScoreResponse* resp, uint32_t rows = 1) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ScoreRequest req;
  req.set_model(model);
  req.mutable_samples()->set_num_features(features);
  req.mutable_samples()->mutable_values()->Resize(static_cast<int>(rows * features), value);
  return r.scoring->Score(&ctx, req, resp);
}

inline grpc::Status ScoreZeros(RunningServer& r, const std::string& model, uint32_t features,
                               v1::ScoreResponse* resp, uint32_t rows = 1) {
  return ScoreFilled(r, model, features, 0.f, resp, rows);
}

// Starts aeserve on a store holding model "m" (kFeatures features) and waits until it scores.
inline std::unique_ptr<RunningServer> Serve(const std::string& dir,
                                            std::vector<std::string> extra = {}) {
  auto r = StartServer(dir, std::move(extra));
  EXPECT_NE(r->process.port(), 0) << r->process.log();
  v1::ScoreResponse resp;
  EXPECT_TRUE(WaitFor([&] { return ScoreZeros(*r, "m", kFeatures, &resp).ok(); },
                      std::chrono::milliseconds(10000)));
  return r;
}

// The /metrics port a server started with --metrics_port=-1 logged; 0 if none.
inline int MetricsPort(RunningServer& r) {
  std::smatch m;
  const std::string log = r.process.log();
  if (!std::regex_search(log, m, std::regex("metrics on http://[^:]+:([0-9]+)"))) return 0;
  return std::stoi(m[1]);
}

// The value of `series` (a name, with its labels if it has any) in exposition text; -1 if absent.
inline double MetricValue(const std::string& text, const std::string& series) {
  for (size_t pos = text.find(series); pos != std::string::npos; pos = text.find(series, pos + 1)) {
    const size_t end = pos + series.size();
    if ((pos == 0 || text[pos - 1] == '\n') && end < text.size() && text[end] == ' ') {
      return std::stod(text.substr(end + 1));
    }
  }
  return -1;
}

}  // namespace aeserve::testing
