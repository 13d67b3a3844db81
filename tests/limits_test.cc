// Resource bounds under abuse (issue #12, items 4 and 6-10), against the real binary: idle
// watchers, never-reading streams, oversized messages, idle connections to /metrics, malformed
// stream messages and oversized stream answers.
#include <algorithm>
#include <atomic>
#include <fstream>
#include <thread>

#include "gtest/gtest.h"
#include "tests/http_get.h"
#include "tests/process_client.h"
#include "tests/raw_client.h"
#include "tests/test_models.h"
#include "tests/wait_for.h"

namespace aeserve::testing {
namespace {

using std::chrono::milliseconds;

// Resident memory of a process in MB (from /proc).
double RssMb(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

// A WatchAnomalies call that never reads: its events pile up on the server.
class StalledWatcher : public grpc::ClientReadReactor<v1::AnomalyEvent> {
 public:
  StalledWatcher(v1::Scoring::Stub* stub) {
    v1::WatchAnomaliesRequest req;
    stub->async()->WatchAnomalies(&ctx_, &req, this);
    StartCall();
  }
  ~StalledWatcher() override {
    ctx_.TryCancel();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10), [&] { return done_; });
  }
  void OnDone(const grpc::Status& s) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = s;
    done_ = true;
    cv_.notify_all();
  }
  bool Done(grpc::Status* s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) *s = status_;
    return done_;
  }

 private:
  grpc::ClientContext ctx_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  grpc::Status status_;
};

TEST(Limits, WatchersAreBoundedAndStalledOnesCostLittle) {
  TempDir dir("aeserve_watchers");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  constexpr int kWatchers = 1000;
  auto r = Serve(dir.path(), {"--max_watchers=" + std::to_string(kWatchers), "--metrics_port=-1"});
  std::vector<std::unique_ptr<StalledWatcher>> watchers;
  for (int i = 0; i < kWatchers; ++i)
    watchers.push_back(std::make_unique<StalledWatcher>(r->scoring.get()));
  const int metrics_port = MetricsPort(*r);
  double open = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        open = MetricValue(HttpGet(metrics_port, "/metrics"), "aeserve_anomaly_watchers");
        return open == kWatchers;
      },
      milliseconds(30000)))
      << open;
  // One more is refused.
  grpc::Status extra_status;
  ASSERT_TRUE(WaitFor(
      [&] {
        StalledWatcher extra(r->scoring.get());
        if (!WaitFor([&] { return extra.Done(&extra_status); }, milliseconds(200))) return false;
        return extra_status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
      },
      milliseconds(30000)));
  EXPECT_NE(extra_status.error_message().find("--max_watchers"), std::string::npos);
  for (auto& w : watchers) {
    grpc::Status s;
    ASSERT_FALSE(w->Done(&s)) << s.error_message();
  }
  // 10 batches of 2,000 anomalous rows, each event offered to 1,000 stalled watchers: scoring
  // stays correct, and memory stays small because watchers share the events.
  const double before = RssMb(r->process.pid());
  for (int i = 0; i < 10; ++i) {
    v1::ScoreResponse resp;
    ASSERT_TRUE(ScoreFilled(*r, "m", kFeatures, 50.f, &resp, 2000).ok());
    ASSERT_EQ(resp.num_anomalies(), 2000u);
  }
  // Wait for the fan-out: each watcher keeps at most its buffer (1024) plus what its stream's
  // flow-control window took, so it drops most of the 20,000; done once the count stops moving.
  double dropped = 0, last = -1;
  EXPECT_TRUE(WaitFor(
      [&] {
        last = dropped;
        dropped =
            MetricValue(HttpGet(metrics_port, "/metrics"), "aeserve_anomaly_events_dropped_total");
        return dropped == last && dropped >= kWatchers * 16000.0;
      },
      milliseconds(60000), milliseconds(200)))
      << dropped;
  const double after = RssMb(r->process.pid());
  std::printf(
      "server RSS with %d stalled watchers: %.0f MB before, %.0f MB after 20,000 anomalies\n",
      kWatchers, before, after);
  EXPECT_LT(after - before, 100) << "stalled watchers must share events, not copy them";
  watchers.clear();
  EXPECT_EQ(r->Stop(), 0) << r->process.log();
}

