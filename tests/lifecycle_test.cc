// Retraining over RPC and the model lifecycle, end to end on a real server: train on a real data
// set, watch, score, roll back and forward under a running stream, cancel, thresholds, entities,
// limits, restart.
#include <atomic>
#include <cmath>
#include <thread>

#include "aeserve/v1/scoring.grpc.pb.h"
#include "engine/csv.h"
#include "engine/model.h"
#include "engine/synthetic_data.h"
#include "engine/threshold.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/admin_client.h"
#include "tests/http_get.h"
#include "tests/test_models.h"
#include "tests/test_server.h"

namespace aeserve::testing {
namespace {

using grpc::StatusCode;

struct Data {
  std::vector<float> inliers, all;
  std::vector<float> labels;
  size_t d = 0;
};

// ODDS cardio: 1831 rows, 21 features, 9.6% outliers (../shared/data, see its SOURCE.md).
const Data& Cardio() {
  static const Data* data = [] {
    auto t = engine::ReadCsvFile(AESERVE_SHARED_DATA "/odds/cardio.csv");
    EXPECT_TRUE(t.ok()) << t.status() << " (shared/data must sit beside the repository)";
    auto* d = new Data;
    if (!t.ok()) return d;
    d->d = t->features();
    d->all = t->values;
    d->labels = t->labels;
    for (size_t r = 0; r < t->rows; ++r) {
      if (t->labels[r] == 0) {
        d->inliers.insert(d->inliers.end(), t->values.begin() + r * d->d,
                          t->values.begin() + (r + 1) * d->d);
      }
    }
    return d;
  }();
  return *data;
}

class LifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GT(Cardio().d, 0u) << "every test here trains on ODDS cardio";
    dir_ = std::make_unique<TempDir>("aeserve_lifecycle");
    Start();
  }
  void TearDown() override {
    server_.reset();
    dir_.reset();
  }
  void Start(int max_training_jobs = 1) {
    server::Options o = TestOptions(dir_->path());
    o.max_training_values = 2'000'000;
    o.max_training_jobs = max_training_jobs;
    server_ = StartTestServer(o);
    ASSERT_NE(server_, nullptr);
    auto ch = Connect(*server_);
    admin_ = v1::ModelAdmin::NewStub(ch);
    scoring_ = v1::Scoring::NewStub(ch);
  }

  v1::TrainingJobHeader Header(const std::string& model, uint32_t epochs, uint64_t seed) {
    v1::TrainingJobHeader h;
    h.set_model(model);
    h.set_num_features(static_cast<uint32_t>(Cardio().d));
    h.mutable_spec()->add_encoder_units(32);
    h.mutable_spec()->add_encoder_units(16);
    h.mutable_spec()->set_code_size(4);
    h.mutable_options()->set_epochs(epochs);
    h.mutable_options()->set_seed(seed);
    h.mutable_threshold()->set_method(v1::THRESHOLD_PERCENTILE);
    h.mutable_threshold()->set_value(99);
    return h;
  }

  // Trains over RPC, watches to the end, and returns the final state.
  v1::TrainingJob TrainAndWait(const v1::TrainingJobHeader& h, const std::vector<float>& data) {
    v1::TrainingJob job;
    grpc::Status st = CreateJob(admin_.get(), h, data, &job);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_FALSE(job.id().empty());
    auto states = WatchToEnd(admin_.get(), job.id());
    EXPECT_FALSE(states.empty());
    return states.empty() ? job : states.back();
  }

