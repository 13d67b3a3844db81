// The audit log: the file format on its own (torn lines, rotation, concurrent writers), then every
// lifecycle change through a real server, with actors, across a restart and between replicas.
#include <fstream>
#include <thread>

#include "gtest/gtest.h"
#include "server/audit_log.h"
#include "tests/admin_client.h"
#include "tests/test_models.h"
#include "tests/test_server.h"

namespace aeserve {
namespace {

using server::AuditLog;
using testing::TempDir;

v1::Event MakeEvent(const std::string& model, const std::string& entity, const std::string& action,
                    int64_t time_ms) {
  v1::Event e;
  e.set_model(model);
  e.set_entity(entity);
  e.set_action(action);
  e.set_actor("tester");
  e.set_time_unix_ms(time_ms);
  return e;
}

std::vector<std::string> Actions(const v1::ListEventsResponse& r) {
  std::vector<std::string> out;
  for (const auto& e : r.events()) out.push_back(e.action());
  return out;
}

v1::ListEventsRequest Query(const std::string& model, const std::string& entity = "",
                            uint32_t limit = 0, int64_t since = 0) {
  v1::ListEventsRequest q;
  q.set_model(model);
  q.set_entity(entity);
  q.set_limit(limit);
  q.set_since_unix_ms(since);
  return q;
}

TEST(AuditLog, FiltersByModelEntityTimeAndKeepsTheNewest) {
  TempDir dir("aeserve_audit");
  AuditLog log(dir.path());
  ASSERT_TRUE(log.Record(MakeEvent("a", "", "train", 1000)).ok());
  ASSERT_TRUE(log.Record(MakeEvent("a", "e1", "activate", 2000)).ok());
  ASSERT_TRUE(log.Record(MakeEvent("b", "", "train", 3000)).ok());
  ASSERT_TRUE(log.Record(MakeEvent("a", "", "set-threshold", 4000)).ok());

  auto all = log.List(Query(""));
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(Actions(*all),
            (std::vector<std::string>{"train", "activate", "train", "set-threshold"}));
  EXPECT_FALSE(all->truncated());
  EXPECT_FALSE(all->events(0).replica().empty());  // filled in by Record

  auto a = log.List(Query("a"));  // a model includes its entities
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(Actions(*a), (std::vector<std::string>{"train", "activate", "set-threshold"}));
  auto e1 = log.List(Query("a", "e1"));
  ASSERT_TRUE(e1.ok());
  EXPECT_EQ(Actions(*e1), (std::vector<std::string>{"activate"}));
  auto recent = log.List(Query("", "", 0, 2500));
  ASSERT_TRUE(recent.ok());
  EXPECT_EQ(Actions(*recent), (std::vector<std::string>{"train", "set-threshold"}));
  auto newest = log.List(Query("", "", 2));
  ASSERT_TRUE(newest.ok());
  EXPECT_EQ(Actions(*newest), (std::vector<std::string>{"train", "set-threshold"}));
  EXPECT_TRUE(newest->truncated());
  EXPECT_EQ(newest->events(0).model(), "b");
}

TEST(AuditLog, ALineTornByACrashCostsOnlyItself) {
  TempDir dir("aeserve_audit");
  AuditLog log(dir.path());
  ASSERT_TRUE(log.Record(MakeEvent("a", "", "train", 1)).ok());
  {  // a writer killed mid-line: no newline at the end
    std::ofstream f(dir.path() + "/.events/events.jsonl", std::ios::app);
    f << R"({"time_unix_ms":"2","model":"a","act)";
  }
  ASSERT_TRUE(log.Record(MakeEvent("a", "", "activate", 3)).ok());
  auto r = log.List(Query("a"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(Actions(*r), (std::vector<std::string>{"train", "activate"}));
}

TEST(AuditLog, RotatesAtItsBoundAndKeepsThePreviousFile) {
  TempDir dir("aeserve_audit");
  AuditLog log(dir.path(), /*max_file_bytes=*/1000);
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(log.Record(MakeEvent("m", "", "train-" + std::to_string(i), i + 1)).ok());
  }
  const auto size = [&](const char* name) {
    return std::filesystem::file_size(dir.path() + "/.events/" + name);
  };
  EXPECT_LT(size("events.jsonl"), 1300u);
  EXPECT_GT(size("events.1.jsonl"), 900u);
  EXPECT_LT(size("events.1.jsonl"), 1300u);
  auto r = log.List(Query("m", "", 10000));
  ASSERT_TRUE(r.ok());
  ASSERT_GT(r->events_size(), 5);
  ASSERT_LT(r->events_size(), 40);  // the oldest went with the rotation
  EXPECT_EQ(r->events(r->events_size() - 1).action(), "train-39");
  for (int i = 1; i < r->events_size(); ++i) {  // oldest first, none lost in between
    EXPECT_EQ(r->events(i).time_unix_ms(), r->events(i - 1).time_unix_ms() + 1);
  }
}

TEST(AuditLog, ConcurrentWritersAppendWholeLines) {
  TempDir dir("aeserve_audit");
  constexpr int kEach = 150;
  auto writer = [&](const std::string& model) {
    AuditLog log(dir.path(), /*max_file_bytes=*/16 << 20);  // its own file descriptions
    for (int i = 0; i < kEach; ++i) {
      ASSERT_TRUE(log.Record(MakeEvent(model, "", "train", i + 1)).ok());
    }
  };
  std::thread a(writer, "a"), b(writer, "b");
  a.join();
  b.join();
  AuditLog log(dir.path());
  auto ra = log.List(Query("a", "", 10000));
  auto rb = log.List(Query("b", "", 10000));
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_EQ(ra->events_size(), kEach);
  EXPECT_EQ(rb->events_size(), kEach);
}

// Through the server: every lifecycle call is recorded with the token's name.
class AuditService : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(dir_.path() + "/tokens")
        << "alice-secret admin alice\nbob-secret admin\nscorer-secret score scorer\n";
  }
  std::unique_ptr<server::Server> Start() {
    server::Options o = testing::TestOptions(dir_.path());
    o.auth_tokens = dir_.path() + "/tokens";
    o.store_poll_seconds = 0;
    return testing::StartTestServer(o);
  }
  static grpc::Status Call(const std::string& token,
                           const std::function<grpc::Status(grpc::ClientContext*)>& fn) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return fn(&ctx);
  }
  static uint64_t Train(v1::ModelAdmin::Stub* admin, const std::string& token, bool activate) {
    v1::TrainingJobHeader h;
    h.set_model("cpu");
    h.set_num_features(testing::kFeatures);
    h.mutable_options()->set_epochs(2);
    h.set_no_activate(!activate);
    auto data = engine::MakeSynthetic(400, 0, testing::kFeatures, 3, 5);
    v1::TrainingJob job;
    grpc::Status st = testing::CreateJob(admin, h, data.normal, &job, token);
    EXPECT_TRUE(st.ok()) << st.error_message();
    auto states = testing::WatchToEnd(admin, job.id(), token);
    EXPECT_FALSE(states.empty());
    if (states.empty()) return 0;
    EXPECT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
    EXPECT_EQ(states.back().trigger(), "upload");
    return states.back().version();
  }
  static v1::ListEventsResponse History(v1::ModelAdmin::Stub* admin, const std::string& model) {
    v1::ListEventsResponse r;
    grpc::Status st = Call("alice-secret", [&](grpc::ClientContext* ctx) {
      return admin->ListEvents(ctx, Query(model), &r);
    });
    EXPECT_TRUE(st.ok()) << st.error_message();
    return r;
  }
  TempDir dir_{"aeserve_audit_svc"};
};

