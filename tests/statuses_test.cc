// Statuses a client can act on (issue #12, items 12 and 13), against the real binary: a port in
// use, values too large to score, critical levels that cannot work, forgotten jobs, reflection,
// and watchers told the server is going away.
#include <thread>

#include "gtest/gtest.h"
#include "tests/admin_client.h"
#include "tests/process_client.h"
#include "tests/raw_client.h"
#include "tests/test_models.h"
#include "tests/wait_for.h"

namespace aeserve::testing {
namespace {

using std::chrono::milliseconds;

TEST(Statuses, ASecondServerOnAPortInUseFails) {
  TempDir dir("aeserve_port");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto first = Serve(dir.path());
  ServerProcess second;
  second.Start(TestBinary(),
               {"--host=127.0.0.1", "--port=" + std::to_string(first->process.port()),
                "--metrics_port=0", "--model_dir=" + dir.path()},
               0.2);
  EXPECT_EQ(second.Wait(20), 1) << second.log();
  EXPECT_NE(
      second.log().find("cannot listen on 127.0.0.1:" + std::to_string(first->process.port())),
      std::string::npos)
      << second.log();
  EXPECT_EQ(first->Stop(), 0);
}

TEST(Statuses, AValueTooLargeToScoreIsNamed) {
  TempDir dir("aeserve_huge");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto r = Serve(dir.path());
  {
    grpc::ClientContext ctx;
    v1::ScoreRequest req;
    req.set_model("m");
    req.mutable_samples()->set_num_features(kFeatures);
    req.mutable_samples()->mutable_values()->Resize(2 * kFeatures, 0.f);
    req.mutable_samples()->set_values(kFeatures + 5, 1e19f);
    req.mutable_options()->set_top_k(3);
    v1::ScoreResponse resp;
    grpc::Status st = r->scoring->Score(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("row 1: feature 5"), std::string::npos) << st.error_message();
  }
  EXPECT_EQ(r->Stop(), 0);
}

TEST(Statuses, CriticalLevelsThatCannotWorkAreRefused) {
  TempDir dir("aeserve_critical");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto r = Serve(dir.path());
  auto data = engine::MakeSynthetic(300, 0, kFeatures, 3, 5);
  v1::TrainingJobHeader h;
  h.set_model("m");
  h.set_num_features(kFeatures);
  h.mutable_options()->set_epochs(2);
  h.mutable_threshold()->set_method(v1::THRESHOLD_PERCENTILE);
  h.mutable_threshold()->set_value(99.5);
  h.mutable_critical_threshold()->set_method(v1::THRESHOLD_PERCENTILE);
  h.mutable_critical_threshold()->set_value(99);
  v1::TrainingJob job;
  grpc::Status st = CreateJob(r->admin.get(), h, data.normal, &job);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("below the anomaly level"), std::string::npos)
      << st.error_message();
  h.mutable_critical_threshold()->set_method(v1::THRESHOLD_FIXED);
  h.mutable_critical_threshold()->set_value(0);
  st = CreateJob(r->admin.get(), h, data.normal, &job);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("above 0"), std::string::npos) << st.error_message();
  // Different methods are compared once computed: a fixed level far below the percentile fails
  // the job with the reason, and no version is written.
  h.mutable_critical_threshold()->set_value(1e-9);
  ASSERT_TRUE(CreateJob(r->admin.get(), h, data.normal, &job).ok());
  const v1::TrainingJob end = WatchToEnd(r->admin.get(), job.id()).back();
  EXPECT_EQ(end.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(end.error().find("below the anomaly level"), std::string::npos) << end.error();
  EXPECT_EQ(server::ModelStore(dir.path()).ListVersions(server::ModelKey{"m", ""}).size(), 1u);
  {
    // SetThreshold: a fixed critical level of 0 would be stored and never applied.
    grpc::ClientContext ctx;  // scoped: a live context keeps its connection open past SIGTERM
    v1::SetThresholdRequest sr;
    sr.set_model("m");
    sr.mutable_critical_threshold()->set_method(v1::THRESHOLD_FIXED);
    sr.mutable_critical_threshold()->set_value(0);
    v1::ModelInfoBrief brief;
    st = r->admin->SetThreshold(&ctx, sr, &brief);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("above 0"), std::string::npos) << st.error_message();
  }
  EXPECT_EQ(r->Stop(), 0);
}

