// The autopilot (issue #15) through the real binary: drift -> retrain -> shadow -> promotion with
// no client action, a bad candidate rejected, growth retraining on uploaded + scored history, and
// SIGKILL during retention writes and during a shadow window.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include "gtest/gtest.h"
#include "server/retention.h"
#include "tests/admin_client.h"
#include "tests/process_client.h"
#include "tests/retained_files.h"
#include "tests/test_models.h"
#include "tests/wait_for.h"

namespace aeserve::testing {
namespace {

namespace fs = std::filesystem;
using server::Retention;
using std::chrono::milliseconds;

// ---------------------------------------------------------------- through the real binary

constexpr char kModel[] = "ap";

std::vector<float> Normal(size_t rows, uint64_t seed) {
  return engine::MakeSynthetic(rows, 0, kFeatures, 3, seed).normal;
}
// More rows like Normal(first, 1)'s, and not among them.
std::vector<float> NormalAfter(size_t first, size_t rows) {
  auto all = Normal(first + rows, 1);
  return {all.begin() + first * kFeatures, all.end()};
}

// The same structure, moved and stretched: learnable, and far from the normal rows.
std::vector<float> Shifted(size_t rows, uint64_t seed, float scale = 3.f, float offset = 4.f) {
  auto v = Normal(rows, seed);
  for (float& x : v) x = scale * x + offset;
  return v;
}

uint64_t Train(RunningServer& r, const std::vector<float>& rows, bool activate = true,
               bool retain = false) {
  v1::TrainingJobHeader h;
  h.set_model(kModel);
  h.set_num_features(kFeatures);
  h.mutable_options()->set_epochs(8);
  h.set_no_activate(!activate);
  h.set_retain(retain);
  v1::TrainingJob job;
  grpc::Status st = CreateJob(r.admin.get(), h, rows, &job);
  EXPECT_TRUE(st.ok()) << st.error_message();
  if (!st.ok()) return 0;
  auto states = WatchToEnd(r.admin.get(), job.id());
  if (states.empty()) return 0;
  EXPECT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  return states.back().version();
}

grpc::Status SetPolicy(RunningServer& r, const v1::RetrainPolicy& p,
                       v1::AutopilotStatus* out = nullptr) {
  grpc::ClientContext ctx;
  v1::SetRetrainPolicyRequest req;
  req.set_model(kModel);
  *req.mutable_policy() = p;
  v1::AutopilotStatus ignored;
  return r.admin->SetRetrainPolicy(&ctx, req, out != nullptr ? out : &ignored);
}

grpc::Status ClearPolicy(RunningServer& r) {
  grpc::ClientContext ctx;
  v1::SetRetrainPolicyRequest req;
  req.set_model(kModel);
  req.set_clear(true);
  v1::AutopilotStatus out;
  return r.admin->SetRetrainPolicy(&ctx, req, &out);
}

// A retrain by hand (the Retrain RPC), within 20 s.
grpc::Status RetrainNow(RunningServer& r, v1::TrainingJob* job) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::RetrainRequest req;
  req.set_model(kModel);
  return r.admin->Retrain(&ctx, req, job);
}

grpc::Status Score(RunningServer& r, const std::vector<float>& rows, v1::ScoreResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::ScoreRequest req;
  req.set_model(kModel);
  req.mutable_samples()->set_num_features(kFeatures);
  req.mutable_samples()->mutable_values()->Add(rows.begin(), rows.end());
  return r.scoring->Score(&ctx, req, resp);
}

// Scores rows [at, at + n) of `pool`, cycling.
grpc::Status ScoreFrom(RunningServer& r, const std::vector<float>& pool, size_t* at, size_t n,
                       v1::ScoreResponse* resp = nullptr) {
  const size_t pool_rows = pool.size() / kFeatures;
  std::vector<float> rows;
  rows.reserve(n * kFeatures);
  for (size_t i = 0; i < n; ++i, *at = (*at + 1) % pool_rows) {
    rows.insert(rows.end(), pool.begin() + *at * kFeatures, pool.begin() + (*at + 1) * kFeatures);
  }
  v1::ScoreResponse ignored;
  return Score(r, rows, resp != nullptr ? resp : &ignored);
}

v1::ModelInfo Info(RunningServer& r) {
  grpc::ClientContext ctx;
  v1::GetModelRequest req;
  req.set_model(kModel);
  v1::ModelInfo info;
  grpc::Status st = r.scoring->GetModel(&ctx, req, &info);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return info;
}

std::vector<v1::Event> Events(RunningServer& r) {
  grpc::ClientContext ctx;
  v1::ListEventsRequest req;
  req.set_model(kModel);
  v1::ListEventsResponse resp;
  grpc::Status st = r.admin->ListEvents(&ctx, req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return {resp.events().begin(), resp.events().end()};
}

std::vector<std::string> Actions(const std::vector<v1::Event>& events) {
  std::vector<std::string> out;
  for (const auto& e : events) out.push_back(e.action());
  return out;
}

const v1::Event* Find(const std::vector<v1::Event>& events, const std::string& action) {
  for (const auto& e : events) {
    if (e.action() == action) return &e;
  }
  return nullptr;
}

std::vector<v1::TrainingJob> Jobs(RunningServer& r) {
  grpc::ClientContext ctx;
  v1::ListTrainingJobsRequest req;
  req.set_model(kModel);
  v1::ListTrainingJobsResponse resp;
  EXPECT_TRUE(r.admin->ListTrainingJobs(&ctx, req, &resp).ok());
  std::vector<v1::TrainingJob> out(resp.jobs().begin(), resp.jobs().end());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.created_unix_ms() < b.created_unix_ms() ||
           (a.created_unix_ms() == b.created_unix_ms() && a.id() < b.id());
  });
  return out;
}