TEST_F(AuditService, EveryLifecycleChangeIsRecordedWithItsActorAndSurvivesARestart) {
  auto s = Start();
  ASSERT_TRUE(s);
  auto admin = v1::ModelAdmin::NewStub(testing::Connect(*s));
  ASSERT_EQ(Train(admin.get(), "alice-secret", true), 1u);
  ASSERT_EQ(Train(admin.get(), "bob-secret", false), 2u);
  v1::ModelInfoBrief brief;
  v1::ActivateVersionRequest act;
  act.set_model("cpu");
  act.set_version(2);
  ASSERT_TRUE(Call("alice-secret", [&](grpc::ClientContext* ctx) {
                return admin->ActivateVersion(ctx, act, &brief);
              }).ok());
  v1::SetThresholdRequest th;
  th.set_model("cpu");
  th.mutable_threshold()->set_method(v1::THRESHOLD_PERCENTILE);
  th.mutable_threshold()->set_value(99.5);
  ASSERT_TRUE(Call("bob-secret", [&](grpc::ClientContext* ctx) {
                return admin->SetThreshold(ctx, th, &brief);
              }).ok());
  v1::DeleteVersionRequest del;
  del.set_model("cpu");
  del.set_version(1);
  ASSERT_TRUE(Call("alice-secret", [&](grpc::ClientContext* ctx) {
                return admin->DeleteVersion(ctx, del, &brief);
              }).ok());
  // A refused change is not an event.
  del.set_version(2);
  EXPECT_EQ(Call("alice-secret",
                 [&](grpc::ClientContext* ctx) { return admin->DeleteVersion(ctx, del, &brief); })
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // The audit log needs the admin role.
  v1::ListEventsResponse denied;
  EXPECT_EQ(
      Call("scorer-secret",
           [&](grpc::ClientContext* ctx) { return admin->ListEvents(ctx, Query("cpu"), &denied); })
          .error_code(),
      grpc::StatusCode::PERMISSION_DENIED);

  auto check = [](const v1::ListEventsResponse& r) {
    ASSERT_EQ(Actions(r), (std::vector<std::string>{"train", "train", "activate", "set-threshold",
                                                    "delete-version"}));
    EXPECT_EQ(r.events(0).actor(), "alice");
    EXPECT_EQ(r.events(1).actor(), "token-line-2");  // a token without a name
    EXPECT_EQ(r.events(2).actor(), "alice");
    EXPECT_EQ(r.events(3).actor(), "token-line-2");
    EXPECT_EQ(r.events(0).version(), 1u);
    EXPECT_EQ(r.events(1).version(), 2u);
    EXPECT_FALSE(r.events(0).job_id().empty());
    EXPECT_NE(r.events(0).reason().find("activated"), std::string::npos) << r.events(0).reason();
    EXPECT_NE(r.events(1).reason().find("staged"), std::string::npos) << r.events(1).reason();
    EXPECT_EQ(r.events(2).version(), 2u);
    EXPECT_EQ(r.events(2).reason(), "was version 1");
    EXPECT_EQ(r.events(3).version(), 2u);  // the active version, named
    EXPECT_NE(r.events(3).reason().find("anomaly level"), std::string::npos);
    EXPECT_EQ(r.events(4).version(), 1u);
    for (int i = 1; i < r.events_size(); ++i) {
      EXPECT_GE(r.events(i).time_unix_ms(), r.events(i - 1).time_unix_ms());
    }
  };
  check(History(admin.get(), "cpu"));
  EXPECT_EQ(History(admin.get(), "other").events_size(), 0);

  // A restart reads the same log; a replica on the same store appends to it.
  s->Shutdown();
  s.reset();
  auto again = Start();
  ASSERT_TRUE(again);
  auto replica = Start();
  ASSERT_TRUE(replica);
  auto admin2 = v1::ModelAdmin::NewStub(testing::Connect(*again));
  auto admin3 = v1::ModelAdmin::NewStub(testing::Connect(*replica));
  check(History(admin2.get(), "cpu"));
  v1::DeleteModelRequest drop;
  drop.set_model("cpu");
  drop.set_force(true);
  v1::DeleteModelResponse dropped;
  ASSERT_TRUE(Call("alice-secret", [&](grpc::ClientContext* ctx) {
                return admin3->DeleteModel(ctx, drop, &dropped);
              }).ok());
  auto after = History(admin2.get(), "cpu");
  ASSERT_EQ(after.events_size(), 6);
  EXPECT_EQ(after.events(5).action(), "delete-model");
  EXPECT_EQ(after.events(5).reason(), "forced");
  EXPECT_EQ(after.events(5).version(), 0u);
}

TEST_F(AuditService, BadQueriesAreRefused) {
  auto s = Start();
  ASSERT_TRUE(s);
  auto admin = v1::ModelAdmin::NewStub(testing::Connect(*s));
  v1::ListEventsResponse r;
  auto ask = [&](const v1::ListEventsRequest& q) {
    return Call("alice-secret",
                [&](grpc::ClientContext* ctx) { return admin->ListEvents(ctx, q, &r); });
  };
  EXPECT_EQ(ask(Query("../etc")).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ask(Query("", "host-1")).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::Status ok = ask(Query("never-trained"));
  EXPECT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(r.events_size(), 0);
}

}  // namespace
}  // namespace aeserve
