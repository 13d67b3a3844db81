// Prometheus remote write into a real server: bindings over the admin API, snappy-compressed
// WriteRequests POSTed over real HTTP to /api/v1/write, rows scored per entity, results on
// /metrics and GetModel; bad requests get the status the specification asks for.
#include <snappy.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "aeserve/v1/admin.grpc.pb.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "engine/synthetic_data.h"
#include "engine/trainer.h"
#include "google/protobuf/stubs/logging.h"
#include "gtest/gtest.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.grpc.pb.h"
#include "prometheus/remote.pb.h"
#include "tests/admin_client.h"
#include "tests/http_get.h"
#include "tests/test_models.h"
#include "tests/test_server.h"
#include "tests/wait_for.h"

namespace aeserve::testing {
namespace {

constexpr int64_t kStepMs = 15000;
constexpr int64_t kT0 = 1'700'000'000'000;  // the first scrape's time in most tests
const char kWriteHeaders[] =
    "Content-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\n"
    "X-Prometheus-Remote-Write-Version: 0.1.0\r\n";

std::string Snappy(const std::string& raw) {
  std::string out;
  snappy::Compress(raw.data(), raw.size(), &out);
  return out;
}

// Rows [first, first + n) of `values` (kFeatures columns) as series synth_m<i>{instance, job},
// the row r at time t0 + r * 15 s; `scale` multiplies row `scaled_row` (-1: none).
void AddRows(prometheus::WriteRequest* w, const std::vector<float>& values, size_t first, size_t n,
             int64_t t0, const std::string& instance, int scaled_row = -1, float scale = 1) {
  for (uint32_t f = 0; f < kFeatures; ++f) {
    prometheus::TimeSeries* ts = w->add_timeseries();
    auto label = [&](const std::string& name, const std::string& value) {
      prometheus::Label* l = ts->add_labels();
      l->set_name(name);
      l->set_value(value);
    };
    label("__name__", "synth_m" + std::to_string(f));
    label("instance", instance);
    label("job", "node");
    for (size_t r = 0; r < n; ++r) {
      prometheus::Sample* s = ts->add_samples();
      float v = values[(first + r) * kFeatures + f];
      if (static_cast<int>(r) == scaled_row) v *= scale;
      s->set_value(v);
      s->set_timestamp(t0 + static_cast<int64_t>(r) * kStepMs);
    }
  }
}

v1::IngestBinding Binding() {
  v1::IngestBinding b;
  for (uint32_t f = 0; f < kFeatures; ++f) {
    auto* feature = b.add_features();
    feature->set_name("m" + std::to_string(f));
    feature->set_selector("synth_m" + std::to_string(f) + "{job=\"node\"}");
  }
  b.set_entity_label("instance");
  return b;
}

class IngestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>("aeserve_ingest");
    Store(dir_->path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  }
  void Start(server::Options o) {
    server_ = StartTestServer(o);
    ASSERT_NE(server_, nullptr);
    channel_ = Connect(*server_);
    admin_ = v1::ModelAdmin::NewStub(channel_);
    scoring_ = v1::Scoring::NewStub(channel_);
  }
  void Start() { Start(TestOptions(dir_->path())); }
  grpc::Status Bind(const v1::IngestBinding& b, v1::IngestStatus* out, bool clear = false) {
    grpc::ClientContext ctx;
    v1::SetIngestBindingRequest req;
    req.set_model("m");
    *req.mutable_binding() = b;
    req.set_clear(clear);
    return admin_->SetIngestBinding(&ctx, req, out);
  }
  v1::ModelInfo Info() {
    grpc::ClientContext ctx;
    v1::GetModelRequest req;
    req.set_model("m");
    v1::ModelInfo info;
    EXPECT_TRUE(scoring_->GetModel(&ctx, req, &info).ok());
    return info;
  }
  HttpReply Write(const prometheus::WriteRequest& w, const std::string& extra = "") {
    return HttpCall(server_->ingest_port(), "POST", "/api/v1/write", kWriteHeaders + extra,
                    Snappy(w.SerializeAsString()));
  }