std::unique_ptr<RunningServer> Start(const std::string& dir, bool metrics = false) {
  std::vector<std::string> flags{"--autopilot_tick_seconds=0.1", "--store_poll_seconds=0"};
  if (metrics) flags.push_back("--metrics_port=-1");
  auto r = StartServer(dir, flags);
  EXPECT_NE(r->process.port(), 0) << r->process.log();
  return r;
}

TEST(Autopilot, DriftRetrainsShadowsAndPromotesWithoutAnyClientAction) {
  TempDir dir("aeserve_autopilot");
  auto r = Start(dir.path());
  ASSERT_EQ(Train(*r, Normal(2000, 1)), 1u);
  v1::RetrainPolicy p;
  p.set_retain_rows(3000);
  p.set_drift_above(0.5);
  p.set_drift_samples(1000);
  p.set_min_rows(1000);
  p.set_min_interval_seconds(0);
  p.set_shadow_samples(1500);
  p.set_shadow_seconds(120);
  // How many rows the drift trigger has retained when it fires depends on timing; a candidate
  // trained on them may flag fewer than a quarter of its target, or (seen once under ASan: 4.2%
  // against a target of 1%) more than 4 times it, which the default rule rejects. This test is
  // about the pipeline, so the flag-rate rule is wide (the rule itself:
  // ABadCandidateIsRejectedAndTheActiveVersionStays).
  p.set_min_flag_ratio(0);
  p.set_max_flag_ratio(20);
  {
    grpc::Status set = SetPolicy(*r, p);
    ASSERT_TRUE(set.ok()) << set.error_message() << r->process.log();
  }

  // The traffic shifts; the client only scores it.
  const auto shifted = Shifted(6000, 2);
  size_t at = 0;
  const bool promoted = WaitFor(
      [&] {
        for (int i = 0; i < 4; ++i) {
          if (!ScoreFrom(*r, shifted, &at, 250).ok()) return false;
        }
        return Info(*r).active_version() == 2;
      },
      milliseconds(90000), milliseconds(1));
  ASSERT_TRUE(promoted) << r->process.log();
  // The decision is recorded just after the activation it made.
  ASSERT_TRUE(WaitFor([&] { return Find(Events(*r), "promote") != nullptr; }, milliseconds(5000)));

  const auto events = Events(*r);
  const auto actions = Actions(events);
  EXPECT_EQ(actions, (std::vector<std::string>{"train", "set-retrain-policy", "retrain", "train",
                                               "shadow", "promote"}));
  const v1::Event* retrain = Find(events, "retrain");
  ASSERT_NE(retrain, nullptr);
  EXPECT_EQ(retrain->actor(), "autopilot");
  EXPECT_EQ(retrain->reason().rfind("drift: KS", 0), 0u) << retrain->reason();
  const v1::Event* promote = Find(events, "promote");
  ASSERT_NE(promote, nullptr);
  EXPECT_EQ(promote->version(), 2u);
  EXPECT_NE(promote->reason().find("flag rate candidate"), std::string::npos) << promote->reason();

  const auto jobs = Jobs(*r);
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[1].trigger(), "drift");
  EXPECT_EQ(jobs[1].actor(), "autopilot");
  EXPECT_FALSE(jobs[1].activated());  // staged, then promoted by the shadow rule

  const v1::ShadowReport s = Info(*r).autopilot().shadow();
  EXPECT_TRUE(s.finished());
  EXPECT_EQ(s.outcome().rfind("promoted", 0), 0u) << s.outcome();
  EXPECT_GE(s.samples(), 1500u);
  EXPECT_GT(s.active_flag_rate(), 0.9);  // the old model flags the shifted traffic
  // Within the rule it was promoted by, and far below the old model on the shifted traffic (4x
  // its target, once asserted here, failed now and then on a loaded machine: 4.1% against 1%).
  EXPECT_LE(s.candidate_flag_rate(), p.max_flag_ratio() * s.candidate_target_rate());
  EXPECT_LT(s.candidate_flag_rate(), 0.1 * s.active_flag_rate());
  EXPECT_LT(s.candidate_drift_ks(), s.active_drift_ks());
  EXPECT_GT(s.candidate_compute_seconds(), 0);
}

