// libFuzzer target: sequences of possibly malformed messages on StreamScore and
// CreateTrainingJob against an in-process server over a real channel. Whatever arrives, each call
// ends within its deadline with a status (never a hang), the server never crashes, and it keeps
// answering. Input: byte 0 picks the method (even: StreamScore, odd: CreateTrainingJob) and how
// the client ends (bit 1: half-close; else a 0.2-s deadline ends the call mid-stream); then
// messages as [2-byte little-endian length][bytes].
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "server/model_store.h"
#include "server/server.h"
#include "spdlog/sinks/null_sink.h"
#include "spdlog/spdlog.h"
#include "tests/fuzz/small_model.h"
#include "tests/raw_client.h"

namespace {

using namespace aeserve;

v1::ModelFile SmallModel() {
  v1::ModelFile f = fuzz::SmallModelFile();
  for (int j = 0; j < 4; ++j) f.add_feature_names("f" + std::to_string(j));
  for (int i = 1; i <= 100; ++i) f.add_calibration_errors(0.01f * i);
  f.set_threshold_value(0.9);
  return f;
}

struct Fixture {
  std::string dir;
  std::unique_ptr<server::Server> server;
  std::shared_ptr<grpc::Channel> channel;

  Fixture() {
    dir = (std::filesystem::temp_directory_path() / ("aeserve_fuzz_" + std::to_string(getpid())))
              .string();
    std::filesystem::remove_all(dir);
    server::ModelStore store(dir);
    const server::ModelKey key{"m", ""};
    auto v = store.AddVersion(key, SmallModel());
    if (!v.ok() || !store.WriteActive(key, *v).ok()) std::abort();
    server::Options o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.metrics_port = 0;
    o.model_dir = dir;
    o.threads = 1;
    o.max_training_jobs = 1;
    o.max_queued_jobs = 2;
    o.max_training_values = 4096;
    o.max_message_bytes = 1 << 20;
    o.upload_idle_seconds = 1;
    o.store_poll_seconds = 0;
    auto s = server::Server::Start(o, spdlog::null_logger_mt("fuzz"));
    if (!s.ok() || !(*s)->LoadModels().ok()) std::abort();
    server = *std::move(s);
    channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server->port()),
                                  grpc::InsecureChannelCredentials());
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* f = new Fixture();  // lives for the whole run
  if (size == 0) return 0;
  const bool upload = data[0] & 1;
  const bool half_close = data[0] & 2;
  std::vector<std::string> messages;
  for (size_t i = 1; i + 2 <= size && messages.size() < 32;) {
    const size_t n = std::min<size_t>(data[i] | (data[i + 1] << 8), size - i - 2);
    messages.emplace_back(reinterpret_cast<const char*>(data + i + 2), n);
    i += 2 + n;
  }
  const std::string method =
      upload ? "/aeserve.v1.ModelAdmin/CreateTrainingJob" : "/aeserve.v1.Scoring/StreamScore";
  const aeserve::testing::RawResult r = aeserve::testing::RawStreamCall(
      f->channel, method, messages, half_close, half_close ? 5 : 0.2);
  if (!r.finished) std::abort();  // a call that outlived its deadline by 10 s: a hang
  // The server still answers.
  grpc::ByteBuffer out;
  const grpc::Status st = aeserve::testing::RawUnaryCall(
      f->channel, "/aeserve.v1.Scoring/ListModels", aeserve::testing::ToBuffer(""), &out, 10);
  if (!st.ok()) std::abort();
  return 0;
}
