// Observability end to end: /metrics after real traffic passes promtool, a real Prometheus
// server scrapes the expected counts, WatchAnomalies delivers exactly the flagged samples, a
// stalled watcher does not hold scoring back, and drift rises when the data shifts.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <thread>

#include "aeserve/v1/scoring.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/admin_client.h"
#include "tests/http_get.h"
#include "tests/server_process.h"
#include "tests/test_models.h"
#include "tests/test_server.h"
#include "tests/wait_for.h"

namespace aeserve::testing {
namespace {

class ObservabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>("aeserve_observe");
    Store(dir_->path(), "plain", TrainSmall(v1::MODEL_KIND_PLAIN));
    server_ = StartTestServer(TestOptions(dir_->path()));
    ASSERT_NE(server_, nullptr);
    scoring_ = v1::Scoring::NewStub(Connect(*server_));
  }

  // Normal rows from the training manifold; `shift` moves every feature by that many units.
  static v1::Samples Rows(size_t n, size_t offset, float shift = 0) {
    auto d = engine::MakeSynthetic(1500 + offset + n, 0, kFeatures, 3, 77);
    v1::Samples s;
    s.set_num_features(kFeatures);
    for (size_t i = (1500 + offset) * kFeatures; i < d.normal.size(); ++i)
      s.add_values(d.normal[i] + shift);
    return s;
  }

  v1::ScoreResponse Score(const v1::Samples& s) {
    v1::ScoreRequest req;
    req.set_model("plain");
    *req.mutable_samples() = s;
    v1::ScoreResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(scoring_->Score(&ctx, req, &resp).ok());
    return resp;
  }

  std::string Metrics() { return HttpGet(server_->metrics_port(), "/metrics"); }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<v1::Scoring::Stub> scoring_;
};

// The value of the first sample line that starts with `series` (e.g. 'name{labels}').
double Value(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return NAN;
}

