// Training uploads as an attacker or an unlucky client sends them (issue #12, items 1 and 5): an
// upload that is cancelled, whose client dies, whose deadline passes, that stops short, sends too
// much, holds an unparseable message or goes idle never creates a job; every upload reserves its
// declared size from one budget (--max_upload_bytes).
#include <cstdio>
#include <filesystem>

#include "gtest/gtest.h"
#include "tests/admin_client.h"
#include "tests/http_get.h"
#include "tests/process_client.h"
#include "tests/raw_client.h"
#include "tests/test_models.h"
#include "tests/wait_for.h"

namespace aeserve::testing {
namespace {

using std::chrono::milliseconds;
constexpr char kMethod[] = "/aeserve.v1.ModelAdmin/CreateTrainingJob";

v1::TrainingJobHeader Header(uint64_t rows) {
  v1::TrainingJobHeader h;
  h.set_model("up");
  h.set_num_features(kFeatures);
  h.set_rows(rows);
  h.mutable_options()->set_epochs(2);
  return h;
}

std::string HeaderMessage(uint64_t rows) {
  v1::CreateTrainingJobRequest req;
  *req.mutable_header() = Header(rows);
  return req.SerializeAsString();
}

std::string RowsMessage(uint64_t rows) {
  v1::CreateTrainingJobRequest req;
  req.mutable_values()->Resize(static_cast<int>(rows * kFeatures), 0.5f);
  return req.SerializeAsString();
}

std::string Hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

class Uploads : public ::testing::Test {
 protected:
  void Start(std::vector<std::string> extra = {}) {
    extra.push_back("--metrics_port=-1");
    server_ = StartServer(dir_.path(), extra);
    ASSERT_NE(server_->process.port(), 0) << server_->process.log();
    metrics_port_ = MetricsPort(*server_);
    ASSERT_NE(metrics_port_, 0) << server_->process.log();
  }
  // Training data the server holds in memory (aeserve_training_data_bytes), -1 if unknown.
  double DataBytes() {
    return MetricValue(HttpGet(metrics_port_, "/metrics"), "aeserve_training_data_bytes");
  }
  // No job was ever created and nothing reached the store.
  void ExpectNothingCreated() {
    grpc::ClientContext ctx;
    v1::ListTrainingJobsRequest req;
    v1::ListTrainingJobsResponse resp;
    ASSERT_TRUE(server_->admin->ListTrainingJobs(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.jobs_size(), 0) << resp.DebugString();
    EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/up"));
    EXPECT_TRUE(WaitFor([&] { return DataBytes() == 0; }, milliseconds(10000))) << DataBytes();
  }
  void TearDown() override {
    if (server_) {
      EXPECT_EQ(server_->Stop(), 0) << server_->process.log();
    }
  }
  TempDir dir_{"aeserve_uploads"};
  std::unique_ptr<RunningServer> server_;
  int metrics_port_ = 0;
};

TEST_F(Uploads, AWholeUploadTrainsAndItsBytesAreReleased) {
  Start();
  v1::TrainingJob job;
  auto data = engine::MakeSynthetic(300, 0, kFeatures, 3, 5);
  ASSERT_TRUE(CreateJob(server_->admin.get(), Header(300), data.normal, &job).ok());
  EXPECT_EQ(job.rows(), 300u);
  EXPECT_EQ(WatchToEnd(server_->admin.get(), job.id()).back().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(WaitFor([&] { return DataBytes() == 0; }, milliseconds(10000)));
}

TEST_F(Uploads, AShortOrLongUploadCreatesNothing) {
  Start();
  // Clean half-close after 100 of 600 rows.
  RawResult r = RawStreamCall(server_->channel, kMethod, {HeaderMessage(600), RowsMessage(100)});
  ASSERT_TRUE(r.finished);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("ended after 100 of the 600 rows"), std::string::npos)
      << r.status.error_message();
  // More rows than announced.
  r = RawStreamCall(server_->channel, kMethod,
                    {HeaderMessage(100), RowsMessage(60), RowsMessage(60)});
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("more than the 100 rows"), std::string::npos);
  // No row count at all.
  r = RawStreamCall(server_->channel, kMethod, {HeaderMessage(0), RowsMessage(100)});
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("header.rows is required"), std::string::npos);
  // One row (#16 item 7): nothing to learn from or calibrate a threshold on.
  r = RawStreamCall(server_->channel, kMethod, {HeaderMessage(1), RowsMessage(1)});
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("training data: 1 row; at least 10 are needed"),
            std::string::npos)
      << r.status.error_message();
  ExpectNothingCreated();
}