TEST(Limits, IdleConnectionsDoNotStarveTheScraper) {
  TempDir dir("aeserve_idle_http");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto r = Serve(dir.path(), {"--metrics_port=-1"});
  const int port = MetricsPort(*r);
  ASSERT_GT(port, 0);
  // 20 connections that never send a request (two were enough to block every scrape before).
  std::vector<int> idle;
  for (int i = 0; i < 20; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    idle.push_back(fd);
  }
  // HttpGet gives up after 5 s without an answer.
  const std::string text = HttpGet(port, "/metrics");
  EXPECT_NE(text.find("aeserve_open_streams"), std::string::npos)
      << "scrape starved by idle connections";
  for (int fd : idle) close(fd);
  EXPECT_EQ(r->Stop(), 0);
}

TEST(Limits, MetricsCanListenOnAnotherAddress) {
  TempDir dir("aeserve_metrics_host");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto r = Serve(dir.path(), {"--metrics_port=-1", "--metrics_host=127.0.0.2"});
  EXPECT_NE(r->process.log().find("metrics on http://127.0.0.2:"), std::string::npos)
      << r->process.log();
  EXPECT_EQ(HttpGet(MetricsPort(*r), "/metrics"), "") << "not on 127.0.0.1";
  EXPECT_EQ(r->Stop(), 0);
}