TEST_F(ObservabilityTest, MetricsAfterTrafficPassPromtool) {
  // Known traffic: 3 calls of 100 rows, one bad call, one stream of 5 batches.
  uint64_t flagged = 0;
  for (int i = 0; i < 3; ++i)
    flagged += Score(Rows(100, 100 * i, i == 2 ? 3.f : 0.f)).num_anomalies();
  v1::ScoreRequest bad;
  bad.set_model("nope");
  v1::ScoreResponse resp;
  grpc::ClientContext c;
  ASSERT_EQ(scoring_->Score(&c, bad, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  {
    grpc::ClientContext ctx;
    auto stream = scoring_->StreamScore(&ctx);
    for (int i = 0; i < 5; ++i) {
      v1::StreamScoreRequest req;
      if (i == 0) req.mutable_config()->set_model("plain");
      *req.mutable_samples() = Rows(20, 400 + 20 * i);
      ASSERT_TRUE(stream->Write(req));
    }
    stream->WritesDone();
    v1::StreamScoreResponse r;
    while (stream->Read(&r)) flagged += r.result().num_anomalies();
    ASSERT_TRUE(stream->Finish().ok());
  }
  const std::string text = Metrics();
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(Value(text, "aeserve_samples_scored_total{model=\"plain\",version=\"1\"}"), 400);
  EXPECT_EQ(Value(text, "aeserve_requests_total{rpc=\"Score\",code=\"OK\"}"), 3);
  EXPECT_EQ(Value(text, "aeserve_requests_total{rpc=\"Score\",code=\"NOT_FOUND\"}"), 1);
  EXPECT_EQ(Value(text, "aeserve_requests_total{rpc=\"StreamScore\",code=\"OK\"}"), 1);
  EXPECT_EQ(
      Value(text, "aeserve_anomalies_total{model=\"plain\",version=\"1\",severity=\"warning\"}") +
          Value(text,
                "aeserve_anomalies_total{model=\"plain\",version=\"1\",severity=\"critical\"}"),
      static_cast<double>(flagged));
  EXPECT_GT(flagged, 0u);
  EXPECT_EQ(Value(text, "aeserve_reconstruction_error_count{model=\"plain\",version=\"1\"}"), 400);
  EXPECT_EQ(Value(text, "aeserve_compute_duration_seconds_count{rpc=\"StreamScore\"}"), 5);
  // Sequential calls find a worker idle: all three are scored on the gRPC thread. A stream's
  // first batch goes to a worker, and a batch read while the previous one scores waits for it.
  EXPECT_EQ(Value(text, "aeserve_scored_on_grpc_thread_total{rpc=\"Score\"}"), 3);
  EXPECT_LE(Value(text, "aeserve_scored_on_grpc_thread_total{rpc=\"StreamScore\"}"), 4);
  EXPECT_EQ(Value(text, "aeserve_model_active_version{model=\"plain\"}"), 1);
  EXPECT_GT(Value(text, "process_resident_memory_bytes"), 1e6);
  EXPECT_GT(Value(text, "process_open_fds"), 3);
  EXPECT_NEAR(Value(text, "aeserve_anomaly_rate{model=\"plain\",version=\"1\"}"), flagged / 400.0,
              1e-9);
  // promtool, the reference linter, accepts the exposition.
  const std::string path = dir_->path() + "/metrics.txt";
  std::ofstream(path) << text;
  const int rc =
      std::system(("promtool check metrics < " + path + " > " + path + ".out 2>&1").c_str());
  std::ifstream out(path + ".out");
  std::string lint((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  EXPECT_EQ(rc, 0) << lint;
  EXPECT_EQ(lint, "") << "promtool lint findings";
  // gzip when asked.
  std::string headers;
  const std::string gz =
      HttpGet(server_->metrics_port(), "/metrics", &headers, "Accept-Encoding: gzip\r\n");
  EXPECT_NE(headers.find("Content-Encoding: gzip"), std::string::npos);
  EXPECT_NE(headers.find("text/plain; version=0.0.4"), std::string::npos);
  EXPECT_LT(gz.size(), text.size());
}

TEST_F(ObservabilityTest, RealPrometheusScrapesTheCounts) {
  // Prometheus on a free loopback port, scraping aeserve every 200 ms.
  const int prom_port = [] {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    close(fd);
    return ntohs(a.sin_port);
  }();
  const std::string cfg = dir_->path() + "/prometheus.yml";
  std::ofstream(cfg) << "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
                        "scrape_configs:\n  - job_name: aeserve\n    static_configs:\n"
                        "      - targets: ['127.0.0.1:"
                     << server_->metrics_port() << "']\n";
  ServerProcess prom;
  prom.Start("/usr/bin/prometheus",
             {"--config.file=" + cfg, "--storage.tsdb.path=" + dir_->path() + "/tsdb",
              "--web.listen-address=127.0.0.1:" + std::to_string(prom_port), "--log.level=warn"},
             0.1);  // it logs no port line; readiness is polled below
  uint64_t flagged = 0;
  for (int i = 0; i < 5; ++i)
    flagged += Score(Rows(200, 200 * i, i == 4 ? 2.f : 0.f)).num_anomalies();
  ASSERT_GT(flagged, 0u);
  auto query = [&](const std::string& q) {
    const std::string body = HttpGet(prom_port, "/api/v1/query?query=" + q);
    std::smatch m;
    if (std::regex_search(body, m, std::regex("\"value\":\\[[0-9.]+,\"([^\"]+)\"\\]")))
      return std::stod(m[1]);
    return static_cast<double>(NAN);
  };
  double samples = NAN, anomalies = NAN;
  const bool scraped = WaitFor(
      [&] {
        samples = query("sum(aeserve_samples_scored_total)");
        anomalies = query("sum(aeserve_anomalies_total)");
        return samples == 1000 && anomalies == flagged;
      },
      std::chrono::seconds(30), std::chrono::milliseconds(100));
  EXPECT_TRUE(scraped) << "Prometheus did not report the scored samples within 30 s";
  EXPECT_EQ(samples, 1000) << prom.log();
  EXPECT_EQ(anomalies, static_cast<double>(flagged));
  EXPECT_EQ(query("up"), 1);
  prom.Signal(SIGTERM);
  EXPECT_EQ(prom.Wait(20), 0);
}

TEST_F(ObservabilityTest, WatchAnomaliesDeliversExactlyTheFlaggedSamples) {
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::WatchAnomaliesRequest wreq;
  wreq.set_model("plain");
  auto watch = scoring_->WatchAnomalies(&wctx, wreq);
  // Once the watcher is subscribed, a probe of an anomalous row comes back as its first event.
  ASSERT_TRUE(WaitFor([&] { return Value(Metrics(), "aeserve_anomaly_watchers") == 1; },
                      std::chrono::seconds(10)));
  v1::AnomalyEvent e;
  v1::Samples probe = Rows(1, 0, 50.f);
  probe.add_ids("probe");
  Score(probe);
  ASSERT_TRUE(watch->Read(&e));
  ASSERT_EQ(e.sample_id(), "probe");
  // A known stream with ids; every flagged row must come back as one event, and nothing else.
  grpc::ClientContext ctx;
  auto stream = scoring_->StreamScore(&ctx);
  std::set<std::string> flagged;
  for (int b = 0; b < 10; ++b) {
    v1::StreamScoreRequest req;
    if (b == 0) {
      req.mutable_config()->set_model("plain");
      req.mutable_config()->set_stream_id("rack-7");
    }
    *req.mutable_samples() = Rows(50, 50 * b, b % 3 == 2 ? 1.5f : 0.f);
    for (int i = 0; i < 50; ++i)
      req.mutable_samples()->add_ids("b" + std::to_string(b) + "r" + std::to_string(i));
    ASSERT_TRUE(stream->Write(req));
  }
  stream->WritesDone();
  v1::StreamScoreResponse r;
  while (stream->Read(&r)) {
    for (int i = 0; i < r.result().anomalous_size(); ++i) {
      if (r.result().anomalous(i)) flagged.insert(r.result().ids(i));
    }
  }
  ASSERT_TRUE(stream->Finish().ok());
  ASSERT_GT(flagged.size(), 5u);
  std::set<std::string> got;
  while (got.size() < flagged.size() && watch->Read(&e)) {
    EXPECT_EQ(e.model(), "plain");
    EXPECT_EQ(e.stream_id(), "rack-7");
    EXPECT_GT(e.score(), e.threshold());
    EXPECT_EQ(e.top_features_size(), 3);
    EXPECT_EQ(e.top_feature_names(0), "m" + std::to_string(e.top_features(0)));
    EXPECT_GE(e.top_feature_errors(0), e.top_feature_errors(1));
    EXPECT_EQ(e.dropped_before(), 0u);
    EXPECT_TRUE(got.insert(e.sample_id()).second) << "duplicate event " << e.sample_id();
  }
  EXPECT_EQ(got, flagged);
  wctx.TryCancel();
  v1::AnomalyEvent extra;
  while (watch->Read(&extra)) {
  }
  watch->Finish();
}

// Incidents (#14): a debounced stream's results carry each incident's changes, a watcher that
// asked for incidents gets exactly those changes (one event each, no per-sample events), and a
// named stream that reconnects carries on with its open incident.
TEST_F(ObservabilityTest, IncidentWatchersGetOneEventPerChangeAndStreamsResume) {
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::WatchAnomaliesRequest wreq;
  wreq.set_incidents(true);
  auto watch = scoring_->WatchAnomalies(&wctx, wreq);
  ASSERT_TRUE(WaitFor([&] { return Value(Metrics(), "aeserve_anomaly_watchers") == 1; },
                      std::chrono::seconds(10)));
  // One stream: its batches in order, k = 2 of n = 3; returns every incident change.
  auto run = [&](const std::string& id, const std::vector<v1::Samples>& batches) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto stream = scoring_->StreamScore(&ctx);
    for (size_t b = 0; b < batches.size(); ++b) {
      v1::StreamScoreRequest req;
      if (b == 0) {
        req.mutable_config()->set_model("plain");
        req.mutable_config()->set_stream_id(id);
        req.mutable_config()->set_debounce_k(2);
        req.mutable_config()->set_debounce_n(3);
      }
      req.set_sequence(b);
      *req.mutable_samples() = batches[b];
      EXPECT_TRUE(stream->Write(req));
    }
    stream->WritesDone();
    std::vector<v1::Incident> changes;
    v1::StreamScoreResponse r;
    while (stream->Read(&r)) {
      EXPECT_TRUE(r.has_result()) << r.DebugString();
      for (const auto& c : r.result().incidents()) changes.push_back(c);
    }
    EXPECT_TRUE(stream->Finish().ok());
    return changes;
  };
  // Normal, then 3 far-off rows, then normal: one incident, opened and closed.
  auto first = run("rack-9", {Rows(3, 0), Rows(3, 10, 50.f), Rows(4, 20)});
  ASSERT_GE(first.size(), 2u);
  EXPECT_EQ(first.front().state(), v1::INCIDENT_OPENED);
  EXPECT_EQ(first.back().state(), v1::INCIDENT_CLOSED);
  for (const auto& c : first) EXPECT_EQ(c.id(), first.front().id());
  EXPECT_EQ(first.back().stream_id(), "rack-9");
  EXPECT_GE(first.front().first_sample(), 3u);  // raised within the far-off rows (3-5)
  EXPECT_LE(first.front().first_sample(), 5u);
  EXPECT_GE(first.back().anomalous_samples(), 2u);
  EXPECT_GE(first.back().last_sample(), 5u);
  // A named stream that ends with its incident open, and comes back: same incident, closed,
  // sample numbers carried on.
  auto opened = run("rack-10", {Rows(2, 30, 50.f)});
  ASSERT_EQ(opened.size(), 1u);
  EXPECT_EQ(opened[0].state(), v1::INCIDENT_OPENED);
  EXPECT_EQ(opened[0].first_sample(), 1u);
  auto closed = run("rack-10", {Rows(4, 40)});
  ASSERT_FALSE(closed.empty());
  EXPECT_EQ(closed.back().state(), v1::INCIDENT_CLOSED);
  EXPECT_EQ(closed.back().id(), opened[0].id());
  EXPECT_GE(closed.back().last_sample(), 2u);
  // The watcher got exactly these changes, in order.
  std::vector<v1::Incident> want = first;
  want.insert(want.end(), opened.begin(), opened.end());
  want.insert(want.end(), closed.begin(), closed.end());
  for (const auto& w : want) {
    v1::AnomalyEvent e;
    ASSERT_TRUE(watch->Read(&e));
    ASSERT_TRUE(e.has_incident()) << e.DebugString();
    EXPECT_EQ(e.incident().id(), w.id());
    EXPECT_EQ(e.incident().state(), w.state());
    EXPECT_EQ(e.model(), "plain");
    EXPECT_EQ(e.sample_id(), "");
  }
  wctx.TryCancel();
  v1::AnomalyEvent extra;
  while (watch->Read(&extra)) EXPECT_TRUE(extra.has_incident());
  watch->Finish();
}

TEST_F(ObservabilityTest, AStalledWatcherDoesNotHoldScoringBack) {
  // This watcher never reads.
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto stalled = scoring_->WatchAnomalies(&wctx, v1::WatchAnomaliesRequest());
  ASSERT_TRUE(WaitFor([&] { return Value(Metrics(), "aeserve_anomaly_watchers") == 1; },
                      std::chrono::seconds(10)));
  // 60000 anomalous rows: far more events than the watcher's buffer (1024) and what gRPC's
  // flow-control windows absorb (a few MB).
  const auto start = std::chrono::steady_clock::now();
  uint64_t flagged = 0;
  for (int i = 0; i < 60; ++i) flagged += Score(Rows(1000, 0, 50.f)).num_anomalies();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(flagged, 60000u);
  EXPECT_LT(seconds, 60.0) << "scoring must not wait for a stalled watcher";
  const double dropped = Value(Metrics(), "aeserve_anomaly_events_dropped_total");
  // Some thousands fit in the watcher's buffer (1024) and in gRPC's flow-control windows (how many
  // depends on timing); the rest are dropped and counted.
  EXPECT_GT(dropped, 0) << "events past the buffer are dropped and counted";
  // When the watcher reads again, an event tells it how many it lost.
  uint64_t reported = 0;
  v1::AnomalyEvent e;
  for (int i = 0; i < 70000 && stalled->Read(&e); ++i) {
    reported += e.dropped_before();
    if (reported > 0) break;
  }
  EXPECT_GT(reported, 0u);
  wctx.TryCancel();
  while (stalled->Read(&e)) {
  }
  stalled->Finish();
}

// A watcher whose client stops reading is parked: it is offered no batches (so a thousand of them
// cost scoring nothing), and each event of its kind is counted as dropped. When it reads again
// it gets the newest events, in order, and what it lost is counted exactly: every flagged row is
// either received or in a dropped_before count, and the metric agrees.
TEST_F(ObservabilityTest, AStalledWatcherResumesWithTheNewestEventsAndAnExactCount) {
  grpc::ChannelArguments args;  // a small receive window, so the watcher stalls soon
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8192);
  auto stub = v1::Scoring::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials(), args));
  // Two watchers of different kinds (every model; the model by name), counted apart.
  grpc::ClientContext ctx_all, ctx_plain;
  ctx_all.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  ctx_plain.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto all = stub->WatchAnomalies(&ctx_all, v1::WatchAnomaliesRequest());
  v1::WatchAnomaliesRequest by_name;
  by_name.set_model("plain");
  auto plain = stub->WatchAnomalies(&ctx_plain, by_name);
  ASSERT_TRUE(WaitFor([&] { return Value(Metrics(), "aeserve_anomaly_watchers") == 2; },
                      std::chrono::seconds(10)));
  constexpr int kBatches = 20, kRows = 1000;
  for (int b = 0; b < kBatches; ++b) {
    v1::Samples s = Rows(kRows, 0, 50.f);
    for (int i = 0; i < kRows; ++i) s.add_ids(std::to_string(b * kRows + i));
    ASSERT_EQ(Score(s).num_anomalies(), static_cast<uint32_t>(kRows));
  }
  ASSERT_TRUE(WaitFor([&] { return Value(Metrics(), "aeserve_anomaly_watchers_stalled") == 2; },
                      std::chrono::seconds(10)))
      << "watchers that do not read are parked";
  // Each reads up to the last flagged row.
  uint64_t total_dropped = 0;
  for (auto* watch : {all.get(), plain.get()}) {
    uint64_t received = 0, dropped = 0;
    int64_t last = -1;
    bool ordered = true;
    v1::AnomalyEvent e;
    while (last != kBatches * kRows - 1 && received < kBatches * kRows && watch->Read(&e)) {
      ++received;
      dropped += e.dropped_before();
      const int64_t id = std::stoll(e.sample_id());
      ordered = ordered && id > last;
      last = id;
    }
    EXPECT_EQ(last, kBatches * kRows - 1) << "the newest event arrives";
    EXPECT_TRUE(ordered);
    EXPECT_GT(dropped, 0u);
    EXPECT_LE(received, 1024u + 1024u) << "about its buffer plus what the window held";
    EXPECT_EQ(received + dropped, static_cast<uint64_t>(kBatches * kRows))
        << "received " << received << ", dropped " << dropped;
    total_dropped += dropped;
  }
  EXPECT_TRUE(WaitFor(
      [&] {
        const std::string text = Metrics();
        return Value(text, "aeserve_anomaly_events_dropped_total") == total_dropped &&
               Value(text, "aeserve_anomaly_watchers_stalled") == 0;
      },
      std::chrono::seconds(10)))
      << Value(Metrics(), "aeserve_anomaly_events_dropped_total") << " vs " << total_dropped;
  ctx_all.TryCancel();
  ctx_plain.TryCancel();
  v1::AnomalyEvent e;
  while (all->Read(&e)) {
  }
  while (plain->Read(&e)) {
  }
  all->Finish();
  plain->Finish();
}