  v1::ScoreResponse Score(const std::vector<float>& x, uint64_t version = 0,
                          const std::string& entity = "", const std::string& model = "cardio") {
    v1::ScoreRequest req;
    req.set_model(model);
    req.set_entity(entity);
    req.set_version(version);
    req.mutable_samples()->set_num_features(static_cast<uint32_t>(Cardio().d));
    req.mutable_samples()->mutable_values()->Add(x.begin(), x.end());
    grpc::ClientContext ctx;
    v1::ScoreResponse resp;
    grpc::Status st = scoring_->Score(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp;
  }

  // The engine's errors for `x` with the version file in the store.
  std::vector<float> EngineErrors(uint64_t version, const std::vector<float>& x,
                                  const std::string& entity = "") {
    server::ModelStore store(dir_->path());
    auto file = store.Load(server::ModelKey{"cardio", entity}, version);
    EXPECT_TRUE(file.ok()) << file.status();
    // The server keeps entity models in compact layouts (engine::ModelOptions::compact).
    auto m = *engine::Model::Create(*file, engine::ModelOptions{.compact = !entity.empty()});
    engine::ScoreResult r;
    EXPECT_TRUE(m->Score(*m->NewContext(), x, {}, &r).ok());
    return r.error;
  }

  grpc::Status Activate(uint64_t v) {
    grpc::ClientContext ctx;
    v1::ActivateVersionRequest req;
    req.set_model("cardio");
    req.set_version(v);
    v1::ModelInfoBrief b;
    return admin_->ActivateVersion(&ctx, req, &b);
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<v1::ModelAdmin::Stub> admin_;
  std::unique_ptr<v1::Scoring::Stub> scoring_;
};

TEST_F(LifecycleTest, TrainWatchScoreRollBackRollForwardRestart) {
  const Data& data = Cardio();
  ASSERT_GT(data.inliers.size(), 0u);
  // Version 1: trained over RPC on cardio's inliers; every epoch is watched.
  v1::TrainingJob job;
  ASSERT_TRUE(CreateJob(admin_.get(), Header("cardio", 30, 1), data.inliers, &job).ok());
  EXPECT_EQ(job.rows(), data.inliers.size() / data.d);
  auto states = WatchToEnd(admin_.get(), job.id());
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  EXPECT_EQ(states.back().version(), 1u);
  uint32_t last_epoch = 0;
  for (const auto& s : states) {
    EXPECT_GE(s.epoch(), last_epoch) << "progress only moves forward";
    last_epoch = s.epoch();
  }
  EXPECT_GE(states.size(), 3u) << "watchers see progress, not just the end";
  EXPECT_EQ(states.back().history_size(), static_cast<int>(states.back().epoch()));

  // It scores, equal to the engine with the stored file, and separates cardio's outliers.
  v1::ScoreResponse r1 = Score(data.all);
  EXPECT_EQ(r1.version(), 1u);
  EXPECT_EQ(std::vector<float>(r1.errors().begin(), r1.errors().end()), EngineErrors(1, data.all));
  std::vector<float> normal, outlier;
  for (int i = 0; i < r1.errors_size(); ++i)
    (data.labels[i] ? outlier : normal).push_back(r1.errors(i));
  const double auc = engine::Auc(normal, outlier);
  EXPECT_GT(auc, 0.8) << "cardio ROC-AUC of a model trained over RPC";
  std::printf("cardio: trained over RPC in %.2f s, ROC-AUC %.3f\n", states.back().elapsed_seconds(),
              auc);

  // Version 2 (other seed) becomes active; roll back to 1; roll forward to 2.
  auto j2 = TrainAndWait(Header("cardio", 10, 2), data.inliers);
  ASSERT_EQ(j2.state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_EQ(j2.version(), 2u);
  const std::vector<float> probe(data.all.begin(), data.all.begin() + 50 * data.d);
  EXPECT_EQ(Score(probe).version(), 2u);
  ASSERT_TRUE(Activate(1).ok());
  auto back = Score(probe);
  EXPECT_EQ(back.version(), 1u);
  EXPECT_EQ(std::vector<float>(back.errors().begin(), back.errors().end()), EngineErrors(1, probe));
  ASSERT_TRUE(Activate(2).ok());
  EXPECT_EQ(Score(probe).version(), 2u);
  // A staged version does not become active.
  auto h3 = Header("cardio", 3, 3);
  h3.set_no_activate(true);
  auto j3 = TrainAndWait(h3, data.inliers);
  ASSERT_EQ(j3.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_FALSE(j3.activated());
  EXPECT_EQ(Score(probe).version(), 2u);
  EXPECT_EQ(Score(probe, 3).version(), 3u);
  EXPECT_EQ(Activate(9).error_code(), StatusCode::NOT_FOUND);

  // Restarting brings back exactly the active versions.
  server_->Shutdown();
  server_.reset();
  Start();
  EXPECT_EQ(Score(probe).version(), 2u);
  v1::GetModelRequest gm;
  gm.set_model("cardio");
  v1::ModelInfo info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(scoring_->GetModel(&ctx, gm, &info).ok());
  EXPECT_EQ(info.versions_size(), 3);
  EXPECT_EQ(info.active_version(), 2u);
}

TEST_F(LifecycleTest, SwapsUnderARunningStreamFailNothing) {
  const Data& data = Cardio();
  ASSERT_EQ(TrainAndWait(Header("cardio", 5, 1), data.inliers).version(), 1u);
  ASSERT_EQ(TrainAndWait(Header("cardio", 5, 2), data.inliers).version(), 2u);
  const std::vector<float> batch(data.all.begin(), data.all.begin() + 64 * data.d);
  const std::map<uint64_t, std::vector<float>> expected = {{1, EngineErrors(1, batch)},
                                                           {2, EngineErrors(2, batch)}};
  std::atomic<bool> done{false};
  std::atomic<int> swaps{0};
  std::thread swapper([&] {
    for (int i = 0; !done && i < 2000; ++i) {
      EXPECT_TRUE(Activate(1 + i % 2).ok());
      swaps++;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  // Unary calls during the swaps, with their latency.
  std::vector<double> latency_us;
  std::thread unary([&] {
    for (int i = 0; i < 400; ++i) {
      const auto t = std::chrono::steady_clock::now();
      auto r = Score(batch);
      latency_us.push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t).count());
      EXPECT_EQ(std::vector<float>(r.errors().begin(), r.errors().end()), expected.at(r.version()));
    }
  });
  grpc::ClientContext ctx;
  auto stream = scoring_->StreamScore(&ctx);
  std::thread writer([&] {
    for (int i = 0; i < 400; ++i) {
      v1::StreamScoreRequest req;
      if (i == 0) req.mutable_config()->set_model("cardio");
      req.set_sequence(i);
      req.mutable_samples()->set_num_features(static_cast<uint32_t>(data.d));
      req.mutable_samples()->mutable_values()->Add(batch.begin(), batch.end());
      ASSERT_TRUE(stream->Write(req));
    }
    stream->WritesDone();
  });
  std::set<uint64_t> versions_seen;
  int answered = 0;
  v1::StreamScoreResponse r;
  while (stream->Read(&r)) {
    ASSERT_TRUE(r.has_result()) << "no batch may fail during swaps: " << r.DebugString();
    versions_seen.insert(r.result().version());
    EXPECT_EQ(std::vector<float>(r.result().errors().begin(), r.result().errors().end()),
              expected.at(r.result().version()));
    ++answered;
  }
  writer.join();
  unary.join();
  done = true;
  swapper.join();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(answered, 400);
  EXPECT_EQ(versions_seen.size(), 2u) << "the stream switched versions at batch boundaries";
  EXPECT_GT(swaps.load(), 5);
  std::sort(latency_us.begin(), latency_us.end());
  std::printf("unary Score (64 rows) during %d swaps: p50 %.0f us, p99 %.0f us\n", swaps.load(),
              latency_us[latency_us.size() / 2], latency_us[latency_us.size() * 99 / 100]);
}

TEST_F(LifecycleTest, CancelAJobMidway) {
  const Data& data = Cardio();
  auto h = Header("cardio", 100000, 1);
  v1::TrainingJob job;
  ASSERT_TRUE(CreateJob(admin_.get(), h, data.inliers, &job).ok());
  // Wait until it runs, then cancel.
  for (int i = 0; i < 500; ++i) {
    grpc::ClientContext ctx;
    v1::GetTrainingJobRequest req;
    req.set_id(job.id());
    v1::TrainingJob s;
    ASSERT_TRUE(admin_->GetTrainingJob(&ctx, req, &s).ok());
    if (s.epoch() >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // A job queued behind it (one job trains at a time here) ends at once when cancelled.
  v1::TrainingJob queued;
  ASSERT_TRUE(CreateJob(admin_.get(), Header("cardio", 5, 2), data.inliers, &queued).ok());
  {
    grpc::ClientContext qctx;
    v1::GetTrainingJobRequest qreq;
    qreq.set_id(queued.id());
    v1::TrainingJob q;
    ASSERT_TRUE(admin_->CancelTrainingJob(&qctx, qreq, &q).ok());
    EXPECT_EQ(q.state(), v1::JOB_STATE_CANCELLED);
  }
  grpc::ClientContext ctx;
  v1::GetTrainingJobRequest req;
  req.set_id(job.id());
  v1::TrainingJob s;
  ASSERT_TRUE(admin_->CancelTrainingJob(&ctx, req, &s).ok());
  auto states = WatchToEnd(admin_.get(), job.id());
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_LT(states.back().epoch(), 100000u);
  EXPECT_EQ(states.back().version(), 0u);
  EXPECT_TRUE(
      server::ModelStore(dir_->path()).ListVersions(server::ModelKey{"cardio", ""}).empty());
  grpc::ClientContext again;
  EXPECT_EQ(admin_->CancelTrainingJob(&again, req, &s).error_code(),
            StatusCode::FAILED_PRECONDITION);
  v1::ListTrainingJobsResponse list;
  grpc::ClientContext lctx;
  ASSERT_TRUE(admin_->ListTrainingJobs(&lctx, v1::ListTrainingJobsRequest(), &list).ok());
  EXPECT_EQ(list.jobs_size(), 2);
  // Both are counted as cancelled, the queued one too.
  const std::string text = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(text.find("aeserve_training_jobs_total{result=\"cancelled\"} 2\n"), std::string::npos)
      << text;
}

TEST_F(LifecycleTest, ThresholdsWithoutRetrainingAndSeverity) {
  const Data& data = Cardio();
  ASSERT_EQ(TrainAndWait(Header("cardio", 10, 1), data.inliers).version(), 1u);
  server::ModelStore store(dir_->path());
  auto before = *store.Load(server::ModelKey{"cardio", ""}, 1);
  const auto& calib = before.calibration_errors();
  v1::SetThresholdRequest req;
  req.set_model("cardio");
  req.mutable_threshold()->set_method(v1::THRESHOLD_PERCENTILE);
  req.mutable_threshold()->set_value(90);
  req.mutable_critical_threshold()->set_method(v1::THRESHOLD_MEDIAN_MAD);
  req.mutable_critical_threshold()->set_value(6);
  v1::ModelInfoBrief b;
  grpc::ClientContext ctx;
  ASSERT_TRUE(admin_->SetThreshold(&ctx, req, &b).ok());
  const double p90 =
      *engine::ComputeThreshold(req.threshold(), {calib.data(), size_t(calib.size())});
  const double mad6 =
      *engine::ComputeThreshold(req.critical_threshold(), {calib.data(), size_t(calib.size())});
  EXPECT_DOUBLE_EQ(b.threshold_value(), p90);
  EXPECT_DOUBLE_EQ(b.critical_threshold_value(), mad6);
  // The stored file carries the change and its history; the weights are unchanged.
  auto after = *store.Load(server::ModelKey{"cardio", ""}, 1);
  EXPECT_DOUBLE_EQ(after.threshold_value(), p90);
  ASSERT_EQ(after.threshold_history_size(), 1);
  EXPECT_DOUBLE_EQ(after.threshold_history(0).old_value(), before.threshold_value());
  EXPECT_EQ(after.encoder(0).weights(0), before.encoder(0).weights(0));
  // Scores carry severity against both levels.
  auto r = Score(data.all);
  EXPECT_DOUBLE_EQ(r.threshold(), p90);
  EXPECT_DOUBLE_EQ(r.critical_threshold(), mad6);
  ASSERT_EQ(r.severity_size(), r.errors_size());
  int warnings = 0, criticals = 0;
  for (int i = 0; i < r.errors_size(); ++i) {
    const uint32_t want = r.scores(i) > mad6 ? 2 : (r.scores(i) > p90 ? 1 : 0);
    EXPECT_EQ(r.severity(i), want);
    warnings += want == 1;
    criticals += want == 2;
  }
  EXPECT_GT(warnings, 0);
  EXPECT_GT(criticals, 0);
  // A critical level below the anomaly level is refused.
  req.mutable_critical_threshold()->set_method(v1::THRESHOLD_PERCENTILE);
  req.mutable_critical_threshold()->set_value(50);
  grpc::ClientContext c2;
  EXPECT_EQ(admin_->SetThreshold(&c2, req, &b).error_code(), StatusCode::INVALID_ARGUMENT);
}

// Bulk entity training: one upload whose rows name their hosts trains one model per host on that
// host's rows; a host with too few rows fails alone, and the job says so.
TEST_F(LifecycleTest, BulkEntityTrainingTrainsOneModelPerEntity) {
  const Data& data = Cardio();
  ASSERT_EQ(TrainAndWait(Header("cardio", 5, 1), data.inliers).version(), 1u);
  // Rows interleaved: 300 of host-a, 250 of host-b, 5 of host-c.
  std::vector<float> values;
  std::vector<std::string> entities;
  size_t next = 0;
  auto take = [&](const std::string& e) {
    values.insert(values.end(), data.inliers.begin() + next * data.d,
                  data.inliers.begin() + (next + 1) * data.d);
    entities.push_back(e);
    ++next;
  };
  for (int i = 0; i < 300; ++i) {
    take("host-a");
    if (i < 250) take("host-b");
    if (i < 5) take("host-c");
  }
  auto h = Header("cardio", 5, 3);
  h.set_per_entity(true);
  v1::TrainingJob job;
  grpc::Status st = CreateJob(admin_.get(), h, values, &job, "", 128, entities);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(job.entities_size(), 3);
  EXPECT_EQ(job.entities(0).entity(), "host-a");
  EXPECT_EQ(job.entities(0).rows(), 300u);
  EXPECT_EQ(job.entities(2).rows(), 5u);
  auto states = WatchToEnd(admin_.get(), job.id());
  ASSERT_FALSE(states.empty());
  const v1::TrainingJob& done = states.back();
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_NE(done.error().find("1 of 3 entities failed; the first: host-c: training data: 5 rows"),
            std::string::npos)
      << done.error();
  ASSERT_EQ(done.entities_size(), 3);
  server::ModelStore store(dir_->path());
  for (int i = 0; i < 2; ++i) {
    const v1::EntityTraining& e = done.entities(i);
    EXPECT_EQ(e.state(), v1::JOB_STATE_SUCCEEDED) << e.entity() << ": " << e.error();
    EXPECT_EQ(e.version(), 1u);
    EXPECT_TRUE(e.activated());
    EXPECT_GT(e.epoch(), 0u);
    // Each model learned from its own rows only.
    auto f = store.Load(server::ModelKey{"cardio", e.entity()}, 1);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->metadata().data_rows(), e.rows());
    EXPECT_EQ(f->metadata().training_job(), job.id());
  }
  EXPECT_EQ(done.entities(2).state(), v1::JOB_STATE_FAILED);
  EXPECT_FALSE(store.Load(server::ModelKey{"cardio", "host-c"}, 1).ok());
  // Requests naming a host score with its model; host-c (no model) with the generic one.
  const std::vector<float> probe(data.all.begin(), data.all.begin() + 20 * data.d);
  auto a = Score(probe, 0, "host-a");
  EXPECT_EQ(a.entity(), "host-a");
  EXPECT_EQ(std::vector<float>(a.errors().begin(), a.errors().end()),
            EngineErrors(1, probe, "host-a"));
  EXPECT_EQ(Score(probe, 0, "host-c").entity(), "");

  // Refused uploads name the problem and create nothing.
  auto refused = [&](v1::TrainingJobHeader header, const std::vector<std::string>& names) {
    v1::TrainingJob j;
    grpc::Status s = CreateJob(admin_.get(), header, values, &j, "", 128, names);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
    return s.error_message();
  };
  EXPECT_NE(refused(Header("cardio", 5, 3), entities).find("without header.per_entity"),
            std::string::npos);
  auto with_entity = h;
  with_entity.set_entity("host-a");
  EXPECT_NE(refused(with_entity, entities).find("header.entity must be empty"), std::string::npos);
  EXPECT_NE(refused(h, std::vector<std::string>(entities.begin(), entities.end() - 1))
                .find("every row needs its entity"),
            std::string::npos);
  auto bad = entities;
  bad[7] = "bad/name";
  EXPECT_NE(refused(h, bad).find("row 7"), std::string::npos);
}

// Training takes at most --max_training_jobs cores, bulk helpers included: while another job
// trains, a bulk job trains one entity at a time; every entity is still trained.
TEST_F(LifecycleTest, BulkTrainingSharesTheTrainingCoresWithOtherJobs) {
  server_.reset();
  Start(/*max_training_jobs=*/2);
  const Data& data = Cardio();
  auto get = [&](const std::string& id) {
    grpc::ClientContext ctx;
    v1::GetTrainingJobRequest req;
    req.set_id(id);
    v1::TrainingJob s;
    EXPECT_TRUE(admin_->GetTrainingJob(&ctx, req, &s).ok());
    return s;
  };
  v1::TrainingJob long_job;
  ASSERT_TRUE(CreateJob(admin_.get(), Header("long", 400, 1), data.inliers, &long_job).ok());
  // Four hosts of 400 rows, each a few hundred milliseconds of training.
  std::vector<float> values;
  std::vector<std::string> entities;
  for (size_t r = 0; r < 1600; ++r) {
    const size_t row = r % (data.inliers.size() / data.d);
    values.insert(values.end(), data.inliers.begin() + row * data.d,
                  data.inliers.begin() + (row + 1) * data.d);
    entities.push_back("host-" + std::to_string(r % 4));
  }
  auto h = Header("bulk", 300, 2);
  h.set_per_entity(true);
  v1::TrainingJob bulk;
  ASSERT_TRUE(CreateJob(admin_.get(), h, values, &bulk, "", 128, entities).ok());
  int most = 0, samples_with_both = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  // Until the bulk job ends (or the long one: it is long only to keep a core busy meanwhile).
  for (;;) {
    const v1::TrainingJob l = get(long_job.id()), b = get(bulk.id());
    const bool bulk_ended = b.state() != v1::JOB_STATE_QUEUED && b.state() != v1::JOB_STATE_RUNNING;
    if (l.state() != v1::JOB_STATE_RUNNING || bulk_ended ||
        std::chrono::steady_clock::now() > deadline) {
      break;
    }
    int running = 1;
    for (const auto& e : b.entities()) running += e.state() == v1::JOB_STATE_RUNNING;
    samples_with_both += running > 1;
    most = std::max(most, running);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "neither job ended within 120 s";
  EXPECT_GT(samples_with_both, 0) << "the bulk job never trained beside the long one";
  EXPECT_LE(most, 2) << "more jobs and entities trained at once than --max_training_jobs";
  auto states = WatchToEnd(admin_.get(), bulk.id());
  ASSERT_FALSE(states.empty());
  ASSERT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  for (const auto& e : states.back().entities()) {
    EXPECT_EQ(e.state(), v1::JOB_STATE_SUCCEEDED) << e.entity() << ": " << e.error();
  }
  // The long job has done its part: cancelled if it still runs (under sanitizers it can take
  // a minute), it ends either way.
  grpc::ClientContext cctx;
  v1::GetTrainingJobRequest creq;
  creq.set_id(long_job.id());
  v1::TrainingJob cancelled;
  (void)admin_->CancelTrainingJob(&cctx, creq, &cancelled);  // FAILED_PRECONDITION once it ended
  const v1::JobState end = WatchToEnd(admin_.get(), long_job.id()).back().state();
  EXPECT_TRUE(end == v1::JOB_STATE_SUCCEEDED || end == v1::JOB_STATE_CANCELLED)
      << v1::JobState_Name(end);
}

TEST_F(LifecycleTest, PerEntityModelsFallBackToTheGenericOne) {
  const Data& data = Cardio();
  ASSERT_EQ(TrainAndWait(Header("cardio", 5, 1), data.inliers).version(), 1u);
  auto h = Header("cardio", 5, 7);
  h.set_entity("host-1");
  auto j = TrainAndWait(
      h, std::vector<float>(data.inliers.begin(), data.inliers.begin() + 800 * data.d));
  ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.error();
  const std::vector<float> probe(data.all.begin(), data.all.begin() + 20 * data.d);
  auto own = Score(probe, 0, "host-1");
  EXPECT_EQ(own.entity(), "host-1");
  EXPECT_EQ(std::vector<float>(own.errors().begin(), own.errors().end()),
            EngineErrors(1, probe, "host-1"));
  auto other = Score(probe, 0, "host-2");
  EXPECT_EQ(other.entity(), "");
  EXPECT_EQ(std::vector<float>(other.errors().begin(), other.errors().end()),
            EngineErrors(1, probe));
  v1::GetModelRequest gm;
  gm.set_model("cardio");
  v1::ModelInfo info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(scoring_->GetModel(&ctx, gm, &info).ok());
  ASSERT_EQ(info.entities_size(), 1);
  EXPECT_EQ(info.entities(0), "host-1");
  // Entities are never metric labels: the entity job's progress is the model's.
  const std::string text = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(text.find("aeserve_training_epoch{model=\"cardio\"}"), std::string::npos);
  EXPECT_EQ(text.find("host-1"), std::string::npos) << "an entity id in a label";
}

TEST_F(LifecycleTest, DeletesNeedForceForActiveVersions) {
  const Data& data = Cardio();
  ASSERT_EQ(TrainAndWait(Header("cardio", 3, 1), data.inliers).version(), 1u);
  ASSERT_EQ(TrainAndWait(Header("cardio", 3, 2), data.inliers).version(), 2u);
  auto del = [&](uint64_t v, bool force) {
    grpc::ClientContext ctx;
    v1::DeleteVersionRequest req;
    req.set_model("cardio");
    req.set_version(v);
    req.set_force(force);
    v1::ModelInfoBrief b;
    return admin_->DeleteVersion(&ctx, req, &b);
  };
  EXPECT_EQ(del(2, false).error_code(), StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(del(1, false).ok());
  EXPECT_EQ(del(1, false).error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(Score(std::vector<float>(data.all.begin(), data.all.begin() + data.d)).version(), 2u);
  grpc::ClientContext ctx;
  v1::DeleteModelRequest dm;
  dm.set_model("cardio");
  v1::DeleteModelResponse resp;
  EXPECT_EQ(admin_->DeleteModel(&ctx, dm, &resp).error_code(), StatusCode::FAILED_PRECONDITION);
  dm.set_force(true);
  grpc::ClientContext c2;
  EXPECT_TRUE(admin_->DeleteModel(&c2, dm, &resp).ok());
  EXPECT_FALSE(std::filesystem::exists(dir_->path() + "/cardio"));
}

TEST_F(LifecycleTest, BadJobsAreRefusedWithTheReason) {
  const Data& data = Cardio();
  v1::TrainingJob job;
  auto h = Header("cardio", 3, 1);
  h.mutable_spec()->set_code_size(0);
  grpc::Status st = CreateJob(admin_.get(), h, data.inliers, &job);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("code_size"), std::string::npos) << st.error_message();
  h = Header("bad name!", 3, 1);
  EXPECT_EQ(CreateJob(admin_.get(), h, data.inliers, &job).error_code(),
            StatusCode::INVALID_ARGUMENT);
  h = Header("cardio", 3, 1);
  h.set_fine_tune(true);  // nothing to fine-tune yet
  EXPECT_EQ(CreateJob(admin_.get(), h, data.inliers, &job).error_code(), StatusCode::NOT_FOUND);
  h = Header("cardio", 3, 1);
  std::vector<float> big(2'100'000 / data.d * data.d, 0.5f);  // over --max_training_values
  st = CreateJob(admin_.get(), h, big, &job, "", 5000);
  EXPECT_EQ(st.error_code(), StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  std::vector<float> ragged(data.inliers.begin(), data.inliers.begin() + 10 * data.d + 3);
  EXPECT_EQ(CreateJob(admin_.get(), h, ragged, &job).error_code(), StatusCode::INVALID_ARGUMENT);
  std::vector<float> nan_data(data.inliers.begin(), data.inliers.begin() + 100 * data.d);
  nan_data[5] = INFINITY;
  ASSERT_TRUE(CreateJob(admin_.get(), h, nan_data, &job).ok());
  auto states = WatchToEnd(admin_.get(), job.id());
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back().state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(states.back().error().find("infinite value"), std::string::npos)
      << states.back().error();
}

TEST_F(LifecycleTest, FineTuneStartsFromTheActiveVersion) {
  const Data& data = Cardio();
  auto j1 = TrainAndWait(Header("cardio", 20, 1), data.inliers);
  ASSERT_EQ(j1.version(), 1u);
  v1::TrainingJobHeader h;
  h.set_model("cardio");
  h.set_num_features(static_cast<uint32_t>(data.d));
  h.set_fine_tune(true);
  h.mutable_options()->set_epochs(2);
  auto j2 = TrainAndWait(h, data.inliers);
  ASSERT_EQ(j2.state(), v1::JOB_STATE_SUCCEEDED) << j2.error();
  auto scratch = TrainAndWait(Header("cardio", 2, 9), data.inliers);
  ASSERT_EQ(scratch.state(), v1::JOB_STATE_SUCCEEDED);
  // The fine-tuned job's first epoch starts where version 1 ended, far below a fresh start.
  EXPECT_LT(j2.history(0).train_loss(), 0.8 * scratch.history(0).train_loss());
  auto file = *server::ModelStore(dir_->path()).Load(server::ModelKey{"cardio", ""}, 2);
  EXPECT_EQ(file.metadata().base_version(), 1u);
  EXPECT_EQ(file.metadata().training_job(), j2.id());
}

}  // namespace
}  // namespace aeserve::testing