// Polls a process's resident memory until stopped; reports the peak.
class PeakRss {
 public:
  explicit PeakRss(pid_t pid) : pid_(pid), base_(RssMb(pid)), peak_(base_) {
    thread_ = std::thread([this] {
      while (!stop_) {
        peak_ = std::max(peak_.load(), RssMb(pid_));
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  double Growth() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return peak_ - base_;
  }
  ~PeakRss() { Growth(); }

 private:
  const pid_t pid_;
  const double base_;
  std::atomic<double> peak_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST(Limits, HugeMessagesAreRefusedBeforeTheyAreBuffered) {
  TempDir dir("aeserve_huge_msg");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  { std::ofstream(dir.path() + "/tokens") << "admin-token admin\n"; }
  auto r = StartServer(dir.path(), {"--auth_tokens=" + dir.path() + "/tokens"});
  ASSERT_NE(r->process.port(), 0) << r->process.log();
  auto score_ok = [&] {
    v1::ScoreResponse resp;
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer admin-token");
    v1::ScoreRequest req;
    req.set_model("m");
    req.mutable_samples()->set_num_features(kFeatures);
    req.mutable_samples()->mutable_values()->Resize(kFeatures, 0.f);
    return r->scoring->Score(&ctx, req, &resp).ok();
  };
  ASSERT_TRUE(WaitFor(score_ok, milliseconds(10000)));
  const std::string method = "/aeserve.v1.Scoring/Score";
  {
    // Two 768 MiB messages without a token, at once.
    PeakRss rss(r->process.pid());
    const grpc::ByteBuffer body = HugeMessage(size_t{768} << 20);
    std::vector<grpc::Status> st(2);
    std::vector<std::thread> calls;
    for (int i = 0; i < 2; ++i) {
      calls.emplace_back([&, i] {
        grpc::ByteBuffer out;
        st[i] = RawUnaryCall(r->channel, method, body, &out);
      });
    }
    for (auto& t : calls) t.join();
    const double growth = rss.Growth();
    std::printf("two 768 MiB unauthenticated messages: server RSS +%.0f MB\n", growth);
    for (const auto& s : st) EXPECT_NE(s.error_code(), grpc::StatusCode::OK);
    EXPECT_LT(growth, 100);
  }
  {
    // One 1 GiB message with a valid token.
    PeakRss rss(r->process.pid());
    grpc::ByteBuffer out;
    const grpc::Status st =
        RawUnaryCall(r->channel, method, HugeMessage(size_t{1} << 30), &out, 30, "admin-token");
    const double growth = rss.Growth();
    std::printf("one 1 GiB message: %s, server RSS +%.0f MB\n", st.error_message().c_str(), growth);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_LT(growth, 100);
  }
  EXPECT_TRUE(score_ok()) << "normal calls go on";
  EXPECT_EQ(r->Stop(), 0);
}

// With tokens required, a call without one is refused before its request is read (#12 item 4):
// every method whose request gRPC would read up front (the 18 unary methods and the two watch
// calls), flooded at once with 24 MiB bodies (4 x 20 calls, 1.9 GB in all), answers UNAUTHENTICATED
// — never RESOURCE_EXHAUSTED, which a server that read the bodies into its 48 MiB gRPC buffer quota
// would answer — the server's memory stays flat, and an authorised call made during the flood is
// answered.
TEST(Limits, UnauthenticatedRequestBodiesAreNeverRead) {
  TempDir dir("aeserve_auth_first");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  { std::ofstream(dir.path() + "/tokens") << "admin-token admin\n"; }
  auto r =
      StartServer(dir.path(), {"--auth_tokens=" + dir.path() + "/tokens", "--metrics_port=-1"});
  ASSERT_NE(r->process.port(), 0) << r->process.log();
  auto score_ok = [&] {
    v1::ScoreResponse resp;
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer admin-token");
    v1::ScoreRequest req;
    req.set_model("m");
    req.mutable_samples()->set_num_features(kFeatures);
    req.mutable_samples()->mutable_values()->Resize(kFeatures, 0.f);
    return r->scoring->Score(&ctx, req, &resp).ok() && resp.scores_size() == 1;
  };
  ASSERT_TRUE(WaitFor(score_ok, milliseconds(10000)));
  const std::vector<std::string> methods = {"/aeserve.v1.Scoring/Score",
                                            "/aeserve.v1.Scoring/Encode",
                                            "/aeserve.v1.Scoring/Reconstruct",
                                            "/aeserve.v1.Scoring/Generate",
                                            "/aeserve.v1.Scoring/ListModels",
                                            "/aeserve.v1.Scoring/GetModel",
                                            "/aeserve.v1.ModelAdmin/GetTrainingJob",
                                            "/aeserve.v1.ModelAdmin/ListTrainingJobs",
                                            "/aeserve.v1.ModelAdmin/CancelTrainingJob",
                                            "/aeserve.v1.ModelAdmin/ActivateVersion",
                                            "/aeserve.v1.ModelAdmin/DeleteVersion",
                                            "/aeserve.v1.ModelAdmin/DeleteModel",
                                            "/aeserve.v1.ModelAdmin/SetThreshold",
                                            "/aeserve.v1.ModelAdmin/SetScoringPolicy",
                                            "/aeserve.v1.ModelAdmin/ListEvents",
                                            "/aeserve.v1.ModelAdmin/SetRetrainPolicy",
                                            "/aeserve.v1.ModelAdmin/Retrain",
                                            "/aeserve.v1.ModelAdmin/StartShadow",
                                            "/aeserve.v1.Scoring/WatchAnomalies",
                                            "/aeserve.v1.ModelAdmin/WatchTrainingJob"};
  const grpc::ByteBuffer body = HugeMessage(size_t{24} << 20);
  PeakRss rss(r->process.pid());
  std::vector<grpc::Status> st(methods.size() * 4);
  std::vector<std::thread> calls;
  for (size_t i = 0; i < st.size(); ++i) {
    calls.emplace_back([&, i] {
      grpc::ByteBuffer out;
      st[i] = RawUnaryCall(r->channel, methods[i % methods.size()], body, &out, 30);
    });
  }
  const bool served_during_flood = score_ok();
  for (auto& t : calls) t.join();
  const double growth = rss.Growth();
  std::printf("%zu unauthenticated 24 MiB calls: server RSS +%.0f MB\n", st.size(), growth);
  for (size_t i = 0; i < st.size(); ++i) {
    EXPECT_EQ(st[i].error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << methods[i % methods.size()] << ": " << st[i].error_message();
  }
  EXPECT_TRUE(served_during_flood);
  EXPECT_LT(growth, 40);
  // Refused scoring calls are counted as on the unary path: 4 Score calls, UNAUTHENTICATED.
  const std::string text = HttpGet(MetricsPort(*r), "/metrics");
  EXPECT_EQ(
      std::max(MetricValue(text, "aeserve_requests_total{rpc=\"Score\",code=\"UNAUTHENTICATED\"}"),
               MetricValue(text, "aeserve_requests_total{code=\"UNAUTHENTICATED\",rpc=\"Score\"}")),
      4)
      << text;
  // A call with a token but no request message (a client that half-closes at once) is told so;
  // one whose message does not parse is told which type it is not.
  RawResult none =
      RawStreamCall(r->channel, "/aeserve.v1.Scoring/Score", {}, true, 20, "admin-token");
  ASSERT_TRUE(none.finished);
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(none.status.error_message().find("before its request message"), std::string::npos)
      << none.status.error_message();
  grpc::ByteBuffer out;
  const grpc::Status junk =
      RawUnaryCall(r->channel, "/aeserve.v1.ModelAdmin/ActivateVersion",
                   ToBuffer(std::string("\xff\xff\xff\xff\x0f junk", 11)), &out, 20, "admin-token");
  EXPECT_EQ(junk.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(junk.error_message().find("does not parse as aeserve.v1.ActivateVersionRequest"),
            std::string::npos)
      << junk.error_message();
  EXPECT_TRUE(score_ok()) << "normal calls go on";
  EXPECT_EQ(r->Stop(), 0);
}

std::string StreamMessage(uint64_t sequence, uint32_t rows, bool config, bool per_feature = false) {
  v1::StreamScoreRequest req;
  req.set_sequence(sequence);
  if (config) {
    req.mutable_config()->set_model("m");
    req.mutable_config()->mutable_options()->set_per_feature(per_feature);
  }
  if (rows > 0) {
    req.mutable_samples()->set_num_features(kFeatures);
    req.mutable_samples()->mutable_values()->Resize(static_cast<int>(rows * kFeatures), 0.25f);
  }
  return req.SerializeAsString();
}

TEST(Limits, MalformedMessagesGetAStatusThatNamesThem) {
  TempDir dir("aeserve_malformed");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto r = Serve(dir.path(), {"--max_message_bytes=1048576", "--metrics_port=-1"});
  const std::string junk("\xff\xff\xff\xff\x0f junk", 11);
  // A stream: the junk message gets an error item in its place, and the batches after it are
  // answered (in order).
  RawResult res = RawStreamCall(r->channel, "/aeserve.v1.Scoring/StreamScore",
                                {StreamMessage(1, 4, true), junk, StreamMessage(3, 4, false)});
  ASSERT_TRUE(res.finished);
  EXPECT_TRUE(res.status.ok()) << res.status.error_message();
  ASSERT_EQ(res.responses.size(), 3u);
  v1::StreamScoreResponse a, b, c;
  ASSERT_TRUE(a.ParseFromString(res.responses[0]));
  ASSERT_TRUE(b.ParseFromString(res.responses[1]));
  ASSERT_TRUE(c.ParseFromString(res.responses[2]));
  EXPECT_EQ(a.result().num_samples(), 4u);
  EXPECT_EQ(b.error().code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_NE(
      b.error().message().find("stream message 2 does not parse as aeserve.v1.StreamScoreRequest"),
      std::string::npos)
      << b.error().message();
  EXPECT_EQ(c.sequence(), 3u);
  EXPECT_EQ(c.result().num_samples(), 4u);
  // Unary calls of both services.
  for (const std::string method : {"/aeserve.v1.Scoring/Score", "/aeserve.v1.Scoring/GetModel",
                                   "/aeserve.v1.ModelAdmin/ActivateVersion"}) {
    grpc::ByteBuffer out;
    const grpc::Status st = RawUnaryCall(r->channel, method, ToBuffer(junk), &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_NE(st.error_message().find("does not parse as aeserve.v1."), std::string::npos)
        << method << ": " << st.error_message();
  }
  // ... and counted like any other refused call.
  const std::string text = HttpGet(MetricsPort(*r), "/metrics");
  const double refused = std::max(
      MetricValue(text, "aeserve_requests_total{rpc=\"Score\",code=\"INVALID_ARGUMENT\"}"),
      MetricValue(text, "aeserve_requests_total{code=\"INVALID_ARGUMENT\",rpc=\"Score\"}"));
  EXPECT_EQ(refused, 1) << text;
  // An answer over the message limit (per-feature errors of 20,000 rows; the request itself
  // fits) becomes an error item, and the stream goes on.
  res = RawStreamCall(r->channel, "/aeserve.v1.Scoring/StreamScore",
                      {StreamMessage(1, 20000, true, true), StreamMessage(2, 4, false)});
  ASSERT_TRUE(res.finished);
  EXPECT_TRUE(res.status.ok()) << res.status.error_message();
  ASSERT_EQ(res.responses.size(), 2u);
  ASSERT_TRUE(a.ParseFromString(res.responses[0]));
  ASSERT_TRUE(b.ParseFromString(res.responses[1]));
  EXPECT_EQ(a.sequence(), 1u);
  EXPECT_EQ(a.error().code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_NE(a.error().message().find("--max_message_bytes"), std::string::npos)
      << a.error().message();
  EXPECT_EQ(b.result().num_samples(), 4u);
  EXPECT_EQ(r->Stop(), 0);
}

// A StreamScore call whose client sends `count` messages and never reads an answer.
class NeverReadingStream : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  NeverReadingStream(const std::shared_ptr<grpc::Channel>& channel, std::string first,
                     std::string rest, int count)
      : stub_(channel), first_(std::move(first)), rest_(std::move(rest)), left_(count) {
    stub_.PrepareBidiStreamingCall(&ctx_, "/aeserve.v1.Scoring/StreamScore", grpc::StubOptions(),
                                   this);
    out_ = ToBuffer(first_);
    StartWrite(&out_);
    StartCall();
  }
  ~NeverReadingStream() override {
    ctx_.TryCancel();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(20), [&] { return done_; });
  }
  void OnWriteDone(bool ok) override {
    if (!ok || --left_ <= 0) return;
    out_ = ToBuffer(rest_);
    StartWrite(&out_);
  }
  void OnDone(const grpc::Status&) override {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    cv_.notify_all();
  }

 private:
  grpc::GenericStub stub_;
  grpc::ClientContext ctx_;
  const std::string first_, rest_;
  int left_;
  grpc::ByteBuffer out_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
};

TEST(Limits, StreamMemoryIsBoundedAcrossStreams) {
  TempDir dir("aeserve_stream_budget");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  // gRPC's own buffer bound is raised so that only the stream budget holds memory back.
  auto r = Serve(dir.path(), {"--metrics_port=-1", "--max_stream_buffer_bytes=67108864",
                              "--grpc_buffer_bytes=4294967296"});
  const int port = MetricsPort(*r);
  // Batches of 8 MiB whose answers (per-feature errors) are as large: per stream up to
  // 4 batches read ahead + 8 answers held would pin ~140 MB; 8 such streams over 1 GB.
  const uint32_t rows = (8u << 20) / (4 * kFeatures);
  const std::string first = StreamMessage(1, rows, true, true),
                    rest = StreamMessage(2, rows, false);
  PeakRss rss(r->process.pid());
  {
    std::vector<std::unique_ptr<NeverReadingStream>> streams;
    for (int i = 0; i < 8; ++i)
      streams.push_back(std::make_unique<NeverReadingStream>(r->channel, first, rest, 20));
    // The held bytes reach the budget and stop growing (every stream is then blocked).
    double held = 0, last = -1;
    ASSERT_TRUE(WaitFor(
        [&] {
          last = held;
          held = MetricValue(HttpGet(port, "/metrics"), "aeserve_stream_buffer_bytes");
          return held >= 64 << 20 && held == last;
        },
        milliseconds(60000), milliseconds(500)))
        << held;
    std::printf("8 never-reading streams: streams hold %.0f MB (budget 64 MB)\n", held / (1 << 20));
    // At most one more batch and answer per stream than the budget (those read as it filled).
    EXPECT_LE(held, (64 << 20) + 8 * (17 << 20));
  }
  const double growth = rss.Growth();
  std::printf("server RSS +%.0f MB\n", growth);
  EXPECT_LT(growth, 800) << "without the budget: about 1,300 MB";
  // Once those streams are gone, their bytes are given back and a new stream is served.
  ASSERT_TRUE(WaitFor(
      [&] { return MetricValue(HttpGet(port, "/metrics"), "aeserve_stream_buffer_bytes") == 0; },
      milliseconds(10000)));
  RawResult res =
      RawStreamCall(r->channel, "/aeserve.v1.Scoring/StreamScore", {StreamMessage(1, 4, true)});
  ASSERT_TRUE(res.finished);
  EXPECT_TRUE(res.status.ok()) << res.status.error_message();
  EXPECT_EQ(res.responses.size(), 1u);
  EXPECT_EQ(r->Stop(), 0);
}

}  // namespace
}  // namespace aeserve::testing