TEST_F(ObservabilityTest, DriftRisesWhenTheDataShifts) {
  for (int i = 0; i < 3; ++i) Score(Rows(1000, 1000 * i));  // normal traffic fills the window
  auto drift = [&] {
    v1::GetModelRequest req;
    req.set_model("plain");
    v1::ModelInfo info;
    grpc::ClientContext ctx;
    EXPECT_TRUE(scoring_->GetModel(&ctx, req, &info).ok());
    return info;
  };
  const v1::ModelInfo before = drift();
  EXPECT_EQ(before.drift_window(), 2048u);
  EXPECT_LT(before.drift_ks(), 0.2) << "normal traffic matches the calibration errors";
  EXPECT_FALSE(before.drifted());
  for (int i = 0; i < 3; ++i) Score(Rows(1000, 1000 * i, 0.7f));  // every feature shifted
  const v1::ModelInfo after = drift();
  EXPECT_GT(after.drift_ks(), 0.5);
  EXPECT_TRUE(after.drifted());
  const std::string text = Metrics();
  EXPECT_NEAR(Value(text, "aeserve_drift_ks{model=\"plain\",version=\"1\"}"), after.drift_ks(),
              0.05);
  EXPECT_EQ(Value(text, "aeserve_model_drifted{model=\"plain\",version=\"1\"}"), 1);
}