  // The data the stored model was trained on (TrainSmall): its rows are normal.
  const engine::SyntheticData data_ = engine::MakeSynthetic(1500, 0, kFeatures, 3, 77);
  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<server::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ModelAdmin::Stub> admin_;
  std::unique_ptr<v1::Scoring::Stub> scoring_;
};

TEST_F(IngestTest, BoundSeriesAreScoredPerEntityAndShownOnMetrics) {
  Start();
  v1::IngestStatus st;
  ASSERT_TRUE(Bind(Binding(), &st).ok());
  EXPECT_EQ(st.binding().tolerance_ms(), 2000u);  // defaults filled in
  EXPECT_EQ(st.binding().flush_ms(), 30000u);
  // Request 1: 20 scrapes of two hosts, and a series no binding selects.
  prometheus::WriteRequest w1;
  AddRows(&w1, data_.normal, 0, 20, kT0, "h1:9100");
  AddRows(&w1, data_.normal, 20, 20, kT0, "h2:9100");
  auto* other = w1.add_timeseries();
  other->add_labels()->set_name("__name__");
  other->mutable_labels(0)->set_value("something_else");
  for (int i = 0; i < 3; ++i) other->add_samples()->set_timestamp(kT0 + i);
  HttpReply r = Write(w1);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.body.find("accepted 480, unmatched 3"), std::string::npos) << r.body;
  // Rows 30 s older than each host's newest sample are scored (18 each); the last two wait for a
  // scrape that says how many series a row has.
  EXPECT_EQ(Info().ingest().rows_scored(), 36u);
  // Watch the feed from here on.
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::WatchAnomaliesRequest wreq;
  wreq.set_model("m");
  auto watch = scoring_->WatchAnomalies(&wctx, wreq);
  ASSERT_TRUE(WaitFor(
      [&] {
        return HttpGet(server_->metrics_port(), "/metrics").find("aeserve_anomaly_watchers 1") !=
               std::string::npos;
      },
      std::chrono::seconds(10)));
  // Request 2: the next scrape, h2's 10x its normal values.
  prometheus::WriteRequest w2;
  AddRows(&w2, data_.normal, 40, 1, kT0 + 20 * kStepMs, "h1:9100");
  AddRows(&w2, data_.normal, 41, 1, kT0 + 20 * kStepMs, "h2:9100", 0, 10.0f);
  r = Write(w2);
  ASSERT_EQ(r.status, 200) << r.body;
  const v1::ModelInfo info = Info();
  EXPECT_EQ(info.ingest().rows_scored(), 42u);
  EXPECT_EQ(info.ingest().entities(), 2u);
  EXPECT_EQ(info.ingest().rows_failed(), 0u);
  EXPECT_GE(info.ingest().anomalies(), 1u);
  EXPECT_EQ(info.ingest().binding().entity_label(), "instance");
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(metrics.find("aeserve_ingest_anomalous{model=\"m\",entity=\"h2:9100\"} 1"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("aeserve_ingest_anomalous{model=\"m\",entity=\"h1:9100\"} 0"),
            std::string::npos);
  EXPECT_NE(metrics.find("aeserve_ingest_severity{model=\"m\",entity=\"h2:9100\"}"),
            std::string::npos);
  EXPECT_NE(metrics.find("aeserve_ingest_samples_total{result=\"accepted\"} 504"),
            std::string::npos);
  EXPECT_NE(metrics.find("aeserve_ingest_samples_total{result=\"unmatched\"} 3"),
            std::string::npos);
  EXPECT_NE(metrics.find("aeserve_ingest_rows_total{model=\"m\",result=\"scored\"} 42"),
            std::string::npos);
  // The feed names the host the flagged row came from (the generic model scored it).
  v1::AnomalyEvent event;
  bool h2 = false;
  while (!h2 && watch->Read(&event)) h2 = event.source_entity() == "h2:9100";
  EXPECT_TRUE(h2);
  EXPECT_EQ(event.entity(), "");
  EXPECT_EQ(event.timestamp_ms(), kT0 + 20 * kStepMs);
  wctx.TryCancel();
  watch->Finish();
  // A retried request changes nothing: its samples are late.
  r = Write(w2);
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("late 24"), std::string::npos) << r.body;
  EXPECT_EQ(Info().ingest().rows_scored(), 42u);
}

