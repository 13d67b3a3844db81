// A model store gone bad, as an unlucky operator or a broken volume leaves it (issue #12, items 2
// and 3): every fault makes only its own model unavailable, with the reason in GetModel, a log line
// and a counter; nothing crashes, hangs or promotes a staged version; version 0 is refused.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "aeserve/v1/admin.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/http_get.h"
#include "tests/process_client.h"
#include "tests/test_models.h"
#include "tests/wait_for.h"

namespace aeserve::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

void WriteText(const fs::path& p, const std::string& text) {
  fs::remove_all(p);
  std::ofstream(p) << text;
}

// A model with version 1 active and version 2 staged.
void StoreTwoVersions(const std::string& dir, const std::string& model) {
  Store(dir, model, TrainSmall(v1::MODEL_KIND_PLAIN, 1));
  server::ModelStore store(dir);
  ASSERT_TRUE(
      store.AddVersion(server::ModelKey{model, ""}, TrainSmall(v1::MODEL_KIND_PLAIN, 2)).ok());
}

grpc::Status Activate(RunningServer& r, const std::string& model, uint64_t version) {
  grpc::ClientContext ctx;
  v1::ActivateVersionRequest req;
  req.set_model(model);
  req.set_version(version);
  v1::ModelInfoBrief b;
  return r.admin->ActivateVersion(&ctx, req, &b);
}

grpc::Status DeleteVersion(RunningServer& r, const std::string& model, uint64_t version,
                           bool force) {
  grpc::ClientContext ctx;
  v1::DeleteVersionRequest req;
  req.set_model(model);
  req.set_version(version);
  req.set_force(force);
  v1::ModelInfoBrief b;
  return r.admin->DeleteVersion(&ctx, req, &b);
}

