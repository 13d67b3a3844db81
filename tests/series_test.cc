// Series models through a real server process (issue #14, part 3): one row per time step, the
// server keeps the window — unary series and streams answer every step (the first ones warming
// up), scores equal the engine's on the same windows bit for bit, the stream's window survives a
// hot swap to a version of the same length and starts again otherwise, gaps are filled or restart
// the window, bad timestamps fail only their batch, and training over RPC takes the raw series.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "engine/model.h"
#include "engine/window.h"
#include "gtest/gtest.h"
#include "tests/admin_client.h"
#include "tests/process_client.h"
#include "tests/test_models.h"

namespace aeserve::testing {
namespace {

constexpr int64_t kHour = 3'600'000;
constexpr int64_t kStart = int64_t{1'700'000'000'000};  // 2023-11-14 22:13:20 UTC

// Two columns with a daily cycle: load, and temp lagging it.
float Load(size_t step) { return static_cast<float>(std::sin(2 * std::numbers::pi * step / 24.0)); }
float Temp(size_t step) {
  return static_cast<float>(0.5 * std::cos(2 * std::numbers::pi * step / 24.0) + 1);
}

v1::ModelFile TrainSeries(uint32_t length, uint64_t seed) {
  const size_t n = 24 * 30;
  std::vector<float> values;
  std::vector<int64_t> ts;
  for (size_t i = 0; i < n; ++i) {
    values.push_back(Load(i));
    values.push_back(Temp(i));
    ts.push_back(kStart + static_cast<int64_t>(i) * kHour);
  }
  engine::TrainRequest req;
  req.spec.mutable_window()->set_length(length);
  req.spec.mutable_window()->add_time_features(v1::TIME_FEATURE_HOUR_OF_DAY);
  req.options.set_epochs(20);
  req.options.set_seed(seed);
  auto f = engine::Train(req, engine::TrainingData{values, n, 2, {"load", "temp"}, ts});
  EXPECT_TRUE(f.ok()) << f.status();
  return *f;
}

// Steps [from, to) of the series after training, as one batch (columns named, in the order given).
v1::Samples Steps(size_t from, size_t to, bool reversed = false) {
  v1::Samples s;
  s.add_feature_names(reversed ? "temp" : "load");
  s.add_feature_names(reversed ? "load" : "temp");
  for (size_t i = from; i < to; ++i) {
    const size_t step = 24 * 30 + i;
    s.add_values(reversed ? Temp(step) : Load(step));
    s.add_values(reversed ? Load(step) : Temp(step));
    s.add_timestamps_ms(kStart + static_cast<int64_t>(step) * kHour);
  }
  return s;
}

// The engine's scores of every full window over steps [from, to) without the steps
// [gap_from, gap_to) (a gap, closed up), indexed by step (NaN = warming up).
std::vector<float> EngineScores(const v1::ModelFile& f, size_t to, size_t from = 0,
                                size_t gap_from = 0, size_t gap_to = 0) {
  auto model = *engine::Model::Create(f);
  engine::WindowBuffer b(f.spec().window(), f.policy());
  std::vector<float> sample(b.inputs()), out(to, NAN);
  auto ctx = model->NewContext();
  for (size_t i = from; i < to; ++i) {
    if (i >= gap_from && i < gap_to) continue;
    const v1::Samples one = Steps(i, i + 1);
    if (!b.Push(one.values().data(), one.timestamps_ms(0), sample.data())) continue;
    engine::ScoreResult r;
    EXPECT_TRUE(model->Score(*ctx, sample, {}, &r).ok());
    out[i] = r.score[0];
  }
  return out;
}

class SeriesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("aeserve_series_test");
    w6_ = new v1::ModelFile(TrainSeries(6, 1));
    w6b_ = new v1::ModelFile(TrainSeries(6, 2));
    w4_ = new v1::ModelFile(TrainSeries(4, 3));
    Store(dir_->path(), "daily", *w6_);
    server::ModelStore store(dir_->path());  // versions 2 (same window) and 3 (shorter), staged
    ASSERT_TRUE(store.AddVersion({"daily", ""}, *w6b_).ok());
    ASSERT_TRUE(store.AddVersion({"daily", ""}, *w4_).ok());
    server_ = StartServer(dir_->path()).release();
    ASSERT_NE(server_->process.port(), 0) << server_->process.log();
    v1::ModelInfo info;
    ASSERT_TRUE(WaitFor([&] { return GetModel(*server_, "daily", &info).ok(); },
                        std::chrono::milliseconds(20000)));
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(server_->Stop(), 0);
    delete server_;
    delete w6_;
    delete w6b_;
    delete w4_;
    delete dir_;
  }
  void SetUp() override { Activate(1); }