// A host with its own model (an entity model named by its instance label) has its rows scored by
// it; the other hosts by the generic model.
TEST_F(IngestTest, AHostWithItsOwnModelIsScoredByIt) {
  std::vector<float> big = data_.normal;  // this host's normal: 10x everyone else's
  for (float& v : big) v *= 10;
  engine::TrainRequest req;
  req.spec.set_kind(v1::MODEL_KIND_PLAIN);
  req.spec.add_encoder_units(16);
  req.spec.set_code_size(3);
  req.options.set_epochs(15);
  std::vector<std::string> names;
  for (uint32_t i = 0; i < kFeatures; ++i) names.push_back("m" + std::to_string(i));
  auto own = engine::Train(req, engine::TrainingData{big, 1500, kFeatures, names, {}});
  ASSERT_TRUE(own.ok()) << own.status();
  ASSERT_GT(Store(dir_->path(), "m", *own, "big:9100"), 0u);
  Start();
  v1::IngestStatus st;
  ASSERT_TRUE(Bind(Binding(), &st).ok());
  prometheus::WriteRequest w1;  // 20 scrapes of each: "big" at 10x, "small" as trained
  AddRows(&w1, big, 0, 20, kT0, "big:9100");
  AddRows(&w1, data_.normal, 20, 20, kT0, "small:9100");
  ASSERT_EQ(Write(w1).status, 200);
  prometheus::WriteRequest w2;  // the next scrape: both at 10x
  AddRows(&w2, big, 40, 1, kT0 + 20 * kStepMs, "big:9100");
  AddRows(&w2, data_.normal, 41, 1, kT0 + 20 * kStepMs, "small:9100", 0, 10.0f);
  ASSERT_EQ(Write(w2).status, 200);
  EXPECT_EQ(Info().ingest().rows_scored(), 42u);  // 21 scrapes of each
  EXPECT_EQ(Info().ingest().rows_failed(), 0u);
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(metrics.find("aeserve_ingest_anomalous{model=\"m\",entity=\"big:9100\"} 0"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("aeserve_ingest_anomalous{model=\"m\",entity=\"small:9100\"} 1"),
            std::string::npos)
      << metrics;
  // Entity models count their samples together (version "entity"): big's 21 rows; the generic
  // model (version 1) scored small's 21.
  EXPECT_NE(metrics.find("aeserve_samples_scored_total{model=\"m\",version=\"1\"} 21"),
            std::string::npos);
  EXPECT_NE(metrics.find("aeserve_samples_scored_total{model=\"m\",version=\"entity\"} 21"),
            std::string::npos)
      << metrics;
}

// With debounce in the binding, each host has an alarm (2 of its last 3 rows flagged): three 10x
// scrapes raise it, an incident opens on the incident feed for that host and closes once
// normal rows bring it down; aeserve_ingest_alarm follows.
TEST_F(IngestTest, DebouncedBindingsRaiseIncidentsPerHost) {
  Start();
  v1::IngestBinding binding = Binding();
  binding.set_debounce_k(3);
  binding.set_debounce_n(2);
  v1::IngestStatus st;
  grpc::Status bad = Bind(binding, &st);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.error_message().find("debounce 3 of 2"), std::string::npos) << bad.error_message();
  binding.set_debounce_k(2);
  binding.set_debounce_n(3);
  ASSERT_TRUE(Bind(binding, &st).ok());
  EXPECT_EQ(st.binding().debounce_k(), 2u);
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::WatchAnomaliesRequest wreq;
  wreq.set_model("m");
  wreq.set_incidents(true);
  auto watch = scoring_->WatchAnomalies(&wctx, wreq);
  ASSERT_TRUE(WaitFor(
      [&] {
        return HttpGet(server_->metrics_port(), "/metrics").find("aeserve_anomaly_watchers 1") !=
               std::string::npos;
      },
      std::chrono::seconds(10)));
  prometheus::WriteRequest w1;  // 20 ordinary scrapes
  AddRows(&w1, data_.normal, 0, 20, kT0, "h1:9100");
  ASSERT_EQ(Write(w1).status, 200);
  prometheus::WriteRequest w2;  // scrapes 20-22 at 10x, then 5 ordinary ones
  for (int r = 20; r < 23; ++r) {
    AddRows(&w2, data_.normal, static_cast<size_t>(r), 1, kT0 + r * kStepMs, "h1:9100", 0, 10.0f);
  }
  AddRows(&w2, data_.normal, 23, 5, kT0 + 23 * kStepMs, "h1:9100");
  ASSERT_EQ(Write(w2).status, 200);
  EXPECT_EQ(Info().ingest().rows_scored(), 28u);
  v1::AnomalyEvent e;
  std::vector<v1::Incident> seen;
  while ((seen.empty() || seen.back().state() != v1::INCIDENT_CLOSED) && watch->Read(&e)) {
    seen.push_back(e.incident());
  }
  wctx.TryCancel();
  watch->Finish();
  ASSERT_GE(seen.size(), 2u);
  EXPECT_EQ(seen.front().state(), v1::INCIDENT_OPENED);
  EXPECT_EQ(seen.front().entity(), "h1:9100");
  EXPECT_EQ(seen.front().model(), "m");
  // Opened by the 10x rows (the alarm is up from the second one), closed after them.
  EXPECT_GE(seen.front().first_timestamp_ms(), kT0 + 20 * kStepMs);
  EXPECT_LE(seen.front().first_timestamp_ms(), kT0 + 21 * kStepMs);
  const v1::Incident& closed = seen.back();
  EXPECT_EQ(closed.state(), v1::INCIDENT_CLOSED);
  EXPECT_EQ(closed.id(), seen.front().id());
  EXPECT_GE(closed.anomalous_samples(), 2u);
  EXPECT_GE(closed.last_timestamp_ms(), kT0 + 22 * kStepMs);
  EXPECT_NE(HttpGet(server_->metrics_port(), "/metrics")
                .find("aeserve_ingest_alarm{model=\"m\",entity=\"h1:9100\"} 0"),
            std::string::npos);
}

