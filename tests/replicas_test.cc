// Several aeserve processes sharing one model store (how Kubernetes replicas share a volume): a
// version trained, activated or re-thresholded through any replica reaches the others within a
// bounded time, and concurrent writers never corrupt the store.
#include <signal.h>

#include <filesystem>
#include <thread>

#include "aeserve/v1/scoring.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/job_files.h"
#include "tests/admin_client.h"
#include "tests/server_process.h"
#include "tests/test_models.h"

namespace aeserve::testing {
namespace {

struct Replica {
  ServerProcess process;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Scoring::Stub> scoring;
  std::unique_ptr<v1::ModelAdmin::Stub> admin;
};

std::unique_ptr<Replica> StartReplica(const std::string& dir) {
  auto r = std::make_unique<Replica>();
  EXPECT_TRUE(r->process.Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                                "--model_dir=" + dir, "--store_poll_seconds=0.2"}));
  r->channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(r->process.port()),
                                   grpc::InsecureChannelCredentials());
  r->scoring = v1::Scoring::NewStub(r->channel);
  r->admin = v1::ModelAdmin::NewStub(r->channel);
  return r;
}

absl::StatusOr<v1::ModelInfo> Info(Replica& r) {
  grpc::ClientContext ctx;
  v1::GetModelRequest req;
  req.set_model("shared");
  v1::ModelInfo info;
  grpc::Status st = r.scoring->GetModel(&ctx, req, &info);
  if (!st.ok()) return absl::UnavailableError(st.error_message());
  return info;
}