  static void Activate(uint64_t version) {
    grpc::ClientContext ctx;
    v1::ActivateVersionRequest req;
    req.set_model("daily");
    req.set_version(version);
    v1::ModelInfoBrief brief;
    auto st = server_->admin->ActivateVersion(&ctx, req, &brief);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  static grpc::Status Score(const v1::Samples& s, v1::ScoreResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ScoreRequest req;
    req.set_model("daily");
    *req.mutable_samples() = s;
    return server_->scoring->Score(&ctx, req, resp);
  }

  // A stream over the model: write one batch, read its answer.
  struct Stream {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::StreamScoreRequest, v1::StreamScoreResponse>> rw;
    uint64_t sequence = 0;
    Stream() {
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      rw = server_->scoring->StreamScore(&ctx);
    }
    v1::StreamScoreResponse Send(const v1::Samples& s) {
      v1::StreamScoreRequest req;
      if (sequence == 0) req.mutable_config()->set_model("daily");
      req.set_sequence(++sequence);
      *req.mutable_samples() = s;
      EXPECT_TRUE(rw->Write(req));
      v1::StreamScoreResponse resp;
      EXPECT_TRUE(rw->Read(&resp));
      EXPECT_EQ(resp.sequence(), sequence);
      return resp;
    }
    ~Stream() {
      rw->WritesDone();
      EXPECT_TRUE(rw->Finish().ok());
    }
  };

  static inline TempDir* dir_ = nullptr;
  static inline v1::ModelFile *w6_ = nullptr, *w6b_ = nullptr, *w4_ = nullptr;
  static inline RunningServer* server_ = nullptr;
};

// Expects row i of `r` (step from + i) to be warming up exactly when `expected` is NaN, and else
// to carry exactly the engine's score.
void ExpectScores(const v1::ScoreResponse& r, const std::vector<float>& expected, size_t from) {
  ASSERT_EQ(r.scores_size(), r.num_samples());
  for (int i = 0; i < r.scores_size(); ++i) {
    const float want = expected[from + i];
    const bool warming = r.warming_up_size() > 0 && r.warming_up(i);
    EXPECT_EQ(warming, std::isnan(want)) << "step " << from + i;
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(r.scores(i)));
      EXPECT_FALSE(r.anomalous(i));
      EXPECT_EQ(r.p_values(i), 1.f);
    } else {
      EXPECT_EQ(std::memcmp(r.scores().data() + i, &want, 4), 0)
          << "step " << from + i << ": " << r.scores(i) << " vs " << want;
    }
  }
}