TEST(Statuses, EndedJobsAreForgottenBeyondTheLimit) {
  TempDir dir("aeserve_jobs");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto r = Serve(dir.path(), {"--max_finished_jobs=2"});
  auto data = engine::MakeSynthetic(200, 0, kFeatures, 3, 5);
  v1::TrainingJobHeader h;
  h.set_model("m");
  h.set_num_features(kFeatures);
  h.set_no_activate(true);
  h.mutable_options()->set_epochs(1);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    v1::TrainingJob job;
    ASSERT_TRUE(CreateJob(r->admin.get(), h, data.normal, &job).ok());
    WatchToEnd(r->admin.get(), job.id());
    ids.push_back(job.id());
  }
  {
    grpc::ClientContext ctx;
    v1::ListTrainingJobsRequest lr;
    v1::ListTrainingJobsResponse jobs;
    ASSERT_TRUE(r->admin->ListTrainingJobs(&ctx, lr, &jobs).ok());
    ASSERT_EQ(jobs.jobs_size(), 2);
    for (const auto& j : jobs.jobs()) EXPECT_NE(j.id(), ids[0]);
    grpc::ClientContext gctx;
    v1::GetTrainingJobRequest gr;
    gr.set_id(ids[0]);
    v1::TrainingJob got;
    EXPECT_EQ(r->admin->GetTrainingJob(&gctx, gr, &got).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  EXPECT_EQ(r->Stop(), 0);
}

TEST(Statuses, ReflectionCanBeTurnedOff) {
  TempDir dir("aeserve_reflection");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  const std::string method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
  // list_services (field 7) = "".
  const std::string list_services("\x3a\x00", 2);
  for (bool on : {true, false}) {
    auto r = Serve(dir.path(), {on ? "--reflection=true" : "--reflection=false"});
    RawResult res = RawStreamCall(r->channel, method, {list_services});
    ASSERT_TRUE(res.finished);
    if (on) {
      EXPECT_TRUE(res.status.ok()) << res.status.error_message();
      ASSERT_EQ(res.responses.size(), 1u);
      EXPECT_NE(res.responses[0].find("aeserve.v1.Scoring"), std::string::npos);
    } else {
      EXPECT_EQ(res.status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
    }
    EXPECT_EQ(r->Stop(), 0);
  }
}

TEST(Statuses, WatchersAreToldTheServerIsShuttingDown) {
  TempDir dir("aeserve_watch_term");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto r = Serve(dir.path());
  {
    grpc::ClientContext wctx;
    wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::WatchAnomaliesRequest wreq;
    wreq.set_model("m");
    auto watch = r->scoring->WatchAnomalies(&wctx, wreq);
    // Subscribed once an anomalous probe comes back as an event.
    std::atomic<bool> got{false};
    std::thread reader([&] {
      v1::AnomalyEvent e;
      got = watch->Read(&e);
    });
    ASSERT_TRUE(WaitFor(
        [&] {
          v1::ScoreResponse resp;
          ScoreFilled(*r, "m", kFeatures, 50.f, &resp);  // rows of 50s are flagged
          return got.load();
        },
        milliseconds(10000)));
    reader.join();
    r->process.Signal(SIGTERM);
    v1::AnomalyEvent e;
    while (watch->Read(&e)) {
    }
    grpc::Status st = watch->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  }
  r->scoring.reset();  // let the connection go, so that shutdown need not wait for it
  r->admin.reset();
  r->channel.reset();
  EXPECT_EQ(r->process.Wait(20), 0) << r->process.log();
}

TEST(Statuses, ShutdownDoesNotWaitForALongEpoch) {
  TempDir dir("aeserve_long_epoch");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto r = Serve(dir.path(), {"--shutdown_grace_seconds=1"});
  // A wide model over 60,000 rows: one epoch takes far longer than the bound below.
  auto data = engine::MakeSynthetic(60000, 0, kFeatures, 3, 7);
  v1::TrainingJobHeader h;
  h.set_model("m");
  h.set_num_features(kFeatures);
  h.mutable_spec()->add_encoder_units(2048);
  h.mutable_spec()->add_encoder_units(1024);
  h.mutable_spec()->set_code_size(8);
  h.mutable_options()->set_epochs(1);
  v1::TrainingJob job;
  ASSERT_TRUE(CreateJob(r->admin.get(), h, data.normal, &job, "", 5000).ok());
  v1::TrainingJob now;
  ASSERT_TRUE(WaitFor(
      [&] {
        grpc::ClientContext ctx;
        v1::GetTrainingJobRequest req;
        req.set_id(job.id());
        return r->admin->GetTrainingJob(&ctx, req, &now).ok() &&
               now.state() == v1::JOB_STATE_RUNNING;
      },
      milliseconds(20000)));
  const auto start = std::chrono::steady_clock::now();
  const int code = r->Stop();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(code, 0) << r->process.log();
  EXPECT_LT(seconds, 8) << "SIGTERM waited for the epoch to end";
  EXPECT_NE(r->process.log().find("training cancelled in epoch 1"), std::string::npos)
      << r->process.log();
}

TEST(Statuses, CriticalOnlyWatchersGetCriticalEvents) {
  TempDir dir("aeserve_watch_critical");
  Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN));
  auto r = Serve(dir.path());
  {
    grpc::ClientContext ctx;
    v1::SetThresholdRequest sr;
    sr.set_model("m");
    sr.mutable_critical_threshold()->set_method(v1::THRESHOLD_MEAN_STD);
    sr.mutable_critical_threshold()->set_value(20);
    v1::ModelInfoBrief brief;
    ASSERT_TRUE(r->admin->SetThreshold(&ctx, sr, &brief).ok());
  }
  {
    grpc::ClientContext wctx;
    v1::WatchAnomaliesRequest wreq;
    wreq.set_model("m");
    wreq.set_min_severity(2);
    auto watch = r->scoring->WatchAnomalies(&wctx, wreq);
    std::atomic<bool> got{false};
    v1::AnomalyEvent e;
    std::thread reader([&] { got = watch->Read(&e); });
    // Rows of 50s are far above any critical level of this model.
    const bool seen = WaitFor(
        [&] {
          v1::ScoreResponse resp;
          ScoreFilled(*r, "m", kFeatures, 50.f, &resp);  // rows of 50s are flagged
          return got.load();
        },
        milliseconds(10000));
    if (!seen) wctx.TryCancel();
    reader.join();
    ASSERT_TRUE(seen) << "a min_severity=2 watcher received nothing";
    EXPECT_EQ(e.severity(), 2u);
    wctx.TryCancel();
    watch->Finish();
  }
  EXPECT_EQ(r->Stop(), 0);
}

}  // namespace
}  // namespace aeserve::testing