// Waits (at most 10 s) until `pred(info)` holds on replica `r`; returns the seconds it took.
template <typename Pred>
double WaitFor(Replica& r, Pred pred) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 1000; ++i) {
    auto info = Info(r);
    if (info.ok() && pred(*info)) {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

grpc::Status Activate(Replica& r, uint64_t v) {
  grpc::ClientContext ctx;
  v1::ActivateVersionRequest req;
  req.set_model("shared");
  req.set_version(v);
  v1::ModelInfoBrief b;
  return r.admin->ActivateVersion(&ctx, req, &b);
}

TEST(Replicas, ChangesThroughOneReplicaReachTheOthers) {
  TempDir dir("aeserve_replicas");
  Store(dir.path(), "shared", TrainSmall(v1::MODEL_KIND_PLAIN, 1));
  auto a = StartReplica(dir.path());
  auto b = StartReplica(dir.path());
  ASSERT_GE(WaitFor(*a, [](const v1::ModelInfo& i) { return i.active_version() == 1; }), 0);
  ASSERT_GE(WaitFor(*b, [](const v1::ModelInfo& i) { return i.active_version() == 1; }), 0);

  // Train version 2 through A; B serves it within a bounded time.
  auto data = engine::MakeSynthetic(800, 0, kFeatures, 3, 77);
  v1::TrainingJobHeader h;
  h.set_model("shared");
  h.set_num_features(kFeatures);
  h.mutable_options()->set_epochs(3);
  v1::TrainingJob job;
  ASSERT_TRUE(CreateJob(a->admin.get(), h, data.normal, &job).ok());
  auto states = WatchToEnd(a->admin.get(), job.id());
  ASSERT_EQ(states.back().version(), 2u);
  const double seen = WaitFor(*b, [](const v1::ModelInfo& i) { return i.active_version() == 2; });
  ASSERT_GE(seen, 0) << "replica B never saw version 2";
  std::printf("version 2 trained on A was active on B after %.2f s\n", seen);

  // Roll back through B; A follows.
  ASSERT_TRUE(Activate(*b, 1).ok());
  ASSERT_GE(WaitFor(*a, [](const v1::ModelInfo& i) { return i.active_version() == 1; }), 0);

  // A threshold change through A reaches B.
  grpc::ClientContext ctx;
  v1::SetThresholdRequest tr;
  tr.set_model("shared");
  tr.mutable_threshold()->set_method(v1::THRESHOLD_FIXED);
  tr.mutable_threshold()->set_value(0.123);
  v1::ModelInfoBrief brief;
  ASSERT_TRUE(a->admin->SetThreshold(&ctx, tr, &brief).ok());
  ASSERT_GE(WaitFor(*b, [](const v1::ModelInfo& i) { return i.threshold_value() == 0.123; }), 0);

  // Concurrent activations from both replicas: the store stays valid and both converge.
  std::thread ta([&] {
    for (int i = 0; i < 40; ++i) EXPECT_TRUE(Activate(*a, 1 + i % 2).ok());
  });
  std::thread tb([&] {
    for (int i = 0; i < 40; ++i) EXPECT_TRUE(Activate(*b, 2 - i % 2).ok());
  });
  ta.join();
  tb.join();
  server::ModelStore store(dir.path());
  auto active = store.ReadActive(server::ModelKey{"shared", ""});
  ASSERT_TRUE(active.ok());
  EXPECT_TRUE(*active == 1 || *active == 2);
  const uint64_t want = *active;
  EXPECT_GE(WaitFor(*a, [&](const v1::ModelInfo& i) { return i.active_version() == want; }), 0);
  EXPECT_GE(WaitFor(*b, [&](const v1::ModelInfo& i) { return i.active_version() == want; }), 0);

  // Concurrent training on both replicas: distinct, complete versions.
  v1::TrainingJob ja, jb;
  ASSERT_TRUE(CreateJob(a->admin.get(), h, data.normal, &ja).ok());
  ASSERT_TRUE(CreateJob(b->admin.get(), h, data.normal, &jb).ok());
  const uint64_t va = WatchToEnd(a->admin.get(), ja.id()).back().version();
  const uint64_t vb = WatchToEnd(b->admin.get(), jb.id()).back().version();
  EXPECT_NE(va, vb);
  EXPECT_GT(va, 2u);
  EXPECT_GT(vb, 2u);
  for (uint64_t v : store.ListVersions(server::ModelKey{"shared", ""})) {
    EXPECT_TRUE(store.Load(server::ModelKey{"shared", ""}, v).ok()) << "version " << v;
  }
  EXPECT_GE(WaitFor(*a, [](const v1::ModelInfo& i) { return i.versions_size() == 4; }), 0);
  EXPECT_GE(WaitFor(*b, [](const v1::ModelInfo& i) { return i.versions_size() == 4; }), 0);
  a->scoring.reset();
  a->admin.reset();
  a->channel.reset();
  b->scoring.reset();
  b->admin.reset();
  b->channel.reset();
  a->process.Signal(SIGTERM);
  b->process.Signal(SIGTERM);
  EXPECT_EQ(a->process.Wait(20), 0);
  EXPECT_EQ(b->process.Wait(20), 0);
}

// A training job created through one replica can be read, listed, watched and cancelled through
// another (its state lives in the store's .jobs directory); a job whose replica stopped updating
// it reads as FAILED.
TEST(Replicas, TrainingJobsAnswerOnEveryReplica) {
  TempDir dir("aeserve_replica_jobs");
  Store(dir.path(), "shared", TrainSmall(v1::MODEL_KIND_PLAIN, 1));
  auto a = StartReplica(dir.path());
  auto b = StartReplica(dir.path());
  ASSERT_GE(WaitFor(*b, [](const v1::ModelInfo& i) { return i.active_version() == 1; }), 0);
  // Long enough to be watched and cancelled while it runs: many epochs of 20,000 rows.
  auto data = engine::MakeSynthetic(20000, 0, kFeatures, 3, 5);
  v1::TrainingJobHeader h;
  h.set_model("shared");
  h.set_num_features(kFeatures);
  h.mutable_options()->set_epochs(10000);
  h.mutable_options()->set_patience(10000);
  v1::TrainingJob job;
  ASSERT_TRUE(CreateJob(a->admin.get(), h, data.normal, &job).ok());
  EXPECT_FALSE(job.replica().empty());

  auto get = [&](Replica& r) {
    grpc::ClientContext ctx;
    v1::GetTrainingJobRequest req;
    req.set_id(job.id());
    v1::TrainingJob got;
    grpc::Status st = r.admin->GetTrainingJob(&ctx, req, &got);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return got;
  };
  EXPECT_EQ(get(*b).replica(), job.replica());
  {
    grpc::ClientContext ctx;
    v1::ListTrainingJobsRequest req;
    req.set_model("shared");
    v1::ListTrainingJobsResponse list;
    ASSERT_TRUE(b->admin->ListTrainingJobs(&ctx, req, &list).ok());
    bool listed = false;
    for (const auto& j : list.jobs()) listed |= j.id() == job.id();
    EXPECT_TRUE(listed);
  }

  // Watch through B until an epoch is reported, cancel through B, and see the end through B.
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::GetTrainingJobRequest wreq;
  wreq.set_id(job.id());
  auto reader = b->admin->WatchTrainingJob(&wctx, wreq);
  v1::TrainingJob s;
  bool cancelled = false;
  while (reader->Read(&s)) {
    if (s.epoch() > 0 && !cancelled) {
      grpc::ClientContext cctx;
      v1::TrainingJob after;
      ASSERT_TRUE(b->admin->CancelTrainingJob(&cctx, wreq, &after).ok());
      cancelled = true;
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(cancelled);
  EXPECT_EQ(s.state(), v1::JOB_STATE_CANCELLED) << s.error();
  EXPECT_EQ(get(*a).state(), v1::JOB_STATE_CANCELLED);

  // A job file whose replica stopped (written by hand, a minute and more old) reads as FAILED.
  v1::TrainingJob lost = job;
  lost.set_id("job-1-1-dead");
  lost.set_state(v1::JOB_STATE_RUNNING);
  lost.set_replica("gone:1:0");
  server::JobFiles files(dir.path());
  ASSERT_TRUE(files.Write(lost).ok());
  const std::string path = dir.path() + "/.jobs/job-1-1-dead.pb";
  const auto old = std::filesystem::file_time_type::clock::now() - std::chrono::seconds(120);
  std::filesystem::last_write_time(path, old);
  grpc::ClientContext lctx;
  v1::GetTrainingJobRequest lreq;
  lreq.set_id("job-1-1-dead");
  v1::TrainingJob got;
  ASSERT_TRUE(b->admin->GetTrainingJob(&lctx, lreq, &got).ok());
  EXPECT_EQ(got.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(got.error().find("gone:1:0"), std::string::npos) << got.error();
}

}  // namespace
}  // namespace aeserve::testing