TEST_F(SeriesTest, UnarySeriesAnswersEveryStepAsTheEngineDoes) {
  const auto expected = EngineScores(*w6_, 30);
  v1::ScoreResponse resp;
  ASSERT_TRUE(Score(Steps(0, 30), &resp).ok());
  EXPECT_EQ(resp.num_samples(), 30u);
  ASSERT_EQ(resp.warming_up_size(), 30);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(resp.warming_up(i)) << i;
  ExpectScores(resp, expected, 0);
  // Columns by name in another order: the same answer, bit for bit.
  v1::ScoreResponse reversed;
  ASSERT_TRUE(Score(Steps(0, 30, true), &reversed).ok());
  EXPECT_EQ(std::memcmp(reversed.scores().data() + 5, resp.scores().data() + 5, 25 * 4), 0);
  // Top features name the window's inputs.
  v1::ScoreRequest req;
  req.set_model("daily");
  *req.mutable_samples() = Steps(0, 8);
  req.mutable_options()->set_top_k(2);
  req.mutable_options()->set_top_feature_names(true);
  grpc::ClientContext ctx;
  ASSERT_TRUE(server_->scoring->Score(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.top_feature_names_size(), 16);
  const auto& inputs = w6_->feature_names();
  EXPECT_EQ(inputs.size(), 6 * 2 + 2);
  EXPECT_NE(std::find(inputs.begin(), inputs.end(), resp.top_feature_names(15)), inputs.end())
      << resp.top_feature_names(15);
  // GetModel shows the columns a client sends, and the window.
  v1::ModelInfo info;
  ASSERT_TRUE(GetModel(*server_, "daily", &info).ok());
  EXPECT_EQ(info.num_features(), 2u);
  EXPECT_EQ(info.feature_names(1), "temp");
  EXPECT_EQ(info.spec().window().length(), 6u);
  EXPECT_EQ(info.spec().window().interval_ms(), kHour);
  EXPECT_EQ(info.spec().num_features(), 6u * 2 + 2);
}

TEST_F(SeriesTest, StreamKeepsTheWindowAcrossBatchesAndBadBatchesFailAlone) {
  const auto expected = EngineScores(*w6_, 40);
  Stream s;
  v1::StreamScoreResponse r = s.Send(Steps(0, 3));  // all warming up
  ASSERT_TRUE(r.has_result()) << r.DebugString();
  ExpectScores(r.result(), expected, 0);
  EXPECT_EQ(r.result().num_anomalies(), 0u);
  r = s.Send(Steps(3, 20));
  ASSERT_TRUE(r.has_result()) << r.DebugString();
  ExpectScores(r.result(), expected, 3);
  // Timestamps going backwards: an error for this batch only, the window untouched.
  v1::Samples back = Steps(20, 22);
  back.set_timestamps_ms(1, back.timestamps_ms(0) - kHour);
  r = s.Send(back);
  ASSERT_TRUE(r.has_error()) << r.DebugString();
  EXPECT_EQ(r.error().code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_NE(r.error().message().find("timestamps go backwards"), std::string::npos)
      << r.error().message();
  v1::Samples old = Steps(10, 11);  // before the stream's last step (19)
  r = s.Send(old);
  ASSERT_TRUE(r.has_error());
  EXPECT_NE(r.error().message().find("stream's last step"), std::string::npos)
      << r.error().message();
  v1::Samples none = Steps(20, 22);
  none.clear_timestamps_ms();
  r = s.Send(none);
  ASSERT_TRUE(r.has_error());
  EXPECT_NE(r.error().message().find("every row needs a timestamp"), std::string::npos)
      << r.error().message();
  r = s.Send(Steps(20, 40));
  ASSERT_TRUE(r.has_result()) << r.DebugString();
  EXPECT_EQ(r.result().warming_up_size(), 0);  // none warming: the window went on
  ExpectScores(r.result(), expected, 20);
}

// A batch refused for its values leaves the stream's window as it was: the next batch goes on.
TEST_F(SeriesTest, RefusedValuesNameTheRowSentAndLeaveTheWindow) {
  const auto expected = EngineScores(*w6_, 30);
  Stream s;
  ASSERT_TRUE(s.Send(Steps(0, 10)).has_result());
  v1::Samples inf = Steps(10, 13);
  inf.set_values(1 * 2 + 1, INFINITY);  // row 1, column 'temp'
  v1::StreamScoreResponse r = s.Send(inf);
  ASSERT_TRUE(r.has_error()) << r.DebugString();
  EXPECT_NE(r.error().message().find("infinite value at row 1, column 'temp'"), std::string::npos)
      << r.error().message();
  v1::Samples huge = Steps(10, 13);
  huge.set_values(0, 3e38f);  // finite, but its error overflows: refused after the rows were pushed
  r = s.Send(huge);
  ASSERT_TRUE(r.has_error()) << r.DebugString();
  r = s.Send(Steps(10, 30));
  ASSERT_TRUE(r.has_result()) << r.DebugString();
  EXPECT_EQ(r.result().warming_up_size(), 0);
  ExpectScores(r.result(), expected, 10);
}

TEST_F(SeriesTest, WindowSurvivesASwapToTheSameLengthAndRestartsOtherwise) {
  Stream s;
  ASSERT_TRUE(s.Send(Steps(0, 10)).has_result());
  Activate(2);  // same window length: the stream goes on with the rows it holds
  v1::StreamScoreResponse r = s.Send(Steps(10, 20));
  ASSERT_TRUE(r.has_result());
  EXPECT_EQ(r.result().version(), 2u);
  ExpectScores(r.result(), EngineScores(*w6b_, 20), 10);
  Activate(3);  // a window of 4: it starts again, 3 steps warm up
  r = s.Send(Steps(20, 30));
  ASSERT_TRUE(r.has_result());
  EXPECT_EQ(r.result().version(), 3u);
  ExpectScores(r.result(), EngineScores(*w4_, 30, 20), 20);
  ASSERT_EQ(r.result().warming_up_size(), 10);
  EXPECT_TRUE(r.result().warming_up(2));
  EXPECT_FALSE(r.result().warming_up(3));
}

TEST_F(SeriesTest, ShortGapsAreClosedUpOrMissingLongGapsRestartTheWindow) {
  {
    // Default (GAP_FILL_JOIN): the rows on either side of a short gap are consecutive steps.
    Stream s;
    ASSERT_TRUE(s.Send(Steps(0, 10)).has_result());
    v1::StreamScoreResponse r = s.Send(Steps(12, 20));
    ASSERT_TRUE(r.has_result()) << r.DebugString();
    EXPECT_EQ(r.result().missing_size(), 0);
    EXPECT_EQ(r.result().warming_up_size(), 0);
    ExpectScores(r.result(), EngineScores(*w6_, 20, 0, 10, 12), 12);
  }
  v1::SetScoringPolicyRequest set;
  set.set_model("daily");
  set.mutable_policy()->set_gap_fill(v1::GAP_FILL_MISSING);
  {
    grpc::ClientContext ctx;
    v1::ModelInfoBrief brief;
    auto st = server_->admin->SetScoringPolicy(&ctx, set, &brief);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  v1::ModelInfo info;
  ASSERT_TRUE(GetModel(*server_, "daily", &info).ok());
  EXPECT_EQ(info.policy().gap_fill(), v1::GAP_FILL_MISSING);
  Stream s;
  ASSERT_TRUE(s.Send(Steps(0, 10)).has_result());
  // Steps 10 and 11 never arrive: two missed steps enter the window as missing rows (2 columns
  // each); the windows holding them are scored within max_missing_fraction (4 of 14 inputs).
  v1::StreamScoreResponse r = s.Send(Steps(12, 15));
  ASSERT_TRUE(r.has_result()) << r.DebugString();
  ASSERT_EQ(r.result().missing_size(), 3);
  EXPECT_EQ(r.result().missing(0), 4u);
  EXPECT_EQ(r.result().warming_up_size(), 0);
  EXPECT_TRUE(std::isfinite(r.result().scores(0)));
  // A gap of 10 steps, over the default max_gap_steps (the window length 6): it starts again.
  r = s.Send(Steps(25, 32));
  ASSERT_TRUE(r.has_result());
  ExpectScores(r.result(), EngineScores(*w6_, 32, 25), 25);
  ASSERT_EQ(r.result().warming_up_size(), 7);
  EXPECT_TRUE(r.result().warming_up(4));
  EXPECT_FALSE(r.result().warming_up(5));
}

TEST_F(SeriesTest, EncodeTakesASeriesAndAnswersPerFullWindow) {
  grpc::ClientContext ctx;
  v1::EncodeRequest req;
  req.set_model("daily");
  *req.mutable_samples() = Steps(0, 10);
  v1::EncodeResponse resp;
  ASSERT_TRUE(server_->scoring->Encode(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.codes_size(), static_cast<int>(5 * resp.code_size()));
  grpc::ClientContext short_ctx;
  *req.mutable_samples() = Steps(0, 3);
  auto st = server_->scoring->Encode(&short_ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("windows of 6 time steps"), std::string::npos)
      << st.error_message();
}

TEST_F(SeriesTest, TrainingOverRpcTakesTheRawSeries) {
  v1::TrainingJobHeader h;
  h.set_model("trained");
  h.set_num_features(2);
  h.add_feature_names("load");
  h.add_feature_names("temp");
  h.mutable_spec()->mutable_window()->set_length(8);
  h.mutable_spec()->mutable_window()->set_stride(2);
  h.mutable_spec()->mutable_window()->add_time_features(v1::TIME_FEATURE_DAY_OF_WEEK);
  h.mutable_options()->set_epochs(3);
  const size_t n = 400;
  std::vector<float> values;
  std::vector<int64_t> ts;
  for (size_t i = 0; i < n; ++i) {
    values.push_back(Load(i));
    values.push_back(Temp(i));
    ts.push_back(kStart + static_cast<int64_t>(i) * 60'000);
  }
  // Without timestamps: refused at the upload, no job.
  v1::TrainingJob job;
  grpc::Status st = CreateJob(server_->admin.get(), h, values, &job);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("every row needs a timestamp"), std::string::npos)
      << st.error_message();
  // A window longer than the series: refused at the header.
  v1::TrainingJobHeader long_window = h;
  long_window.mutable_spec()->mutable_window()->set_length(500);
  st = CreateJob(server_->admin.get(), long_window, values, &job);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("longer than the series of 400 rows"), std::string::npos)
      << st.error_message();
  // A series whose windows would hold more than --max_training_values: refused at the header.
  v1::TrainingJobHeader wide = h;
  wide.set_rows(10'000'000);
  wide.mutable_spec()->mutable_window()->set_length(1024);
  wide.mutable_spec()->mutable_window()->set_stride(1);
  st = CreateJob(server_->admin.get(), wide, {}, &job);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("--max_training_values"), std::string::npos)
      << st.error_message();
  // With a timestamp per row, sent in chunks that do not match the rows' messages.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto writer = server_->admin->CreateTrainingJob(&ctx, &job);
    v1::CreateTrainingJobRequest first;
    *first.mutable_header() = h;
    first.mutable_header()->set_rows(n);
    first.mutable_values()->Add(values.begin(), values.end());
    ASSERT_TRUE(writer->Write(first));
    v1::CreateTrainingJobRequest times;
    times.mutable_timestamps_ms()->Add(ts.begin(), ts.begin() + 150);
    ASSERT_TRUE(writer->Write(times));
    times.mutable_timestamps_ms()->Clear();
    times.mutable_timestamps_ms()->Add(ts.begin() + 150, ts.end());
    ASSERT_TRUE(writer->Write(times));
    writer->WritesDone();
    st = writer->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  const auto states = WatchToEnd(server_->admin.get(), job.id());
  ASSERT_FALSE(states.empty());
  ASSERT_EQ(states.back().state(), v1::JOB_STATE_SUCCEEDED) << states.back().error();
  v1::ModelInfo info;
  ASSERT_TRUE(GetModel(*server_, "trained", &info).ok());
  EXPECT_EQ(info.spec().window().interval_ms(), 60'000);
  EXPECT_EQ(info.spec().num_features(), 8u * 2 + 2);
  EXPECT_EQ(info.num_features(), 2u);
  // (400 - 7) full windows, every second one: 197, of which the validation split holds some.
  EXPECT_EQ(info.history().train_rows() + info.history().validation_rows(), 197u);
}

}  // namespace
}  // namespace aeserve::testing