TEST(Autopilot, ABadCandidateIsRejectedAndTheActiveVersionStays) {
  TempDir dir("aeserve_autopilot");
  auto r = Start(dir.path(), /*metrics=*/true);
  ASSERT_EQ(Train(*r, Normal(2000, 1)), 1u);
  v1::RetrainPolicy p;
  p.set_retain_rows(2000);
  p.set_min_rows(500);
  p.set_shadow_samples(1000);
  {
    grpc::Status set = SetPolicy(*r, p);
    ASSERT_TRUE(set.ok()) << set.error_message() << r->process.log();
  }
  // An hour of odd traffic is retained ...
  const auto shifted = Shifted(2000, 3, 0.2f, 10.f);
  size_t at = 0;
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(ScoreFrom(*r, shifted, &at, 250).ok());
  // ... an operator retrains on it by hand ...
  v1::TrainingJob job;
  grpc::Status st = RetrainNow(*r, &job);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(job.trigger(), "manual");
  auto states = WatchToEnd(r->admin.get(), job.id());
  ASSERT_FALSE(states.empty());
  ASSERT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  EXPECT_EQ(states.back().rows(), 2000u);
  // ... and the traffic is back to normal while the candidate is in shadow.
  const auto normal = NormalAfter(2000, 4000);
  at = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        if (!ScoreFrom(*r, normal, &at, 250).ok()) return false;
        return Info(*r).autopilot().shadow().finished();
      },
      milliseconds(60000), milliseconds(1)));
  ASSERT_TRUE(WaitFor([&] { return Find(Events(*r), "reject") != nullptr; }, milliseconds(5000)));
  const v1::ModelInfo info = Info(*r);
  EXPECT_EQ(info.active_version(), 1u);
  EXPECT_EQ(info.autopilot().shadow().candidate_version(), 2u);
  EXPECT_EQ(info.autopilot().shadow().outcome().rfind("rejected: flag rate outside", 0), 0u)
      << info.autopilot().shadow().outcome();
  EXPECT_GT(info.autopilot().shadow().only_candidate(), 500u)
      << info.autopilot().shadow().DebugString();
  const auto events = Events(*r);
  EXPECT_EQ(Actions(events), (std::vector<std::string>{"train", "set-retrain-policy", "retrain",
                                                       "train", "shadow", "reject"}));
  // A rejected candidate stays staged, for a person to look at.
  ASSERT_EQ(info.versions_size(), 2);
  // The same report on /metrics.
  const std::string text = HttpGet(MetricsPort(*r), "/metrics");
  EXPECT_EQ(MetricValue(text, R"(aeserve_shadow_running{model="ap"})"), 0) << text;
  EXPECT_EQ(MetricValue(text, R"(aeserve_shadow_samples{model="ap"})"),
            static_cast<double>(info.autopilot().shadow().samples()));
  EXPECT_GT(
      MetricValue(text, R"(aeserve_shadow_flag_rate{model="ap",role="candidate",version="2"})"),
      0.5);
  EXPECT_LT(MetricValue(text, R"(aeserve_shadow_flag_rate{model="ap",role="active",version="1"})"),
            0.1);
  EXPECT_EQ(
      MetricValue(text, R"(aeserve_shadow_agreement{model="ap",flagged_by="only_candidate"})"),
      static_cast<double>(info.autopilot().shadow().only_candidate()));
  EXPECT_GT(MetricValue(text, R"(aeserve_retained_rows{model="ap"})"), 0);
}