// Two models bound to the same series: each assembles its rows, and each sample is counted once.
TEST_F(IngestTest, ASeriesTwoModelsSelectIsCountedOnce) {
  Start();
  v1::IngestStatus st;
  ASSERT_TRUE(Bind(Binding(), &st).ok());
  {
    grpc::ClientContext ctx;
    v1::SetIngestBindingRequest req;
    req.set_model("m2");  // no version yet: bound by name, its rows fail until one is trained
    *req.mutable_binding() = Binding();
    ASSERT_TRUE(admin_->SetIngestBinding(&ctx, req, &st).ok());
  }
  prometheus::WriteRequest w;
  AddRows(&w, data_.normal, 0, 3, kT0, "h1:9100");
  HttpReply r = Write(w);
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("accepted 36, unmatched 0, late 0"), std::string::npos) << r.body;
  r = Write(w);  // again: every sample late, for both models, counted once
  EXPECT_NE(r.body.find("accepted 0, unmatched 0, late 36"), std::string::npos) << r.body;
  EXPECT_NE(HttpGet(server_->metrics_port(), "/metrics")
                .find("aeserve_ingest_samples_total{result=\"accepted\"} 36"),
            std::string::npos);
}

// A row that reaches scoring with most features missing (one series of 12 sent) is skipped by
// the model's scoring policy (max_missing_fraction 0.5), and counted as skipped, not scored.
TEST_F(IngestTest, ARowMostlyMissingIsSkippedAndCountedApart) {
  Start();
  v1::IngestStatus st;
  ASSERT_TRUE(Bind(Binding(), &st).ok());
  prometheus::WriteRequest w1;  // 3 complete scrapes
  AddRows(&w1, data_.normal, 0, 3, kT0, "h1:9100");
  ASSERT_EQ(Write(w1).status, 200);
  prometheus::WriteRequest partial, w2;
  AddRows(&partial, data_.normal, 3, 1, kT0 + 3 * kStepMs, "h1:9100");
  *w2.add_timeseries() = partial.timeseries(0);                    // scrape 3: one feature of 12
  AddRows(&w2, data_.normal, 4, 1, kT0 + 4 * kStepMs, "h1:9100");  // scrape 4: complete
  ASSERT_EQ(Write(w2).status, 200);
  const v1::IngestStatus ingest = Info().ingest();
  EXPECT_EQ(ingest.rows_scored(), 4u);  // scrapes 0-2 and 4
  EXPECT_EQ(ingest.rows_skipped(), 1u);
  EXPECT_NE(HttpGet(server_->metrics_port(), "/metrics")
                .find("aeserve_ingest_rows_total{model=\"m\",result=\"skipped\"} 1"),
            std::string::npos);
}

// Rebinding and unbinding while writes flow: rows still queued on a replaced binding are scored
// without touching gauges the new binding owns (or Unbind removed); the hosts' gauges survive a
// rebind. Catches a use-after-free under ASan (make sanitize), a crash otherwise.
TEST_F(IngestTest, RebindingUnderTrafficIsSafe) {
  Start();
  v1::IngestStatus st;
  ASSERT_TRUE(Bind(Binding(), &st).ok());
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int r = 0; r < 120; ++r) {
      prometheus::WriteRequest w;
      for (int h = 0; h < 8; ++h) {
        AddRows(&w, data_.normal, static_cast<size_t>(r), 1, kT0 + r * kStepMs,
                "h" + std::to_string(h));
      }
      EXPECT_EQ(Write(w).status, 200);
    }
    done = true;
  });
  int rebinds = 0;
  while (!done && rebinds < 400) {
    v1::IngestBinding b = Binding();
    b.set_tolerance_ms(rebinds % 2 == 0 ? 2000 : 3000);
    ASSERT_TRUE(Bind(b, &st).ok());
    if (rebinds % 10 == 9) {
      ASSERT_TRUE(Bind(b, &st, /*clear=*/true).ok());
      ASSERT_TRUE(Bind(b, &st).ok());
    }
    ++rebinds;
  }
  writer.join();
  EXPECT_GT(rebinds, 0);
  // Four more scrapes of every host after the last rebind (a new binding starts its hosts
  // afresh): the current binding scores them and shows each host's gauge.
  prometheus::WriteRequest w;
  for (int h = 0; h < 8; ++h) {
    AddRows(&w, data_.normal, 200, 4, kT0 + 200 * kStepMs, "h" + std::to_string(h));
  }
  ASSERT_EQ(Write(w).status, 200);
  ASSERT_TRUE(WaitFor(
      [&] {
        return HttpGet(server_->metrics_port(), "/metrics")
                   .find("aeserve_ingest_error{model=\"m\",entity=\"h7\"}") != std::string::npos;
      },
      std::chrono::seconds(10)));
}

