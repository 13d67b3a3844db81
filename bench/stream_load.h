// The StreamScore load generator of the serving benchmarks (serve_bench, peers_load): streams on
// connections of their own, each writing one batch as fast as flow control allows.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "aeserve/v1/scoring.pb.h"
#include "grpcpp/grpcpp.h"

namespace aeserve::bench {

// A channel with a connection of its own for each `id`, and 256 MB message limits.
inline std::shared_ptr<grpc::Channel> BenchChannel(const std::string& target, int id) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  args.SetInt("aeserve.bench.connection", id);  // distinct args: distinct connections
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

// Samples per second answered over `streams` StreamScore streams for `seconds`, each sending
// `batch` again and again (the first message names `model`). `Stub` is any generated service with
// aeserve.v1's StreamScore signature: aeserve's Scoring, the echo server, the Python peer.
// `each`, when given, adjusts the request before each write (e.g. a series' timestamps).
template <typename Stub>
double StreamRate(const std::string& target, const std::string& model, const v1::Samples& batch,
                  int streams, double seconds,
                  const std::function<void(uint64_t, v1::StreamScoreRequest*)>& each = {}) {
  using Clock = std::chrono::steady_clock;
  std::atomic<uint64_t> answered{0};
  std::vector<std::thread> threads;
  // The clock starts once every stream's connection is up (many streams take a while to
  // connect), or after 30 s at the latest.
  std::mutex mu;
  std::condition_variable all_connected;
  int connected = 0;
  Clock::time_point stop_at;
  for (int s = 0; s < streams; ++s) {
    threads.emplace_back([&, s] {
      auto channel = BenchChannel(target, s);
      auto stub = Stub::NewStub(channel);
      if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
        std::fprintf(stderr, "stream %d: not connected to %s within 10 s\n", s, target.c_str());
      }
      Clock::time_point until;  // this stream's copy of stop_at
      {
        std::unique_lock<std::mutex> lock(mu);
        if (++connected == streams) {
          stop_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(seconds));
          all_connected.notify_all();
        }
        if (all_connected.wait_for(lock, std::chrono::seconds(30),
                                   [&] { return connected == streams; })) {
          until = stop_at;
        } else {
          std::fprintf(stderr, "stream: not every stream connected within 30 s\n");
          until = Clock::now();  // nothing is measured
        }
      }
      grpc::ClientContext ctx;
      auto stream = stub->StreamScore(&ctx);
      std::thread writer([&] {
        v1::StreamScoreRequest req;
        req.mutable_config()->set_model(model);
        *req.mutable_samples() = batch;
        for (uint64_t seq = 0; Clock::now() < until; ++seq) {
          req.set_sequence(seq);
          if (each) each(seq, &req);
          if (!stream->Write(req)) break;
          if (seq == 0) req.clear_config();
        }
        stream->WritesDone();
      });
      v1::StreamScoreResponse r;
      while (stream->Read(&r)) {
        if (r.has_result() && Clock::now() <= until) answered += r.result().num_samples();
      }
      writer.join();
      const grpc::Status st = stream->Finish();
      if (!st.ok())
        std::fprintf(stderr, "stream to %s: %s\n", target.c_str(), st.error_message().c_str());
    });
  }
  for (auto& t : threads) t.join();
  return static_cast<double>(answered.load()) / seconds;
}

}  // namespace aeserve::bench