TEST_F(Uploads, AnUnparseableMessageInTheMiddleCreatesNothing) {
  Start();
  const std::string junk("\xff\xff\xff\xff\x0f garbage", 14);
  RawResult r = RawStreamCall(server_->channel, kMethod,
                              {HeaderMessage(600), RowsMessage(100), junk, RowsMessage(500)});
  ASSERT_TRUE(r.finished);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << r.status.error_message();
  EXPECT_NE(r.status.error_message().find(
                "upload message 3 does not parse as aeserve.v1.CreateTrainingJobRequest"),
            std::string::npos)
      << r.status.error_message();
  ExpectNothingCreated();
}

TEST_F(Uploads, ACancelledOrExpiredUploadCreatesNothing) {
  Start();
  {
    grpc::ClientContext ctx;
    v1::TrainingJob job;
    auto writer = server_->admin->CreateTrainingJob(&ctx, &job);
    v1::CreateTrainingJobRequest req;
    *req.mutable_header() = Header(600);
    ASSERT_TRUE(writer->Write(req));
    req.Clear();
    req.mutable_values()->Resize(100 * kFeatures, 0.5f);
    ASSERT_TRUE(writer->Write(req));
    ASSERT_TRUE(WaitFor([&] { return DataBytes() > 0; }, milliseconds(10000)));
    ctx.TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ExpectNothingCreated();
  // A deadline that passes mid-upload (the client keeps the stream open, never half-closes).
  RawResult r = RawStreamCall(server_->channel, kMethod, {HeaderMessage(600), RowsMessage(100)},
                              /*half_close=*/false, /*deadline_s=*/0.5);
  ASSERT_TRUE(r.finished);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ExpectNothingCreated();
}

TEST_F(Uploads, AClientThatDiesMidUploadCreatesNothing) {
  Start();
  const std::string cmd = std::string("/usr/bin/python3 " AESERVE_TESTS_DIR "/dying_client.py ") +
                          std::to_string(server_->process.port()) + " " + kMethod + " " +
                          Hex(HeaderMessage(600)) + " " + Hex(RowsMessage(100));
  FILE* child = popen(cmd.c_str(), "w");
  ASSERT_NE(child, nullptr);
  // The server holds the upload's reservation once the header has arrived.
  const bool got_header = WaitFor([&] { return DataBytes() > 0; }, milliseconds(20000));
  std::fputs("die\n", child);
  std::fflush(child);
  EXPECT_EQ(pclose(child), 0);
  ASSERT_TRUE(got_header);
  ExpectNothingCreated();
}

TEST_F(Uploads, AnIdleUploadIsEnded) {
  Start({"--upload_idle_seconds=0.5"});
  RawResult r = RawStreamCall(server_->channel, kMethod, {HeaderMessage(600), RowsMessage(100)},
                              /*half_close=*/false, /*deadline_s=*/30);
  ASSERT_TRUE(r.finished);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_NE(r.status.error_message().find("--upload_idle_seconds"), std::string::npos)
      << r.status.error_message();
  ExpectNothingCreated();
}

TEST_F(Uploads, TrainingDataInMemoryIsBoundedAcrossUploads) {
  // Room for two uploads of 1000 rows x 12 features (48,000 bytes of values and 8,000 of room
  // for timestamps each), not three.
  Start({"--max_upload_bytes=120000"});
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientWriter<v1::CreateTrainingJobRequest>>> open;
  v1::TrainingJob job;
  for (int i = 0; i < 2; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    open.push_back(server_->admin->CreateTrainingJob(ctxs.back().get(), &job));
    v1::CreateTrainingJobRequest req;
    *req.mutable_header() = Header(1000);
    ASSERT_TRUE(open.back()->Write(req));
  }
  ASSERT_TRUE(WaitFor([&] { return DataBytes() == 112000; }, milliseconds(10000))) << DataBytes();
  RawResult third = RawStreamCall(server_->channel, kMethod, {HeaderMessage(1000)}, false, 10);
  EXPECT_EQ(third.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(third.status.error_message().find("--max_upload_bytes"), std::string::npos)
      << third.status.error_message();
  // One declared over the per-job limit is refused at its header, before any data.
  RawResult huge =
      RawStreamCall(server_->channel, kMethod, {HeaderMessage(uint64_t{1} << 40)}, false, 10);
  EXPECT_EQ(huge.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(huge.status.error_message().find("--max_training_values"), std::string::npos);
  // Cancelling one frees its share, and the next upload fits.
  ctxs[0]->TryCancel();
  open[0]->Finish();
  ASSERT_TRUE(WaitFor([&] { return DataBytes() == 56000; }, milliseconds(10000))) << DataBytes();
  auto data = engine::MakeSynthetic(1000, 0, kFeatures, 3, 5);
  ASSERT_TRUE(CreateJob(server_->admin.get(), Header(1000), data.normal, &job).ok());
  ctxs[1]->TryCancel();
  open[1]->Finish();
  EXPECT_EQ(WatchToEnd(server_->admin.get(), job.id()).back().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(WaitFor([&] { return DataBytes() == 0; }, milliseconds(10000)));
}

}  // namespace
}  // namespace aeserve::testing