TEST_F(IngestTest, BadRequestsGetTheStatusTheSpecificationAsksFor) {
  server::Options o = TestOptions(dir_->path());
  o.ingest_max_body_bytes = 4096;
  Start(o);
  v1::IngestStatus st;
  ASSERT_TRUE(Bind(Binding(), &st).ok());
  const int port = server_->ingest_port();
  auto call = [&](const std::string& method, const std::string& headers, const std::string& body) {
    return HttpCall(port, method, "/api/v1/write", headers, body);
  };
  HttpReply r = call("GET", "", "");
  EXPECT_EQ(r.status, 405);
  r = call("POST", "Content-Type: application/x-protobuf\r\n", "x");
  EXPECT_EQ(r.status, 415);
  EXPECT_NE(r.body.find("snappy"), std::string::npos) << r.body;
  r = call("POST", "Content-Encoding: snappy\r\nContent-Type: application/json\r\n", "x");
  EXPECT_EQ(r.status, 415);
  // Remote write 2.0 would read as an empty 1.0 request: refused, saying what to configure.
  r = call("POST",
           "Content-Encoding: snappy\r\nContent-Type: application/x-protobuf;"
           "proto=io.prometheus.write.v2.Request\r\n",
           "x");
  EXPECT_EQ(r.status, 415);
  EXPECT_NE(r.body.find("protobuf_message: prometheus.WriteRequest"), std::string::npos) << r.body;
  r = call("POST",
           "Content-Encoding: snappy\r\nContent-Type: application/x-protobuf; "
           "proto=prometheus.WriteRequest\r\n",
           "x");
  EXPECT_EQ(r.status, 400);  // 1.0 named explicitly: on to the body, which is not snappy
  r = call("POST", kWriteHeaders, "\xff\xff\xff\xff\xff\xff garbage");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("not snappy"), std::string::npos) << r.body;
  r = call("POST", kWriteHeaders, Snappy("\x0a\xff\xff\xff\x0f not a protobuf"));
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("WriteRequest"), std::string::npos) << r.body;
  // Declared over the limit: refused before a byte of it is read.
  r = call("POST", std::string(kWriteHeaders) + "Content-Length: 100000000\r\n", "");
  EXPECT_EQ(r.status, 413);
  EXPECT_NE(r.body.find("100000000"), std::string::npos) << r.body;
  // Small when compressed, over 4 x the limit when not.
  r = call("POST", kWriteHeaders, Snappy(std::string(20000, 'a')));
  EXPECT_EQ(r.status, 413);
  EXPECT_NE(r.body.find("decompresses"), std::string::npos) << r.body;
  r = call("POST", kWriteHeaders, "");  // no Content-Length
  EXPECT_EQ(r.status, 411);
  // NaN values (Prometheus's stale markers are NaNs) are counted, not scored.
  prometheus::WriteRequest w;
  AddRows(&w, std::vector<float>(kFeatures, std::nanf("")), 0, 1, 1000, "h");
  r = Write(w);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("invalid 12"), std::string::npos) << r.body;
  // The server still works.
  EXPECT_NE(HttpGet(server_->metrics_port(), "/metrics").find("aeserve_ingest_samples_total"),
            std::string::npos);
}