// Drift is the service's own statistic: with the /metrics endpoint off (--metrics_port=0) GetModel
// still reports it.
TEST_F(ObservabilityTest, GetModelReportsDriftWithMetricsOff) {
  server::Options o = TestOptions(dir_->path());
  o.metrics_port = 0;
  auto quiet = StartTestServer(o);
  ASSERT_NE(quiet, nullptr);
  ASSERT_EQ(quiet->metrics(), nullptr);
  auto stub = v1::Scoring::NewStub(Connect(*quiet));
  v1::ScoreRequest req;
  req.set_model("plain");
  *req.mutable_samples() = Rows(600, 0, 0.7f);
  v1::ScoreResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->Score(&ctx, req, &resp).ok());
  v1::GetModelRequest get;
  get.set_model("plain");
  v1::ModelInfo info;
  grpc::ClientContext ctx2;
  ASSERT_TRUE(stub->GetModel(&ctx2, get, &info).ok());
  EXPECT_EQ(info.drift_window(), 600u);
  EXPECT_GT(info.drift_ks(), 0.5);
  EXPECT_TRUE(info.drifted());
}

// A model deleted (with force) while a stream is scoring it: the stream's batches fail with a
// status, the server goes on, and the model's series leave /metrics once nothing scores with it
// (the instruments live as long as the last batch that may record into them).
TEST_F(ObservabilityTest, DeletingAModelUnderAStreamDropsItsSeriesSafely) {
  auto admin = v1::ModelAdmin::NewStub(Connect(*server_));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = scoring_->StreamScore(&ctx);
  std::atomic<bool> deleted{false};
  std::atomic<int> after_delete{0};
  std::thread writer([&] {
    for (int b = 0; b < 5000 && after_delete < 20; ++b) {
      v1::StreamScoreRequest req;
      if (b == 0) req.mutable_config()->set_model("plain");
      *req.mutable_samples() = Rows(32, 32 * (b % 40));
      if (!stream->Write(req)) break;
      if (deleted) ++after_delete;
    }
    stream->WritesDone();
  });
  ASSERT_TRUE(WaitFor(
      [&] {
        return Value(Metrics(), "aeserve_samples_scored_total{model=\"plain\",version=\"1\"}") > 0;
      },
      std::chrono::seconds(10)));
  {
    grpc::ClientContext dctx;
    v1::DeleteModelRequest del;
    del.set_model("plain");
    del.set_force(true);
    v1::DeleteModelResponse resp;
    ASSERT_TRUE(admin->DeleteModel(&dctx, del, &resp).ok());
    deleted = true;
  }
  v1::StreamScoreResponse r;
  int errors = 0;
  while (stream->Read(&r)) errors += r.has_error();
  writer.join();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_GT(errors, 0) << "batches after the delete are answered with an error item";
  const std::string text = Metrics();
  EXPECT_EQ(text.find("model=\"plain\""), std::string::npos) << text.substr(0, 2000);
  v1::ScoreRequest req;
  req.set_model("plain");
  *req.mutable_samples() = Rows(1, 0);
  v1::ScoreResponse resp;
  grpc::ClientContext sctx;
  EXPECT_EQ(scoring_->Score(&sctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

// #16 item 9: every call of both services is counted with the status it ends with, whichever path
// answered it; unary calls get a duration, StreamScore one per batch, watches none.
TEST_F(ObservabilityTest, EveryCallIsCountedWithItsStatus) {
  auto admin = v1::ModelAdmin::NewStub(Connect(*server_));
  auto call = [](auto fn) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return fn(&ctx).error_code();
  };
  v1::ListModelsResponse models;
  EXPECT_EQ(call([&](auto* c) { return scoring_->ListModels(c, {}, &models); }),
            grpc::StatusCode::OK);
  v1::GetModelRequest get;
  get.set_model("plain");
  v1::ModelInfo info;
  EXPECT_EQ(call([&](auto* c) { return scoring_->GetModel(c, get, &info); }), grpc::StatusCode::OK);
  get.set_model("nope");
  EXPECT_EQ(call([&](auto* c) { return scoring_->GetModel(c, get, &info); }),
            grpc::StatusCode::NOT_FOUND);
  v1::ActivateVersionRequest act;
  act.set_model("plain");  // version 0
  v1::ModelInfoBrief activated;
  EXPECT_EQ(call([&](auto* c) { return admin->ActivateVersion(c, act, &activated); }),
            grpc::StatusCode::INVALID_ARGUMENT);
  act.set_model("nope");
  act.set_version(1);
  EXPECT_EQ(call([&](auto* c) { return admin->ActivateVersion(c, act, &activated); }),
            grpc::StatusCode::NOT_FOUND);
  v1::ListTrainingJobsResponse jobs;
  EXPECT_EQ(call([&](auto* c) { return admin->ListTrainingJobs(c, {}, &jobs); }),
            grpc::StatusCode::OK);
  {
    grpc::ClientContext ctx;
    v1::WatchAnomaliesRequest w;
    w.set_model("plain");
    auto watch = scoring_->WatchAnomalies(&ctx, w);
    ASSERT_TRUE(WaitFor([&] { return Value(Metrics(), "aeserve_anomaly_watchers") == 1; },
                        std::chrono::seconds(10)));
    ctx.TryCancel();
    EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  {
    grpc::ClientContext ctx;
    auto stream = scoring_->StreamScore(&ctx);
    for (int i = 0; i < 4; ++i) {
      v1::StreamScoreRequest req;
      if (i == 0) req.mutable_config()->set_model("plain");
      *req.mutable_samples() = Rows(10, 10 * i);
      ASSERT_TRUE(stream->Write(req));
    }
    stream->WritesDone();
    v1::StreamScoreResponse r;
    while (stream->Read(&r)) {
    }
    ASSERT_TRUE(stream->Finish().ok());
  }
  Score(Rows(5, 0));
  // The cancelled watch is counted when the server has seen the cancel.
  ASSERT_TRUE(WaitFor(
      [&] {
        return Value(Metrics(),
                     "aeserve_requests_total{rpc=\"WatchAnomalies\",code=\"CANCELLED\"}") == 1;
      },
      std::chrono::seconds(10)));
  const std::string text = Metrics();
  auto count = [&](const std::string& rpc, const std::string& code) {
    return Value(text, "aeserve_requests_total{rpc=\"" + rpc + "\",code=\"" + code + "\"}");
  };
  EXPECT_EQ(count("ListModels", "OK"), 1);
  EXPECT_EQ(count("GetModel", "OK"), 1);
  EXPECT_EQ(count("GetModel", "NOT_FOUND"), 1);
  EXPECT_EQ(count("ActivateVersion", "INVALID_ARGUMENT"), 1);
  EXPECT_EQ(count("ActivateVersion", "NOT_FOUND"), 1);
  EXPECT_EQ(count("ListTrainingJobs", "OK"), 1);
  EXPECT_EQ(count("StreamScore", "OK"), 1);
  EXPECT_EQ(count("Score", "OK"), 1);
  auto durations = [&](const std::string& rpc) {
    return Value(text, "aeserve_request_duration_seconds_count{rpc=\"" + rpc + "\"}");
  };
  EXPECT_EQ(durations("Score"), 1);
  EXPECT_EQ(durations("GetModel"), 2);
  EXPECT_EQ(durations("ActivateVersion"), 2);
  EXPECT_EQ(durations("StreamScore"), 4) << "one per batch, not one per stream";
  EXPECT_TRUE(std::isnan(durations("WatchAnomalies"))) << "a watch lasts as long as its client";
  EXPECT_TRUE(std::isnan(durations("Encode"))) << "an RPC never called adds no series";
}

// #16 items 7 and 9: a model whose first training job is still running says so (unary and
// stream), and a deleted model's training gauges leave /metrics with it.
TEST_F(ObservabilityTest, AModelStillTrainingSaysSoAndItsGaugesLeaveWithIt) {
  auto admin = v1::ModelAdmin::NewStub(Connect(*server_));
  auto data = engine::MakeSynthetic(3000, 0, kFeatures, 3, 7);
  v1::TrainingJobHeader h;
  h.set_model("fresh");
  h.set_num_features(kFeatures);
  h.mutable_spec()->add_encoder_units(512);
  h.mutable_spec()->set_code_size(4);
  h.mutable_options()->set_epochs(100000);
  v1::TrainingJob job;
  ASSERT_TRUE(CreateJob(admin.get(), h, data.normal, &job).ok());
  v1::ScoreRequest req;
  req.set_model("fresh");
  *req.mutable_samples() = Rows(1, 0);
  v1::ScoreResponse resp;
  grpc::ClientContext sctx;
  grpc::Status st = scoring_->Score(&sctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_NE(st.error_message().find("training job " + job.id()), std::string::npos)
      << st.error_message();
  // A pinned version that does not exist stays NOT_FOUND: no job will make it appear.
  req.set_version(5);
  grpc::ClientContext pctx;
  EXPECT_EQ(scoring_->Score(&pctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  req.set_version(0);
  {
    grpc::ClientContext ctx;
    auto stream = scoring_->StreamScore(&ctx);
    v1::StreamScoreRequest sreq;
    sreq.mutable_config()->set_model("fresh");
    *sreq.mutable_samples() = Rows(1, 0);
    ASSERT_TRUE(stream->Write(sreq));
    stream->WritesDone();
    v1::StreamScoreResponse r;
    ASSERT_TRUE(stream->Read(&r));
    EXPECT_EQ(r.error().code(), static_cast<int>(grpc::StatusCode::UNAVAILABLE));
    EXPECT_NE(r.error().message().find("has no version yet"), std::string::npos)
        << r.error().message();
    while (stream->Read(&r)) {
    }
    EXPECT_TRUE(stream->Finish().ok());
  }
  {
    grpc::ClientContext ctx;
    v1::GetTrainingJobRequest cancel;
    cancel.set_id(job.id());
    v1::TrainingJob ended;
    ASSERT_TRUE(admin->CancelTrainingJob(&ctx, cancel, &ended).ok());
  }
  auto states = WatchToEnd(admin.get(), job.id());
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back().state(), v1::JOB_STATE_CANCELLED);
  grpc::ClientContext sctx2;
  EXPECT_EQ(scoring_->Score(&sctx2, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND)
      << "no job: an unknown model again";
  // A model trained here has training gauges until it is deleted.
  h.mutable_spec()->set_encoder_units(0, 8);
  h.mutable_options()->set_epochs(2);
  ASSERT_TRUE(CreateJob(admin.get(), h, data.normal, &job).ok());
  states = WatchToEnd(admin.get(), job.id());
  ASSERT_FALSE(states.empty());
  ASSERT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  EXPECT_EQ(Value(Metrics(), "aeserve_training_epoch{model=\"fresh\"}"), 2);
  {
    grpc::ClientContext dctx;
    v1::DeleteModelRequest del;
    del.set_model("fresh");
    del.set_force(true);
    v1::DeleteModelResponse dresp;
    ASSERT_TRUE(admin->DeleteModel(&dctx, del, &dresp).ok());
  }
  const std::string text = Metrics();
  EXPECT_EQ(text.find("model=\"fresh\""), std::string::npos) << text.substr(0, 3000);
}

}  // namespace
}  // namespace aeserve::testing
