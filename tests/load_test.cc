// Load and soak on 127.0.0.1: many streams, unary calls, a retrain and version swaps at once, for
// AESERVE_LOAD_SECONDS (8 in `make test`, 180 in the soak run). No call may fail but the
// deliberate ones, the server's memory and open files stay flat, and a flood beyond capacity is
// refused with RESOURCE_EXHAUSTED quickly rather than queued without bound.
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <thread>

#include "aeserve/v1/scoring.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/admin_client.h"
#include "tests/server_process.h"
#include "tests/test_models.h"
#include "tests/wait_for.h"

namespace aeserve::testing {
namespace {

long ResidentKb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

long OpenFds(pid_t pid) {
  long n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

TEST(Load, MixedLoadWithRetrainAndSwapsThenAFlood) {
  const double seconds =
      std::getenv("AESERVE_LOAD_SECONDS") ? std::atof(std::getenv("AESERVE_LOAD_SECONDS")) : 15;
  TempDir dir("aeserve_load");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  // The flood scores a wide model: much compute per byte, so calls arrive faster than two workers
  // can score them whatever the machine (a tiny model is scored as fast as gRPC delivers it).
  Store(dir.path(), "wide", TrainModel(v1::MODEL_KIND_PLAIN, 1, {1024, 512}, 1));
  ServerProcess server;
  ASSERT_TRUE(server.Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                            "--model_dir=" + dir.path(), "--threads=2",
                                            "--max_queue=32", "--max_streams=64"}));
  const std::string target = "127.0.0.1:" + std::to_string(server.port());
  auto channel = [&](int i) {
    grpc::ChannelArguments args;
    args.SetInt("aeserve.test.connection", i);
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  };
  auto data = engine::MakeSynthetic(2000, 0, kFeatures, 3, 77);
  auto admin = v1::ModelAdmin::NewStub(channel(100));
  {  // wait until the model serves (it is listed as LOADING before)
    auto scoring = v1::Scoring::NewStub(channel(101));
    ASSERT_TRUE(WaitFor([&] { return ModelReady(scoring.get(), "m"); }, std::chrono::seconds(30)))
        << server.log();
  }

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> stream_batches{0}, unary_calls{0}, failures{0};
  std::mutex mu;
  std::vector<double> latency_us;
  // Every failure is counted; the first few are printed with their status.
  auto fail = [&](const char* what, int code, const std::string& message) {
    if (++failures <= 5) {
      std::lock_guard<std::mutex> lock(mu);
      std::printf("failure (%s): code %d: %s\n", what, code, message.c_str());
    }
  };
  std::vector<std::thread> threads;
  struct StopAndJoin {  // also on an early return from a failed ASSERT
    std::atomic<bool>& stop;
    std::vector<std::thread>& threads;
    ~StopAndJoin() {
      stop = true;
      for (auto& t : threads)
        if (t.joinable()) t.join();
    }
  } stop_and_join{stop, threads};
  for (int s = 0; s < 8; ++s) {  // streams
    threads.emplace_back([&, s] {
      auto stub = v1::Scoring::NewStub(channel(s));
      while (!stop) {
        grpc::ClientContext ctx;
        auto stream = stub->StreamScore(&ctx);
        std::thread writer([&] {
          for (int i = 0; i < 200 && !stop; ++i) {
            v1::StreamScoreRequest req;
            if (i == 0) req.mutable_config()->set_model("m");
            req.set_sequence(i);
            req.mutable_samples()->set_num_features(kFeatures);
            const size_t at = (i * 64) % 1900;
            req.mutable_samples()->mutable_values()->Add(
                data.normal.begin() + at * kFeatures, data.normal.begin() + (at + 64) * kFeatures);
            if (!stream->Write(req)) break;
          }
          stream->WritesDone();
        });
        v1::StreamScoreResponse r;
        while (stream->Read(&r)) {
          if (r.has_error())
            fail("stream batch", r.error().code(), r.error().message());
          else if (r.has_result())
            ++stream_batches;
        }
        writer.join();
        if (grpc::Status st = stream->Finish(); !st.ok()) {
          fail("stream", st.error_code(), st.error_message());
        }
      }
    });
  }
  for (int u = 0; u < 2; ++u) {  // unary callers
    threads.emplace_back([&, u] {
      auto stub = v1::Scoring::NewStub(channel(10 + u));
      v1::ScoreRequest req;
      req.set_model("m");
      req.mutable_samples()->set_num_features(kFeatures);
      req.mutable_samples()->mutable_values()->Add(data.normal.begin(),
                                                   data.normal.begin() + 16 * kFeatures);
      while (!stop) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
        v1::ScoreResponse resp;
        const auto t = std::chrono::steady_clock::now();
        if (grpc::Status st = stub->Score(&ctx, req, &resp); !st.ok()) {
          fail("unary", st.error_code(), st.error_message());
        }
        const double us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t).count();
        ++unary_calls;
        std::lock_guard<std::mutex> lock(mu);
        latency_us.push_back(us);
      }
    });
  }
  // Warm up, then take the baseline of memory and open files.
  std::this_thread::sleep_for(std::chrono::duration<double>(std::min(3.0, seconds / 5)));
  const long rss_before = ResidentKb(server.pid()), fds_before = OpenFds(server.pid());
  // A retrain and version swaps while the load runs.
  v1::TrainingJobHeader h;
  h.set_model("m");
  h.set_num_features(kFeatures);
  h.mutable_options()->set_epochs(5);
  v1::TrainingJob job;
  const grpc::Status created = CreateJob(admin.get(), h, data.normal, &job);
  ASSERT_TRUE(created.ok()) << created.error_code() << " " << created.error_message();
  EXPECT_EQ(WatchToEnd(admin.get(), job.id()).back().state(), v1::JOB_STATE_SUCCEEDED);
  int swaps = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    grpc::ClientContext ctx;
    v1::ActivateVersionRequest req;
    req.set_model("m");
    req.set_version(1 + swaps % 2);
    v1::ModelInfoBrief b;
    if (grpc::Status st = admin->ActivateVersion(&ctx, req, &b); !st.ok()) {
      fail("activate", st.error_code(), st.error_message());
    }
    ++swaps;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  const long rss_after = ResidentKb(server.pid()), fds_after = OpenFds(server.pid());
  stop = true;
  for (auto& t : threads) t.join();
  threads.clear();

  std::sort(latency_us.begin(), latency_us.end());
  const double p50 = latency_us[latency_us.size() / 2],
               p99 = latency_us[latency_us.size() * 99 / 100];
  std::printf(
      "load %.0f s: %llu stream batches, %llu unary calls (p50 %.0f us, p99 %.0f us), %d swaps, "
      "1 retrain; failures %llu; RSS %ld -> %ld kB; fds %ld -> %ld\n",
      seconds, (unsigned long long)stream_batches.load(), (unsigned long long)unary_calls.load(),
      p50, p99, swaps, (unsigned long long)failures.load(), rss_before, rss_after, fds_before,
      fds_after);
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_GT(stream_batches.load(), 100u);
  EXPECT_LT(rss_after - rss_before, 64 * 1024) << "resident memory must stay flat (64 MB bound)";
  EXPECT_LE(fds_after - fds_before, 4) << "open files must stay flat";

  // A flood beyond capacity: 400 calls of 2000 rows on the wide model at once against a queue
  // of 32. Calls this heavy are never scored on a gRPC thread (--inline_max_madds), so they reach
  // the queue and its bound at once.
  auto stub = v1::Scoring::NewStub(channel(200));
  v1::ScoreRequest big;
  big.set_model("wide");
  big.mutable_samples()->set_num_features(kFeatures);
  big.mutable_samples()->mutable_values()->Add(data.normal.begin(), data.normal.end());
  std::atomic<int> ok{0}, exhausted{0}, other{0}, done{0};
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs(400);
  std::vector<v1::ScoreResponse> resps(400);
  const auto flood_start = std::chrono::steady_clock::now();
  for (int i = 0; i < 400; ++i) {
    ctxs[i] = std::make_unique<grpc::ClientContext>();
    ctxs[i]->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    stub->async()->Score(ctxs[i].get(), &big, &resps[i], [&](grpc::Status st) {
      if (st.ok())
        ++ok;
      else if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED)
        ++exhausted;
      else
        ++other;
      ++done;
    });
  }
  for (int i = 0; i < 6000 && done < 400; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const double flood_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - flood_start).count();
  std::printf(
      "flood: 400 calls of 2000 rows (wide model): %d OK, %d RESOURCE_EXHAUSTED, %d other, in %.1f "
      "s\n",
      ok.load(), exhausted.load(), other.load(), flood_s);
  EXPECT_EQ(done.load(), 400);
  EXPECT_GT(exhausted.load(), 0) << "a queue of 32 cannot take 400 calls";
  EXPECT_GT(ok.load(), 0);
  EXPECT_EQ(other.load(), 0);
  stub.reset();
  admin.reset();
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30), 0);
}

}  // namespace
}  // namespace aeserve::testing