// From the adversarial pass of issue #18: each of these was accepted (and corrupted rows, blocked a
// host or grew memory) before it was refused and counted.
TEST_F(IngestTest, HostileSamplesAreCountedNotScored) {
  Start();
  v1::IngestStatus st;
  ASSERT_TRUE(Bind(Binding(), &st).ok());
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  const std::vector<float> ones(kFeatures, 1.0f);
  // 100 years ahead (a bad clock) and before 1970: invalid, and the host is not blocked.
  prometheus::WriteRequest w;
  AddRows(&w, ones, 0, 1, now + 100LL * 365 * 86400 * 1000, "h");
  AddRows(&w, ones, 0, 1, -5000, "h");
  HttpReply r = Write(w);
  EXPECT_NE(r.body.find("accepted 0, unmatched 0, late 0, limited 0, invalid 24"),
            std::string::npos)
      << r.body;
  // Beyond float range: invalid (it would fail the host's whole batch).
  prometheus::WriteRequest big;
  AddRows(&big, ones, 0, 1, now, "h");
  big.mutable_timeseries(3)->mutable_samples(0)->set_value(1e39);
  r = Write(big);
  EXPECT_NE(r.body.find("accepted 11, unmatched 0, late 0, limited 0, invalid 1"),
            std::string::npos)
      << r.body;
  // The same samples sent twice in one request count once (a retry must not double a row).
  prometheus::WriteRequest twice;
  AddRows(&twice, ones, 0, 1, now + 1000 * kStepMs / 1000, "d");
  AddRows(&twice, ones, 0, 1, now + 1000 * kStepMs / 1000, "d");
  r = Write(twice);
  EXPECT_NE(r.body.find("accepted 12, unmatched 0, late 12"), std::string::npos) << r.body;
  // An entity label of 1 KB: refused (it would become a /metrics label).
  prometheus::WriteRequest long_name;
  AddRows(&long_name, ones, 0, 1, now, std::string(1024, 'x'));
  r = Write(long_name);
  EXPECT_NE(r.body.find("limited 12"), std::string::npos) << r.body;
  // An entity label that is not UTF-8 (Latin-1 "h\xe9"): invalid, for the same reason.
  prometheus::WriteRequest latin1;
  AddRows(&latin1, ones, 0, 1, now, "h\xe9");
  {
    google::protobuf::LogSilencer quiet;  // protobuf warns as it writes the string out
    r = Write(latin1);
  }
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("accepted 0, unmatched 0, late 0, limited 0, invalid 12"),
            std::string::npos)
      << r.body;
  // A label name twice in a series (matched on one value, credited to the other): invalid.
  prometheus::WriteRequest twice_named;
  AddRows(&twice_named, ones, 0, 1, now + 2 * kStepMs, "h");
  for (auto& ts : *twice_named.mutable_timeseries()) {
    prometheus::Label* l = ts.add_labels();
    l->set_name("instance");
    l->set_value("victim");
  }
  r = Write(twice_named);
  EXPECT_NE(r.body.find("accepted 0, unmatched 0, late 0, limited 0, invalid 12"),
            std::string::npos)
      << r.body;
  // Only the path itself is the endpoint.
  EXPECT_EQ(HttpCall(server_->ingest_port(), "POST", "/api/v1/writeXYZ", kWriteHeaders, "x").status,
            404);
  // A binding too large to be read back is refused when set.
  v1::IngestBinding huge = Binding();
  huge.mutable_features(0)->set_selector("synth_m0{job=\"" + std::string(1100000, 'a') + "\"}");
  EXPECT_EQ(Bind(huge, &st).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(IngestTest, TokensAreCheckedBeforeTheBodyIsRead) {
  const std::string tokens = dir_->path() + "/tokens";
  std::ofstream(tokens) << "s3cret score prometheus\nadm1n admin ops\n";
  server::Options o = TestOptions(dir_->path());
  o.auth_tokens = tokens;
  Start(o);
  prometheus::WriteRequest w;
  AddRows(&w, std::vector<float>(kFeatures, 1.0f), 0, 1, 1000, "h");
  EXPECT_EQ(Write(w).status, 401);
  EXPECT_EQ(Write(w, "Authorization: Bearer nope\r\n").status, 401);
  // A huge declared body without a token: 401, not 413 and not a read.
  HttpReply r = HttpCall(server_->ingest_port(), "POST", "/api/v1/write",
                         std::string(kWriteHeaders) + "Content-Length: 100000000\r\n", "");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(Write(w, "Authorization: Bearer s3cret\r\n").status, 200);
  EXPECT_EQ(Write(w, "Authorization: Bearer adm1n\r\n").status, 200);
  // OTLP on the gRPC port: the same tokens.
  auto stub = opentelemetry::proto::collector::metrics::v1::MetricsService::NewStub(channel_);
  for (const std::string token : {"", "nope", "s3cret"}) {
    grpc::ClientContext ctx;
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceResponse resp;
    EXPECT_EQ(stub->Export(&ctx, {}, &resp).error_code(),
              token == "s3cret" ? grpc::StatusCode::OK : grpc::StatusCode::UNAUTHENTICATED)
        << token;
  }
}

TEST_F(IngestTest, BindingsAreCheckedStoredAndSurviveARestart) {
  Start();
  v1::IngestStatus st;
  v1::IngestBinding bad = Binding();
  bad.mutable_features(3)->set_selector("synth_m3{job=node}");
  grpc::Status s = Bind(bad, &st);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("feature 'm3'"), std::string::npos) << s.error_message();
  bad = Binding();
  bad.mutable_features(0)->set_name("cpu");
  s = Bind(bad, &st);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("'cpu' is not a feature of model 'm' (its features: m0, m1"),
            std::string::npos)
      << s.error_message();
  bad = Binding();
  bad.set_entity_label("bad-label");
  EXPECT_EQ(Bind(bad, &st).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = Binding();
  bad.add_features()->CopyFrom(bad.features(0));
  EXPECT_EQ(Bind(bad, &st).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Bind(v1::IngestBinding(), &st, /*clear=*/true).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_FALSE(Info().has_ingest());

  v1::IngestBinding good = Binding();
  good.mutable_features(2)->set_selector("rate(synth_m2{job=~\"no.e\"})");
  good.set_flush_ms(60000);
  ASSERT_TRUE(Bind(good, &st).ok());
  // Restarted on the same store: the binding is read back.
  server_.reset();
  Start();
  v1::ModelInfo info = Info();
  ASSERT_TRUE(info.has_ingest());
  EXPECT_EQ(info.ingest().binding().features(2).selector(), "rate(synth_m2{job=~\"no.e\"})");
  EXPECT_EQ(info.ingest().binding().flush_ms(), 60000u);
  // Recorded in the audit log.
  {
    grpc::ClientContext ctx;
    v1::ListEventsRequest req;
    v1::ListEventsResponse events;
    ASSERT_TRUE(admin_->ListEvents(&ctx, req, &events).ok());
    int bindings = 0;
    for (const auto& e : events.events()) bindings += e.action() == "set-ingest-binding";
    EXPECT_EQ(bindings, 1);
  }
  // Removed: GetModel says nothing, and the series are unmatched again.
  ASSERT_TRUE(Bind(v1::IngestBinding(), &st, /*clear=*/true).ok());
  EXPECT_FALSE(Info().has_ingest());
  prometheus::WriteRequest w;
  AddRows(&w, std::vector<float>(kFeatures, 1.0f), 0, 1, 1000, "h");
  HttpReply r = Write(w);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("accepted 0, unmatched 12"), std::string::npos) << r.body;
}