TEST(StoreFaults, VersionZeroIsRefusedAndTheModelKeepsServing) {
  TempDir dir("aeserve_v0");
  StoreTwoVersions(dir.path(), "m");
  auto r = StartServer(dir.path());
  ASSERT_NE(r->process.port(), 0) << r->process.log();
  v1::ScoreResponse resp;
  ASSERT_TRUE(
      WaitFor([&] { return ScoreZeros(*r, "m", kFeatures, &resp).ok(); }, milliseconds(10000)));

  grpc::Status st = Activate(*r, "m", 0);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("version is required"), std::string::npos)
      << st.error_message();
  EXPECT_EQ(DeleteVersion(*r, "m", 0, true).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Still serving version 1; ACTIVE untouched; an unforced DeleteModel is still refused.
  ASSERT_TRUE(ScoreZeros(*r, "m", kFeatures, &resp).ok());
  EXPECT_EQ(resp.version(), 1u);
  std::ifstream active(dir.path() + "/m/ACTIVE");
  std::string text((std::istreambuf_iterator<char>(active)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "1\n");
  {
    grpc::ClientContext ctx;
    v1::DeleteModelRequest req;
    req.set_model("m");
    v1::DeleteModelResponse out;
    EXPECT_EQ(r->admin->DeleteModel(&ctx, req, &out).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  EXPECT_EQ(server::ModelStore(dir.path()).ListVersions(server::ModelKey{"m", ""}).size(), 2u);
  EXPECT_EQ(r->Stop(), 0) << r->process.log();
}

TEST(StoreFaults, ForceDeletingTheActiveVersionSurvivesARestart) {
  TempDir dir("aeserve_none");
  StoreTwoVersions(dir.path(), "m");
  auto r = StartServer(dir.path());
  ASSERT_NE(r->process.port(), 0) << r->process.log();
  v1::ScoreResponse resp;
  ASSERT_TRUE(
      WaitFor([&] { return ScoreZeros(*r, "m", kFeatures, &resp).ok(); }, milliseconds(10000)));
  ASSERT_TRUE(DeleteVersion(*r, "m", 1, true).ok());
  EXPECT_EQ(ScoreZeros(*r, "m", kFeatures, &resp).error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_EQ(r->Stop(), 0);
  // After a restart the staged version 2 is still not active: the store says "none".
  auto again = StartServer(dir.path());
  ASSERT_NE(again->process.port(), 0) << again->process.log();
  v1::ModelInfo info;
  ASSERT_TRUE(WaitFor([&] { return GetModel(*again, "m", &info).ok(); }, milliseconds(10000)));
  EXPECT_EQ(info.active_version(), 0u);
  EXPECT_EQ(ScoreZeros(*again, "m", kFeatures, &resp).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(again->Stop(), 0);
}

TEST(StoreFaults, EveryBadEntryMakesOnlyItsModelUnavailable) {
  TempDir dir("aeserve_badstore");
  const fs::path root = dir.path();
  StoreTwoVersions(dir.path(), "good");
  // Each bad model has version 1 active and version 2 staged, then its ACTIVE or model.pb broken.
  const std::vector<std::pair<std::string, std::string>> bad_active = {
      {"active-dir", "directory"}, {"active-devzero", "device"},     {"active-fifo", "FIFO"},
      {"active-1x", "'1x'"},       {"active-empty", "''"},           {"active-minus", "'-1'"},
      {"active-zero", "'0'"},      {"active-huge", "over the limit"}};
  for (const auto& [name, why] : bad_active) {
    StoreTwoVersions(dir.path(), name);
    const fs::path active = root / name / "ACTIVE";
    fs::remove(active);
    if (name == "active-dir") fs::create_directory(active);
    if (name == "active-devzero") fs::create_symlink("/dev/zero", active);
    if (name == "active-fifo") {
      ASSERT_EQ(mkfifo(active.c_str(), 0644), 0);
    }
    if (name == "active-1x") WriteText(active, "1x\n");
    if (name == "active-empty") WriteText(active, "");
    if (name == "active-minus") WriteText(active, "-1\n");
    if (name == "active-zero") WriteText(active, "0\n");
    if (name == "active-huge") WriteText(active, std::string(4096, '1'));
  }
  StoreTwoVersions(dir.path(), "model-fifo");
  fs::remove(root / "model-fifo" / "1" / "model.pb");
  ASSERT_EQ(mkfifo((root / "model-fifo" / "1" / "model.pb").c_str(), 0644), 0);

  auto r = StartServer(dir.path(), {"--metrics_port=-1", "--store_poll_seconds=0.1"});
  ASSERT_NE(r->process.port(), 0) << r->process.log();
  v1::ScoreResponse resp;
  ASSERT_TRUE(
      WaitFor([&] { return ScoreZeros(*r, "good", kFeatures, &resp).ok(); }, milliseconds(20000)))
      << r->process.log();
  EXPECT_EQ(resp.version(), 1u);
  for (const auto& [name, why] : bad_active) {
    v1::ModelInfo info;
    ASSERT_TRUE(GetModel(*r, name, &info).ok()) << name;
    EXPECT_EQ(info.state(), v1::MODEL_STATE_UNAVAILABLE) << name;
    EXPECT_EQ(info.active_version(), 0u) << name << ": a bad ACTIVE must not promote a version";
    EXPECT_NE(info.error().find("ACTIVE"), std::string::npos) << name << ": " << info.error();
    EXPECT_NE(info.error().find(why), std::string::npos) << name << ": " << info.error();
    EXPECT_EQ(ScoreZeros(*r, name, kFeatures, &resp).error_code(), grpc::StatusCode::UNAVAILABLE)
        << name;
    EXPECT_NE(r->process.log().find("model '" + name + "'"), std::string::npos)
        << "no log line for " << name;
  }
  v1::ModelInfo info;
  ASSERT_TRUE(GetModel(*r, "model-fifo", &info).ok());
  EXPECT_EQ(info.state(), v1::MODEL_STATE_UNAVAILABLE);
  ASSERT_GE(info.versions_size(), 1);
  EXPECT_NE(info.versions(0).error().find("FIFO"), std::string::npos) << info.versions(0).error();
  // Counted once each, not once per store poll.
  const std::string text = HttpGet(MetricsPort(*r), "/metrics");
  EXPECT_EQ(MetricValue(text, "aeserve_model_store_errors_total{kind=\"active\"}"), 8) << text;
  EXPECT_EQ(MetricValue(text, "aeserve_model_store_errors_total{kind=\"model_file\"}"), 1) << text;
  EXPECT_EQ(r->Stop(), 0) << "SIGTERM must still work with FIFOs in the store\n"
                          << r->process.log();
}

TEST(StoreFaults, ARunningServerKeepsServingWhenItsStoreGoesBad) {
  TempDir dir("aeserve_livebad");
  const fs::path root = dir.path();
  StoreTwoVersions(dir.path(), "m");
  auto r = StartServer(dir.path(), {"--store_poll_seconds=0.05"});
  ASSERT_NE(r->process.port(), 0) << r->process.log();
  v1::ScoreResponse resp;
  ASSERT_TRUE(
      WaitFor([&] { return ScoreZeros(*r, "m", kFeatures, &resp).ok(); }, milliseconds(10000)));
  v1::ModelInfo info;
  auto error_has = [&](const std::string& what) {
    return GetModel(*r, "m", &info).ok() && info.error().find(what) != std::string::npos;
  };
  const fs::path active = root / "m" / "ACTIVE";
  // ACTIVE becomes a directory, then a FIFO, then garbage: the server neither dies nor promotes
  // the staged version 2, and says why.
  fs::remove(active);
  fs::create_directory(active);
  ASSERT_TRUE(WaitFor([&] { return error_has("directory"); }, milliseconds(10000)))
      << info.DebugString();
  EXPECT_NE(info.error().find("still serving version 1"), std::string::npos) << info.error();
  fs::remove(active);
  ASSERT_EQ(mkfifo(active.c_str(), 0644), 0);
  ASSERT_TRUE(WaitFor([&] { return error_has("FIFO"); }, milliseconds(10000)))
      << info.DebugString();
  WriteText(active, "2x");
  ASSERT_TRUE(WaitFor([&] { return error_has("'2x'"); }, milliseconds(10000)))
      << info.DebugString();
  ASSERT_TRUE(ScoreZeros(*r, "m", kFeatures, &resp).ok());
  EXPECT_EQ(resp.version(), 1u);
  // Repaired: the error clears.
  WriteText(active, "1\n");
  ASSERT_TRUE(WaitFor([&] { return GetModel(*r, "m", &info).ok() && info.error().empty(); },
                      milliseconds(10000)))
      << info.DebugString();

  // The active version's file is corrupted in place: the loaded copy keeps serving, and the
  // version reports why its file no longer loads.
  {
    std::ofstream f(root / "m" / "1" / "model.pb", std::ios::binary | std::ios::trunc);
    f << "not a model file, and of another size";
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        return GetModel(*r, "m", &info).ok() && info.versions_size() == 2 &&
               info.versions(0).error().find("does not load") != std::string::npos;
      },
      milliseconds(10000)))
      << info.DebugString();
  EXPECT_EQ(info.state(), v1::MODEL_STATE_READY);
  ASSERT_TRUE(ScoreZeros(*r, "m", kFeatures, &resp).ok());
  EXPECT_EQ(resp.version(), 1u);
  EXPECT_EQ(r->Stop(), 0) << r->process.log();
}

TEST(StoreFaults, AStoreThatCannotBeLockedRefusesChangesAndKeepsServing) {
  TempDir dir("aeserve_nolock");
  StoreTwoVersions(dir.path(), "m");
  fs::create_directory(fs::path(dir.path()) / ".lock");  // flock needs a file
  auto r = StartServer(dir.path());
  ASSERT_NE(r->process.port(), 0) << r->process.log();
  v1::ScoreResponse resp;
  ASSERT_TRUE(
      WaitFor([&] { return ScoreZeros(*r, "m", kFeatures, &resp).ok(); }, milliseconds(10000)));
  const grpc::Status st = Activate(*r, "m", 2);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(st.error_message().find("cannot lock the model store"), std::string::npos)
      << st.error_message();
  ASSERT_TRUE(ScoreZeros(*r, "m", kFeatures, &resp).ok());
  EXPECT_EQ(resp.version(), 1u) << "nothing changed";
  EXPECT_EQ(r->Stop(), 0) << r->process.log();
}

}  // namespace
}  // namespace aeserve::testing