TEST(Autopilot, GrowthRetrainsOnUploadedAndScoredHistoryBeforeTheCallIsAnswered) {
  TempDir dir("aeserve_autopilot");
  auto r = Start(dir.path());
  ASSERT_EQ(Train(*r, Normal(1000, 1)), 1u);
  v1::RetrainPolicy p;
  p.set_retain_rows(100000);
  p.set_grown_rows(1000);
  p.set_min_rows(500);
  p.set_min_interval_seconds(0);
  p.set_promotion(v1::PROMOTION_ACTIVATE);
  {
    grpc::Status set = SetPolicy(*r, p);
    ASSERT_TRUE(set.ok()) << set.error_message() << r->process.log();
  }
  // A second version trained on 600 rows that are kept as history too.
  ASSERT_EQ(Train(*r, Normal(600, 5), true, /*retain=*/true), 2u);
  const auto traffic = Normal(2000, 6);
  size_t at = 0;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ScoreFrom(*r, traffic, &at, 300).ok());
  EXPECT_EQ(Jobs(*r).size(), 2u);  // 900 rows since version 2: no retrain yet
  v1::ScoreResponse resp;
  ASSERT_TRUE(ScoreFrom(*r, traffic, &at, 300, &resp).ok());
  EXPECT_EQ(resp.version(), 2u);
  // The retrain was started before the call that made the history grow was answered.
  auto jobs = Jobs(*r);
  ASSERT_EQ(jobs.size(), 3u);
  EXPECT_EQ(jobs[2].trigger(), "growth");
  auto states = WatchToEnd(r->admin.get(), jobs[2].id());
  ASSERT_FALSE(states.empty());
  ASSERT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  EXPECT_EQ(states.back().rows(), 600u + 1200u);  // the upload's rows and the scored ones
  EXPECT_TRUE(states.back().activated());
  ASSERT_TRUE(ScoreFrom(*r, traffic, &at, 10, &resp).ok());
  EXPECT_EQ(resp.version(), 3u);
  // Without a policy, `retain` is refused before any data is sent.
  ASSERT_TRUE(ClearPolicy(*r).ok());
  EXPECT_FALSE(fs::exists(dir.path() + "/ap/retained"));
  v1::TrainingJobHeader h;
  h.set_model(kModel);
  h.set_num_features(kFeatures);
  h.set_retain(true);
  v1::TrainingJob refused;
  EXPECT_EQ(CreateJob(r->admin.get(), h, Normal(100, 7), &refused).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

// A series model keeps time steps (not its windows' inputs); the steps a stream sends again to warm
// its window up are kept once; a repeated time with another value is a step of its own.
TEST(Autopilot, ASeriesModelRetrainsOnItsTimeSteps) {
  TempDir dir("aeserve_autopilot");
  auto r = Start(dir.path());
  v1::RetrainPolicy p;
  p.set_retain_rows(100000);
  p.set_grown_rows(200);
  p.set_min_rows(50);
  p.set_min_interval_seconds(0);
  p.set_promotion(v1::PROMOTION_ACTIVATE);
  ASSERT_TRUE(SetPolicy(*r, p).ok());  // before the first version: its upload is kept too
  constexpr int kSteps = 600;
  std::vector<float> values(kSteps);
  std::vector<int64_t> stamps(kSteps);
  for (int i = 0; i < kSteps; ++i) {
    values[i] = std::sin(i * 0.3f) + 0.01f * (i % 7);
    stamps[i] = 1'700'000'000'000 + 60'000 * int64_t{i};
  }
  stamps[150] = stamps[149];  // a daylight-saving hour: the same time, the next step
  v1::TrainingJobHeader h;
  h.set_model(kModel);
  h.set_num_features(1);
  h.add_feature_names("cpu");
  h.mutable_spec()->mutable_window()->set_length(4);
  h.mutable_options()->set_epochs(5);
  h.set_retain(true);
  h.set_rows(300);
  {
    grpc::ClientContext ctx;
    v1::TrainingJob job;
    auto writer = r->admin->CreateTrainingJob(&ctx, &job);
    v1::CreateTrainingJobRequest req;
    *req.mutable_header() = h;
    req.mutable_values()->Add(values.begin(), values.begin() + 300);
    req.mutable_timestamps_ms()->Add(stamps.begin(), stamps.begin() + 300);
    ASSERT_TRUE(writer->Write(req));
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
    auto states = WatchToEnd(r->admin.get(), job.id());
    ASSERT_FALSE(states.empty());
    ASSERT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  }
  EXPECT_EQ(Info(*r).autopilot().retained_rows(), 300u);
  // Batches of 50 steps; the first re-sends the last 3 uploaded steps to warm the window up.
  auto score = [&](int from, int to) {
    grpc::ClientContext ctx;
    v1::ScoreRequest req;
    req.set_model(kModel);
    req.mutable_samples()->set_num_features(1);
    req.mutable_samples()->add_feature_names("cpu");
    req.mutable_samples()->mutable_values()->Add(values.begin() + from, values.begin() + to);
    req.mutable_samples()->mutable_timestamps_ms()->Add(stamps.begin() + from, stamps.begin() + to);
    v1::ScoreResponse resp;
    return r->scoring->Score(&ctx, req, &resp);
  };
  ASSERT_TRUE(score(297, 347).ok());
  for (int from = 347; from < 497; from += 50) ASSERT_TRUE(score(from, from + 50).ok());
  EXPECT_EQ(Info(*r).autopilot().retained_rows(), 497u);  // 300 + 197 new steps
  EXPECT_EQ(Jobs(*r).size(), 1u);
  ASSERT_TRUE(score(497, 547).ok());  // 247 new steps since version 1: over 200
  auto jobs = Jobs(*r);
  ASSERT_EQ(jobs.size(), 2u);
  auto states = WatchToEnd(r->admin.get(), jobs[1].id());
  ASSERT_FALSE(states.empty());
  ASSERT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  EXPECT_EQ(states.back().rows(), 547u);
  EXPECT_EQ(Info(*r).active_version(), 2u);
}

// A claim that cannot be written fails the retrain and leaves the store usable (it used to hold the
// store lock forever); removing the policy under a queued or running retrain cancels it safely.
TEST(Autopilot, AFailedClaimAndARemovedPolicyLeaveTheServerWorking) {
  TempDir dir("aeserve_autopilot");
  auto r = Start(dir.path());
  ASSERT_EQ(Train(*r, Normal(600, 1)), 1u);
  v1::RetrainPolicy p;
  p.set_retain_rows(10000);
  p.set_min_rows(100);
  p.set_promotion(v1::PROMOTION_STAGE);
  ASSERT_TRUE(SetPolicy(*r, p).ok());
  const auto traffic = NormalAfter(600, 2000);
  size_t at = 0;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(ScoreFrom(*r, traffic, &at, 500).ok());
  fs::create_directories(dir.path() + "/ap/RETRAIN");  // the claim cannot be written
  v1::TrainingJob job;
  grpc::Status st = RetrainNow(*r, &job);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  {  // the store lock is free: a lifecycle change goes through
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::ActivateVersionRequest req;
    req.set_model(kModel);
    req.set_version(1);
    v1::ModelInfoBrief b;
    st = r->admin->ActivateVersion(&ctx, req, &b);
    EXPECT_TRUE(st.ok()) << st.error_message();
  }
  fs::remove_all(dir.path() + "/ap/RETRAIN");
  st = RetrainNow(*r, &job);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_TRUE(ClearPolicy(*r).ok());
  auto states = WatchToEnd(r->admin.get(), job.id());
  ASSERT_FALSE(states.empty());
  EXPECT_TRUE(states.back().state() == v1::JOB_STATE_CANCELLED ||
              states.back().state() == v1::JOB_STATE_SUCCEEDED ||
              states.back().state() == v1::JOB_STATE_FAILED)
      << states.back().DebugString();
  v1::ScoreResponse resp;
  EXPECT_TRUE(ScoreFrom(*r, traffic, &at, 10, &resp).ok());
  EXPECT_EQ(r->Stop(), 0) << r->process.log();
}

TEST(Autopilot, BadPoliciesAreRefusedWithTheField) {
  TempDir dir("aeserve_autopilot");
  auto r = Start(dir.path());
  v1::RetrainPolicy p;
  p.set_retain_rows(100);
  // Before the first version: allowed, so that the first upload can be kept as history.
  grpc::Status st = SetPolicy(*r, p);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(Train(*r, Normal(500, 1), true, /*retain=*/true), 1u);
  EXPECT_EQ(Info(*r).autopilot().retained_rows(), 500u);
  {  // retain_rows bounds what a retrain reads, not what the first upload keeps
    v1::TrainingJob job;
    st = RetrainNow(*r, &job);
    ASSERT_TRUE(st.ok()) << st.error_message();
    auto states = WatchToEnd(r->admin.get(), job.id());
    ASSERT_FALSE(states.empty());
    EXPECT_EQ(states.back().rows(), 100u);
  }
  auto refused = [&](v1::RetrainPolicy q, const std::string& field) {
    grpc::Status s = SetPolicy(*r, q);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_NE(s.error_message().find(field), std::string::npos) << s.error_message();
  };
  refused(v1::RetrainPolicy(), "retain_rows");
  v1::RetrainPolicy q = p;
  q.set_grown_factor(0.5);
  refused(q, "grown_factor");
  q = p;
  q.set_drift_above(1.5);
  refused(q, "drift_above");
  q = p;
  q.set_min_rows(1000);
  refused(q, "min_rows");
  q = p;
  q.set_min_flag_ratio(2);
  q.set_max_flag_ratio(1);
  refused(q, "min_flag_ratio");
  q = p;  // NaN would switch a bound of the promotion rule off silently
  q.set_max_flag_ratio(std::numeric_limits<double>::quiet_NaN());
  refused(q, "finite");
  q = p;
  q.set_shadow_seconds(std::numeric_limits<double>::infinity());
  refused(q, "finite");
  q = p;
  q.set_retain_rows(uint64_t{1} << 40);  // x 12 features: over --max_training_values
  refused(q, "max_training_values");
  // Retrain without enough rows, StartShadow of the active version.
  {
    ASSERT_TRUE(ClearPolicy(*r).ok());
    grpc::Status set = SetPolicy(*r, p);
    ASSERT_TRUE(set.ok()) << set.error_message() << r->process.log();
  }
  v1::TrainingJob job;
  st = RetrainNow(*r, &job);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("0 rows retained; the policy needs min_rows 100"),
            std::string::npos)
      << st.error_message();
  grpc::ClientContext sctx;
  v1::StartShadowRequest sreq;
  sreq.set_model(kModel);
  sreq.set_version(1);
  v1::AutopilotStatus status;
  EXPECT_EQ(r->admin->StartShadow(&sctx, sreq, &status).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST(Autopilot, SigkillKeepsEveryCompleteSegment) {
  TempDir dir("aeserve_autopilot");
  auto r = Start(dir.path());
  ASSERT_EQ(Train(*r, Normal(500, 1)), 1u);
  v1::RetrainPolicy p;
  p.set_retain_rows(100000);
  p.set_min_rows(100);
  p.set_promotion(v1::PROMOTION_STAGE);
  {
    grpc::Status set = SetPolicy(*r, p);
    ASSERT_TRUE(set.ok()) << set.error_message() << r->process.log();
  }
  const auto traffic = Normal(3000, 2);
  size_t at = 0;
  const size_t rows = 3 * server::Retention::kSegmentRows + 100;
  for (size_t sent = 0; sent < rows; sent += 1000) {
    ASSERT_TRUE(ScoreFrom(*r, traffic, &at, std::min<size_t>(1000, rows - sent)).ok());
  }
  // Three full segments reach the disk within a tick or two; the last 100 rows stay in memory.
  ASSERT_TRUE(
      WaitFor([&] { return Info(*r).autopilot().retained_segments() == 3; }, milliseconds(10000)));
  r->process.Signal(SIGKILL);
  r->process.Wait(10);
  // One complete segment gets a flipped bit on disk: it is skipped, the others are kept.
  std::vector<fs::path> segs = Segments(dir.path() + "/ap/retained");
  ASSERT_EQ(segs.size(), 3u);
  FlipBit(segs[2], 100);
  r = Start(dir.path());
  ASSERT_TRUE(WaitFor([&] { return ModelReady(r->scoring.get(), kModel); }, milliseconds(20000)));
  ASSERT_TRUE(
      WaitFor([&] { return Info(*r).autopilot().retained_rows() > 0; }, milliseconds(10000)));
  EXPECT_EQ(Info(*r).autopilot().retained_rows(), 3 * server::Retention::kSegmentRows);
  v1::TrainingJob job;
  grpc::Status st = RetrainNow(*r, &job);
  ASSERT_TRUE(st.ok()) << st.error_message();
  auto states = WatchToEnd(r->admin.get(), job.id());
  ASSERT_FALSE(states.empty());
  ASSERT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  EXPECT_EQ(states.back().rows(), 2 * server::Retention::kSegmentRows);
  EXPECT_FALSE(states.back().activated());  // PROMOTION_STAGE
  EXPECT_EQ(Info(*r).active_version(), 1u);
}

TEST(Autopilot, SigkillDuringAShadowWindowRestartsItAndNeverPromotesOnPartOfIt) {
  TempDir dir("aeserve_autopilot");
  auto r = Start(dir.path());
  ASSERT_EQ(Train(*r, Normal(1000, 1)), 1u);
  ASSERT_EQ(Train(*r, Normal(1000, 2), /*activate=*/false), 2u);
  v1::RetrainPolicy p;
  p.set_retain_rows(10000);
  p.set_shadow_samples(1000000);
  p.set_shadow_seconds(3600);
  {
    grpc::Status set = SetPolicy(*r, p);
    ASSERT_TRUE(set.ok()) << set.error_message() << r->process.log();
  }
  {
    grpc::ClientContext ctx;
    v1::StartShadowRequest req;
    req.set_model(kModel);
    req.set_version(2);
    v1::AutopilotStatus status;
    grpc::Status st = r->admin->StartShadow(&ctx, req, &status);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(status.shadow().candidate_version(), 2u);
  }
  const auto traffic = Normal(3000, 3);
  size_t at = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        return ScoreFrom(*r, traffic, &at, 250).ok() &&
               Info(*r).autopilot().shadow().samples() >= 500;
      },
      milliseconds(20000)));
  r->process.Signal(SIGKILL);
  r->process.Wait(10);
  r = Start(dir.path());
  ASSERT_TRUE(WaitFor([&] { return ModelReady(r->scoring.get(), kModel); }, milliseconds(20000)));
  // The new server finds the window unfinished and its owner silent: it starts it again.
  ASSERT_TRUE(
      WaitFor([&] { return Find(Events(*r), "shadow-restarted") != nullptr; }, milliseconds(20000)))
      << r->process.log();
  const v1::ModelInfo info = Info(*r);
  EXPECT_EQ(info.active_version(), 1u);
  EXPECT_FALSE(info.autopilot().shadow().finished());
  EXPECT_LT(info.autopilot().shadow().samples(), 500u);
  ASSERT_TRUE(WaitFor(
      [&] {
        return ScoreFrom(*r, traffic, &at, 250).ok() &&
               Info(*r).autopilot().shadow().samples() >= 250;
      },
      milliseconds(20000)));
  EXPECT_EQ(Find(Events(*r), "promote"), nullptr);
}

}  // namespace
}  // namespace aeserve::testing