TEST_F(IngestTest, ARecordingTrainsAModelFromTheIngestedRows) {
  Start();
  v1::IngestBinding b = Binding();
  {
    grpc::ClientContext ctx;
    v1::SetIngestBindingRequest req;
    req.set_model("fresh");  // no version yet: nothing to check the names against
    *req.mutable_binding() = b;
    v1::IngestStatus st;
    ASSERT_TRUE(admin_->SetIngestBinding(&ctx, req, &st).ok());
  }
  auto record = [&](bool stop, v1::IngestStatus* st) {
    grpc::ClientContext ctx;
    v1::RecordIngestRequest req;
    req.set_model("fresh");
    req.set_seconds(600);
    req.set_stop(stop);
    return admin_->RecordIngest(&ctx, req, st);
  };
  auto train = [&](const std::string& entity, v1::TrainingJob* job) {
    grpc::ClientContext ctx;
    v1::TrainingJobHeader h;
    h.set_model("fresh");
    h.set_entity(entity);
    h.mutable_spec()->add_encoder_units(16);
    h.mutable_spec()->set_code_size(3);
    h.mutable_options()->set_epochs(15);
    return admin_->TrainFromRecording(&ctx, h, job);
  };
  v1::IngestStatus st;
  v1::TrainingJob job;
  EXPECT_EQ(train("", &job).error_code(), grpc::StatusCode::FAILED_PRECONDITION);  // no rows yet
  ASSERT_TRUE(record(false, &st).ok());
  EXPECT_TRUE(st.recording_now());
  EXPECT_EQ(st.recording().max_rows(), 100000u);
  prometheus::WriteRequest w;
  AddRows(&w, data_.normal, 0, 40, kT0, "a");
  AddRows(&w, data_.normal, 40, 40, kT0, "b");
  ASSERT_EQ(Write(w).status, 200);  // 38 rows of each host are ready; no model scores them yet
  ASSERT_TRUE(record(true, &st).ok());
  EXPECT_FALSE(st.recording_now());
  EXPECT_EQ(st.recorded_rows(), 76u);
  // A restart between recording and training keeps the binding (the model has no version yet)
  // and the recording.
  server_.reset();
  Start();
  {
    // Bound still, and stopping an ended recording changes nothing (no error: a script that
    // stops after the row bound was reached must not fail).
    const grpc::Status again = record(true, &st);
    EXPECT_TRUE(again.ok()) << again.error_message();
    EXPECT_FALSE(st.recording_now());
    EXPECT_EQ(st.recorded_rows(), 76u);
  }
  {
    // Bound to other features, the rows cannot train: said at once, not by a failed job.
    grpc::ClientContext ctx;
    v1::SetIngestBindingRequest req;
    req.set_model("fresh");
    *req.mutable_binding() = b;
    req.mutable_binding()->mutable_features()->SwapElements(0, 1);
    ASSERT_TRUE(admin_->SetIngestBinding(&ctx, req, &st).ok());
    v1::TrainingJob refused;
    const grpc::Status t = train("", &refused);
    EXPECT_EQ(t.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(t.error_message().find("record again"), std::string::npos) << t.error_message();
    grpc::ClientContext ctx2;
    *req.mutable_binding() = b;
    ASSERT_TRUE(admin_->SetIngestBinding(&ctx2, req, &st).ok());
  }
  {
    // A bound model that never recorded has nothing to stop.
    grpc::ClientContext ctx;
    v1::SetIngestBindingRequest bind;
    bind.set_model("never");
    *bind.mutable_binding() = b;
    ASSERT_TRUE(admin_->SetIngestBinding(&ctx, bind, &st).ok());
    grpc::ClientContext ctx2;
    v1::RecordIngestRequest req;
    req.set_model("never");
    req.set_stop(true);
    const grpc::Status none = admin_->RecordIngest(&ctx2, req, &st);
    EXPECT_EQ(none.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(none.error_message().find("has no recording"), std::string::npos)
        << none.error_message();
  }
  EXPECT_EQ(train("a", &job).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(train("", &job).ok());
  const std::vector<v1::TrainingJob> states = WatchToEnd(admin_.get(), job.id());
  ASSERT_FALSE(states.empty());
  ASSERT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  EXPECT_EQ(states.back().rows(), 76u);
  // The model now scores what ingest sends. The restart lost the rows still being assembled, so
  // a host's first row is scored once it is superseded (30 s), the next ones once complete.
  prometheus::WriteRequest next;
  AddRows(&next, data_.normal, 80, 3, kT0 + 40 * kStepMs, "a");
  AddRows(&next, data_.normal, 83, 3, kT0 + 40 * kStepMs, "b");
  ASSERT_EQ(Write(next).status, 200);  // row 40 of each host
  prometheus::WriteRequest last;
  AddRows(&last, data_.normal, 86, 1, kT0 + 43 * kStepMs, "a");
  AddRows(&last, data_.normal, 87, 1, kT0 + 43 * kStepMs, "b");
  ASSERT_EQ(Write(last).status, 200);  // rows 41-43 of each host
  grpc::ClientContext ctx;
  v1::GetModelRequest req;
  req.set_model("fresh");
  v1::ModelInfo info;
  ASSERT_TRUE(scoring_->GetModel(&ctx, req, &info).ok());
  EXPECT_EQ(info.ingest().rows_scored(), 8u);
  EXPECT_EQ(info.ingest().rows_failed(), 0u);
  EXPECT_EQ(info.spec().num_features(), kFeatures);
}

namespace otlp = opentelemetry::proto::collector::metrics::v1;

// Rows [first, first + n) as OTLP gauges synth.m<i> of resource host.name = `host` (feature 0 as
// an integer sum), the row r at t0 + r * 15 s.
otlp::ExportMetricsServiceRequest OtlpRows(const std::vector<float>& values, size_t first, size_t n,
                                           int64_t t0, const std::string& host) {
  otlp::ExportMetricsServiceRequest req;
  auto* rm = req.add_resource_metrics();
  auto* attr = rm->mutable_resource()->add_attributes();
  attr->set_key("host.name");
  attr->mutable_value()->set_string_value(host);
  auto* sm = rm->add_scope_metrics();
  for (uint32_t f = 0; f < kFeatures; ++f) {
    otlp::Metric* m = sm->add_metrics();
    m->set_name("synth.m" + std::to_string(f));
    auto* points = f == 0 ? m->mutable_sum()->mutable_data_points()
                          : m->mutable_gauge()->mutable_data_points();
    for (size_t r = 0; r < n; ++r) {
      otlp::NumberDataPoint* p = points->Add();
      p->set_time_unix_nano(static_cast<uint64_t>(t0 + static_cast<int64_t>(r) * kStepMs) *
                            1000000);
      const float v = values[(first + r) * kFeatures + f];
      if (f == 0) {
        p->set_as_int(static_cast<int64_t>(std::lround(v)));
      } else {
        p->set_as_double(v);
      }
    }
  }
  return req;
}

TEST_F(IngestTest, OtlpGaugesAndSumsFeedTheSameBindings) {
  Start();
  // Feature 0 is sent as an integer: train on integers for it so that rows are normal.
  v1::IngestBinding b;
  for (uint32_t f = 0; f < kFeatures; ++f) {
    auto* feature = b.add_features();
    feature->set_name("m" + std::to_string(f));
    feature->set_selector("synth_m" +
                          std::to_string(f));  // OTLP's synth.m<i>, as Prometheus names it
  }
  b.set_entity_label("host_name");
  v1::IngestStatus st;
  ASSERT_TRUE(Bind(b, &st).ok());
  auto stub = otlp::MetricsService::NewStub(channel_);
  otlp::ExportMetricsServiceResponse resp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Export(&ctx, OtlpRows(data_.normal, 0, 20, kT0, "otel-1"), &resp).ok());
    EXPECT_FALSE(resp.has_partial_success());
  }
  {
    // The next scrape, with one point without a value and one NaN: refused, and said so.
    otlp::ExportMetricsServiceRequest next =
        OtlpRows(data_.normal, 20, 1, kT0 + 20 * kStepMs, "otel-1");
    auto* metrics = next.mutable_resource_metrics(0)->mutable_scope_metrics(0)->mutable_metrics();
    metrics->Mutable(1)->mutable_gauge()->add_data_points()->set_flags(1);
    auto* nan = metrics->Mutable(2)->mutable_gauge()->add_data_points();
    nan->set_time_unix_nano(static_cast<uint64_t>(kT0 + 21 * kStepMs) * 1000000);
    nan->set_as_double(std::nan(""));
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Export(&ctx, next, &resp).ok());
    EXPECT_EQ(resp.partial_success().rejected_data_points(), 2);
    EXPECT_NE(resp.partial_success().error_message().find("2 without a finite value"),
              std::string::npos)
        << resp.partial_success().error_message();
  }
  // Scored off the call's thread: every row of the host, as for remote write.
  EXPECT_TRUE(
      WaitFor([&] { return Info().ingest().rows_scored() == 21; }, std::chrono::seconds(10)))
      << Info().ingest().DebugString();
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(metrics.find("aeserve_ingest_error{model=\"m\",entity=\"otel-1\"}"), std::string::npos);
}

}  // namespace
}  // namespace aeserve::testing
