// The in-process server the service tests share: options for 127.0.0.1 with free ports, a
// started server with its models loaded, and a channel to it.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "spdlog/sinks/null_sink.h"
#include "spdlog/spdlog.h"

namespace aeserve::testing {

// 127.0.0.1, any free gRPC and metrics port, the given store, 2 scoring threads; a test changes
// what it needs before StartTestServer.
inline server::Options TestOptions(const std::string& model_dir) {
  server::Options o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.metrics_port = -1;
  o.model_dir = model_dir;
  o.threads = 2;
  return o;
}

// Starts a server and loads its models (health SERVING). Null, with the test failed, when either
// fails.
inline std::unique_ptr<server::Server> StartTestServer(const server::Options& o) {
  static std::atomic<int> n{0};
  auto s = server::Server::Start(o, spdlog::null_logger_mt("test_server_" + std::to_string(n++)));
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return nullptr;
  const absl::Status loaded = (*s)->LoadModels();
  EXPECT_TRUE(loaded.ok()) << loaded;
  return loaded.ok() ? *std::move(s) : nullptr;
}

// A plaintext channel to `s`; `max_message_bytes` > 0 raises the client's message limits.
inline std::shared_ptr<grpc::Channel> Connect(server::Server& s, int max_message_bytes = 0) {
  grpc::ChannelArguments args;
  if (max_message_bytes > 0) {
    args.SetMaxReceiveMessageSize(max_message_bytes);
    args.SetMaxSendMessageSize(max_message_bytes);
  }
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(s.port()),
                                   grpc::InsecureChannelCredentials(), args);
}

}  // namespace aeserve::testing
