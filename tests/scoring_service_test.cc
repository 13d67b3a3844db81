// End-to-end tests of the Scoring service: a real server on 127.0.0.1, a real channel, and the
// engine as the known answer.
#include <cmath>
#include <cstring>
#include <fstream>
#include <thread>

#include "aeserve/v1/admin.grpc.pb.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "engine/model.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/test_models.h"
#include "tests/test_server.h"

namespace aeserve::testing {
namespace {

using grpc::StatusCode;

class ScoringServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("aeserve_scoring_test");
    plain_file_ = new v1::ModelFile(TrainSmall(v1::MODEL_KIND_PLAIN));
    Store(dir_->path(), "plain", *plain_file_);
    vae_file_ = new v1::ModelFile(TrainSmall(v1::MODEL_KIND_VARIATIONAL));
    Store(dir_->path(), "vae", *vae_file_);
    Store(dir_->path(), "gappy", *plain_file_);  // its policy is changed by a test
    std::filesystem::create_directories(dir_->path() + "/broken/1");
    std::ofstream(dir_->path() + "/broken/1/model.pb") << "not a model";
    server::Options o = TestOptions(dir_->path());
    o.max_message_bytes = 4 << 20;
    o.max_batch_rows = 20000;
    o.max_streams = 16;
    server_ = StartTestServer(o).release();
    ASSERT_NE(server_, nullptr);
    channel_ = new std::shared_ptr<grpc::Channel>(Connect(*server_, 64 << 20));
  }
  static void TearDownTestSuite() {
    delete channel_;
    delete server_;
    delete plain_file_;
    delete vae_file_;
    delete dir_;
  }

  std::unique_ptr<v1::Scoring::Stub> Stub() { return v1::Scoring::NewStub(*channel_); }

  static v1::Samples Samples(size_t rows, uint64_t seed, uint32_t features = kFeatures) {
    auto d = engine::MakeSynthetic(rows, 0, features, 3, seed);
    v1::Samples s;
    s.set_num_features(features);
    s.mutable_values()->Add(d.normal.begin(), d.normal.end());
    return s;
  }

  // Fresh rows from the manifold the test models were trained on (normal traffic).
  static v1::Samples NormalSamples(size_t rows, size_t offset) {
    auto d = engine::MakeSynthetic(1500 + offset + rows, 0, kFeatures, 3, 77);
    v1::Samples s;
    s.set_num_features(kFeatures);
    s.mutable_values()->Add(d.normal.begin() + (1500 + offset) * kFeatures, d.normal.end());
    return s;
  }

  // The engine's answer for the same rows: the known answer for the service.
  static engine::ScoreResult EngineScores(const v1::ModelFile& f, const v1::Samples& s,
                                          engine::ScoreOptions o = {}) {
    auto m = *engine::Model::Create(f);
    engine::ScoreResult r;
    EXPECT_TRUE(
        m->Score(*m->NewContext(), {s.values().data(), size_t(s.values_size())}, o, &r).ok());
    return r;
  }

  static grpc::Status Score(v1::Scoring::Stub* stub, const v1::ScoreRequest& req,
                            v1::ScoreResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stub->Score(&ctx, req, resp);
  }

  static inline TempDir* dir_ = nullptr;
  static inline v1::ModelFile* plain_file_ = nullptr;
  static inline v1::ModelFile* vae_file_ = nullptr;
  static inline server::Server* server_ = nullptr;
  static inline std::shared_ptr<grpc::Channel>* channel_ = nullptr;
};

TEST_F(ScoringServiceTest, UnaryScoresEqualTheEngine) {
  auto stub = Stub();
  for (size_t rows : {1, 7, 256, 5000}) {
    v1::ScoreRequest req;
    req.set_model("plain");
    *req.mutable_samples() = Samples(rows, rows);
    v1::ScoreResponse resp;
    ASSERT_TRUE(Score(stub.get(), req, &resp).ok());
    const auto expected = EngineScores(*plain_file_, req.samples());
    ASSERT_EQ(resp.num_samples(), rows);
    ASSERT_EQ(resp.errors_size(), static_cast<int>(rows));
    EXPECT_EQ(std::memcmp(resp.errors().data(), expected.error.data(), rows * 4), 0);
    uint32_t anomalies = 0;
    for (size_t i = 0; i < rows; ++i) {
      EXPECT_EQ(resp.anomalous(i), expected.anomalous[i] != 0);
      EXPECT_EQ(resp.p_values(i), expected.p_value[i]);
      anomalies += expected.anomalous[i];
    }
    EXPECT_EQ(resp.num_anomalies(), anomalies);
    EXPECT_EQ(resp.model(), "plain");
    EXPECT_EQ(resp.version(), 1u);
    EXPECT_DOUBLE_EQ(resp.threshold(), plain_file_->threshold_value());
    EXPECT_GT(resp.compute_seconds(), 0);
  }
}

TEST_F(ScoringServiceTest, PerFeatureTopKIdsAndElbo) {
  auto stub = Stub();
  v1::ScoreRequest req;
  req.set_model("vae");
  *req.mutable_samples() = Samples(5, 3);
  for (int i = 0; i < 5; ++i) {
    req.mutable_samples()->add_ids("row" + std::to_string(i));
    req.mutable_samples()->add_timestamps_ms(1700000000000 + i);
  }
  req.mutable_options()->set_per_feature(true);
  req.mutable_options()->set_top_k(3);
  req.mutable_options()->set_neg_elbo(true);
  v1::ScoreResponse resp;
  ASSERT_TRUE(Score(stub.get(), req, &resp).ok());
  const auto expected =
      EngineScores(*vae_file_, req.samples(), {.per_feature = true, .neg_elbo = true});
  ASSERT_EQ(resp.feature_errors_size(), 5 * static_cast<int>(kFeatures));
  ASSERT_EQ(resp.top_features_size(), 15);
  ASSERT_EQ(resp.neg_elbo_size(), 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(resp.ids(i), "row" + std::to_string(i));
    EXPECT_EQ(resp.timestamps_ms(i), 1700000000000 + i);
    EXPECT_EQ(resp.neg_elbo(i), expected.neg_elbo[i]);
    // The top features are the largest per-feature errors, largest first.
    const float* fe = expected.feature_error.data() + i * kFeatures;
    std::vector<float> sorted(fe, fe + kFeatures);
    std::sort(sorted.rbegin(), sorted.rend());
    for (int j = 0; j < 3; ++j) {
      EXPECT_EQ(resp.top_feature_errors(i * 3 + j), sorted[j]);
      EXPECT_EQ(fe[resp.top_features(i * 3 + j)], sorted[j]);
    }
  }
}

TEST_F(ScoringServiceTest, EncodeReconstructGenerateEqualTheEngine) {
  auto stub = Stub();
  auto m = *engine::Model::Create(*vae_file_);
  auto ctx = m->NewContext();
  const v1::Samples s = Samples(9, 4);
  const absl::Span<const float> x(s.values().data(), s.values_size());
  {
    v1::EncodeRequest req;
    req.set_model("vae");
    *req.mutable_samples() = s;
    v1::EncodeResponse resp;
    grpc::ClientContext c;
    ASSERT_TRUE(stub->Encode(&c, req, &resp).ok());
    std::vector<float> codes;
    ASSERT_TRUE(m->Encode(*ctx, x, &codes).ok());
    EXPECT_EQ(resp.code_size(), 3u);
    EXPECT_EQ(std::vector<float>(resp.codes().begin(), resp.codes().end()), codes);
  }
  {
    v1::ReconstructRequest req;
    req.set_model("vae");
    *req.mutable_samples() = s;
    v1::ReconstructResponse resp;
    grpc::ClientContext c;
    ASSERT_TRUE(stub->Reconstruct(&c, req, &resp).ok());
    std::vector<float> out;
    ASSERT_TRUE(m->Reconstruct(*ctx, x, &out).ok());
    EXPECT_EQ(std::vector<float>(resp.values().begin(), resp.values().end()), out);
  }
  {
    v1::GenerateRequest req;
    req.set_model("vae");
    req.set_count(20);
    req.set_seed(5);
    v1::GenerateResponse resp;
    grpc::ClientContext c;
    ASSERT_TRUE(stub->Generate(&c, req, &resp).ok());
    std::vector<float> out;
    ASSERT_TRUE(m->Generate(*ctx, 20, 5, &out).ok());
    EXPECT_EQ(std::vector<float>(resp.values().begin(), resp.values().end()), out);
    grpc::ClientContext c2;
    req.set_model("plain");
    EXPECT_EQ(stub->Generate(&c2, req, &resp).error_code(), StatusCode::FAILED_PRECONDITION);
  }
}

TEST_F(ScoringServiceTest, ListAndGetModels) {
  auto stub = Stub();
  v1::ListModelsResponse list;
  grpc::ClientContext c;
  ASSERT_TRUE(stub->ListModels(&c, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 4);  // plain, vae, gappy, broken
  v1::ModelInfo info;
  grpc::ClientContext c2;
  v1::GetModelRequest req;
  req.set_model("plain");
  ASSERT_TRUE(stub->GetModel(&c2, req, &info).ok());
  EXPECT_EQ(info.state(), v1::MODEL_STATE_READY);
  EXPECT_EQ(info.num_features(), kFeatures);
  EXPECT_EQ(info.feature_names(0), "m0");
  EXPECT_EQ(info.spec().code_size(), 3u);
  EXPECT_EQ(info.threshold().method(), v1::THRESHOLD_PERCENTILE);
  EXPECT_DOUBLE_EQ(info.threshold_value(), plain_file_->threshold_value());
  EXPECT_EQ(info.active_version(), 1u);
  EXPECT_GT(info.history().epochs_size(), 0);
  // The corrupt model is listed as unavailable with the reason, and the rest serve.
  grpc::ClientContext c3;
  req.set_model("broken");
  ASSERT_TRUE(stub->GetModel(&c3, req, &info).ok());
  EXPECT_EQ(info.state(), v1::MODEL_STATE_UNAVAILABLE);
  EXPECT_NE(info.error().find("not an aeserve model file"), std::string::npos) << info.error();
  grpc::ClientContext c4;
  req.set_model("nope");
  EXPECT_EQ(stub->GetModel(&c4, req, &info).error_code(), StatusCode::NOT_FOUND);
}

TEST_F(ScoringServiceTest, BadInputGetsAClearStatus) {
  auto stub = Stub();
  auto expect = [&](v1::ScoreRequest req, StatusCode code, const std::string& words) {
    v1::ScoreResponse resp;
    grpc::Status st = Score(stub.get(), req, &resp);
    EXPECT_EQ(st.error_code(), code) << st.error_message();
    EXPECT_NE(st.error_message().find(words), std::string::npos) << st.error_message();
  };
  v1::ScoreRequest good;
  good.set_model("plain");
  *good.mutable_samples() = Samples(4, 5);

  auto r = good;
  r.set_model("unknown");
  expect(r, StatusCode::NOT_FOUND, "unknown model");
  r = good;
  r.set_version(7);
  expect(r, StatusCode::NOT_FOUND, "no version 7");
  r = good;
  r.set_model("broken");
  expect(r, StatusCode::UNAVAILABLE, "unavailable");
  r = good;
  r.mutable_samples()->set_num_features(11);
  expect(r, StatusCode::INVALID_ARGUMENT, "num_features 11");
  r = good;
  r.mutable_samples()->mutable_values()->RemoveLast();
  expect(r, StatusCode::INVALID_ARGUMENT, "not a multiple");
  r = good;
  r.mutable_samples()->set_values(13, -INFINITY);
  expect(r, StatusCode::INVALID_ARGUMENT, "infinite value at row 1, feature 'm1'");
  r = good;
  r.mutable_samples()->set_values(2, INFINITY);
  expect(r, StatusCode::INVALID_ARGUMENT, "infinite value");
  r = good;
  r.mutable_samples()->clear_values();
  expect(r, StatusCode::INVALID_ARGUMENT, "empty batch");
  r = good;
  r.mutable_samples()->add_ids("only one");
  expect(r, StatusCode::INVALID_ARGUMENT, "ids");
  r = good;
  r.mutable_options()->set_top_k(13);
  expect(r, StatusCode::INVALID_ARGUMENT, "top_k");
  // 30000 rows: under the 4 MiB message limit? No: 30000 * 12 * 4 bytes = 1.4 MB, but over
  // --max_batch_rows=20000.
  r = good;
  *r.mutable_samples() = Samples(30000, 6);
  expect(r, StatusCode::RESOURCE_EXHAUSTED, "over the limit");
  // Over the 4 MiB message limit: gRPC itself refuses it.
  r = good;
  *r.mutable_samples() = Samples(100000, 6);
  v1::ScoreResponse resp;
  EXPECT_EQ(Score(stub.get(), r, &resp).error_code(), StatusCode::RESOURCE_EXHAUSTED);
  // And the server still serves.
  EXPECT_TRUE(Score(stub.get(), good, &resp).ok());
}

// Sends `batches` batches on one stream while reading, checks order and values.
void RunStream(v1::Scoring::Stub* stub, int batches, size_t rows, uint64_t seed,
               const v1::ModelFile& file, int* checked) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = stub->StreamScore(&ctx);
  std::vector<v1::Samples> sent;
  std::thread writer([&] {
    for (int i = 0; i < batches; ++i) {
      v1::StreamScoreRequest req;
      if (i == 0) req.mutable_config()->set_model("plain");
      req.set_sequence(1000 + i);
      auto d = engine::MakeSynthetic(rows, 0, kFeatures, 3, seed + i);
      req.mutable_samples()->set_num_features(kFeatures);
      req.mutable_samples()->mutable_values()->Add(d.normal.begin(), d.normal.end());
      if (!stream->Write(req)) break;
    }
    stream->WritesDone();
  });
  auto model = *engine::Model::Create(file);
  auto mctx = model->NewContext();
  v1::StreamScoreResponse resp;
  int next = 0;
  while (stream->Read(&resp)) {
    ASSERT_TRUE(resp.has_result()) << resp.DebugString();
    ASSERT_EQ(resp.sequence(), 1000u + next) << "answers come in order";
    auto d = engine::MakeSynthetic(rows, 0, kFeatures, 3, seed + next);
    engine::ScoreResult expected;
    ASSERT_TRUE(model->Score(*mctx, d.normal, {}, &expected).ok());
    ASSERT_EQ(std::vector<float>(resp.result().errors().begin(), resp.result().errors().end()),
              expected.error);
    ++next;
  }
  writer.join();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(next, batches);
  *checked = next;
}

TEST_F(ScoringServiceTest, StreamAnswersEveryBatchInOrder) {
  auto stub = Stub();
  int checked = 0;
  RunStream(stub.get(), 300, 64, 100, *plain_file_, &checked);
  EXPECT_EQ(checked, 300);
}

TEST_F(ScoringServiceTest, ConcurrentStreams) {
  std::vector<std::thread> threads;
  std::vector<int> checked(6, 0);
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      auto stub = Stub();
      RunStream(stub.get(), 60, 100 + t, 1000 * (t + 1), *plain_file_, &checked[t]);
    });
  }
  for (auto& th : threads) th.join();
  for (int c : checked) EXPECT_EQ(c, 60);
}

TEST_F(ScoringServiceTest, StreamErrorsStatsAndDebounce) {
  auto stub = Stub();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = stub->StreamScore(&ctx);
  v1::StreamScoreRequest first;
  first.mutable_config()->set_model("plain");
  first.mutable_config()->set_stats_every_batches(3);
  first.mutable_config()->set_debounce_k(2);
  first.mutable_config()->set_debounce_n(3);
  ASSERT_TRUE(stream->Write(first));  // config only: no answer
  // Batch 1 and 3 good, batch 2 has an infinite value, batch 4 and 5 good.
  std::vector<v1::Samples> batches;
  for (int i = 1; i <= 5; ++i) {
    v1::StreamScoreRequest req;
    req.set_sequence(i);
    *req.mutable_samples() = NormalSamples(10, 10 * i);
    if (i == 2) req.mutable_samples()->set_values(0, INFINITY);
    // Row 3 of batch 4 and rows 0-1 of batch 5 are made anomalous (far off the manifold).
    if (i == 4)
      for (uint32_t j = 0; j < kFeatures; ++j)
        req.mutable_samples()->set_values(3 * kFeatures + j, 1e3f * (j % 2 ? 1 : -1));
    if (i == 5)
      for (uint32_t j = 0; j < 2 * kFeatures; ++j)
        req.mutable_samples()->set_values(j, 1e3f * (j % 2 ? 1 : -1));
    batches.push_back(req.samples());
    ASSERT_TRUE(stream->Write(req));
  }
  stream->WritesDone();
  std::vector<v1::StreamScoreResponse> got;
  v1::StreamScoreResponse r;
  while (stream->Read(&r)) got.push_back(r);
  ASSERT_TRUE(stream->Finish().ok());
  // 1, 2 (error), 3, stats after 3 scored batches? Stats count scored batches: 1, 3, 4 -> stats.
  ASSERT_EQ(got.size(), 6u);
  EXPECT_TRUE(got[0].has_result());
  EXPECT_EQ(got[1].sequence(), 2u);
  ASSERT_TRUE(got[1].has_error());
  EXPECT_EQ(got[1].error().code(), static_cast<int>(StatusCode::INVALID_ARGUMENT));
  EXPECT_NE(got[1].error().message().find("infinite value"), std::string::npos);
  EXPECT_TRUE(got[2].has_result());
  EXPECT_TRUE(got[3].has_result());
  ASSERT_TRUE(got[4].has_stats()) << got[4].DebugString();
  EXPECT_EQ(got[4].sequence(), 4u);
  EXPECT_EQ(got[4].stats().batches(), 3u);
  EXPECT_EQ(got[4].stats().samples(), 30u);
  uint64_t anomalies = 0;
  double sum = 0;
  for (int i : {0, 2, 3}) {
    anomalies += got[i].result().num_anomalies();
    for (float e : got[i].result().errors()) sum += e;
  }
  EXPECT_EQ(got[4].stats().anomalies(), anomalies);
  EXPECT_NEAR(got[4].stats().error_mean(), sum / 30, 1e-6 * (1 + sum));
  EXPECT_GE(anomalies, 1u);
  // Debounce 2-of-3: the lone anomaly (batch 4, row 3) raises no alarm by itself; batch 5's
  // first two rows do.
  const auto& b4 = got[3].result();
  const auto& b5 = got[5].result();
  ASSERT_EQ(b4.alarm_size(), 10);
  ASSERT_TRUE(b4.anomalous(3));
  EXPECT_FALSE(b4.alarm(3));
  ASSERT_TRUE(b5.anomalous(0) && b5.anomalous(1));
  EXPECT_TRUE(b5.alarm(1));
  // Verify every alarm against a direct count over the stream's flags.
  std::vector<bool> flags;
  for (int i : {0, 2, 3, 5}) {
    for (int j = 0; j < got[i].result().anomalous_size(); ++j) {
      flags.push_back(got[i].result().anomalous(j));
      int count = 0;
      for (size_t k = flags.size() >= 3 ? flags.size() - 3 : 0; k < flags.size(); ++k)
        count += flags[k];
      EXPECT_EQ(got[i].result().alarm(j), count >= 2);
    }
  }
}

TEST_F(ScoringServiceTest, StreamWithoutConfigOrUnknownModel) {
  auto stub = Stub();
  {
    grpc::ClientContext ctx;
    auto stream = stub->StreamScore(&ctx);
    v1::StreamScoreRequest req;
    req.set_sequence(1);
    *req.mutable_samples() = Samples(2, 1);
    ASSERT_TRUE(stream->Write(req));
    stream->WritesDone();
    v1::StreamScoreResponse r;
    ASSERT_TRUE(stream->Read(&r));
    ASSERT_TRUE(r.has_error());
    EXPECT_NE(r.error().message().find("config"), std::string::npos);
    EXPECT_TRUE(stream->Finish().ok());
  }
  {
    grpc::ClientContext ctx;
    auto stream = stub->StreamScore(&ctx);
    v1::StreamScoreRequest req;
    req.mutable_config()->set_model("nope");
    req.set_sequence(1);
    *req.mutable_samples() = Samples(2, 1);
    ASSERT_TRUE(stream->Write(req));
    stream->WritesDone();
    v1::StreamScoreResponse r;
    ASSERT_TRUE(stream->Read(&r));
    ASSERT_TRUE(r.has_error());
    EXPECT_EQ(r.error().code(), static_cast<int>(StatusCode::NOT_FOUND));
    EXPECT_TRUE(stream->Finish().ok());
  }
}

long ResidentKb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

TEST_F(ScoringServiceTest, ClientThatNeverReadsGetsBackpressure) {
  auto stub = Stub();
  grpc::ClientContext ctx;
  auto stream = stub->StreamScore(&ctx);
  // Each batch is about 1 MB in and 0.2 MB out; the client writes as fast as it can and never
  // reads. The server must stop reading, so the client's writes stall.
  v1::StreamScoreRequest req;
  req.mutable_config()->set_model("plain");
  *req.mutable_samples() = Samples(20000, 9);
  const long rss_before = ResidentKb();
  std::atomic<int> written{0};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 0; i < 2000 && !stop; ++i) {
      req.set_sequence(i);
      if (!stream->Write(req)) break;
      written++;
      if (i == 0) req.clear_config();
    }
  });
  // Bounded wait: the writer either stalls (as it must) or finishes all 2000 (a failure).
  for (int i = 0; i < 20 && written < 2000; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int stalled_at = written.load();
  const long rss_after = ResidentKb();
  EXPECT_LT(stalled_at, 100) << "writes should stall once the server stops reading";
  EXPECT_LT(rss_after - rss_before, 400 * 1024) << "server memory must stay bounded";
  stop = true;
  ctx.TryCancel();
  writer.join();
  // Cancelled by us, or reset by the server when the flood filled gRPC's buffer quota
  // (--grpc_buffer_bytes) first, which a loaded machine makes likely: both keep memory bounded.
  const StatusCode code = stream->Finish().error_code();
  EXPECT_TRUE(code == StatusCode::CANCELLED || code == StatusCode::RESOURCE_EXHAUSTED) << code;
  // The server is fine afterwards.
  v1::ScoreRequest ok;
  ok.set_model("plain");
  *ok.mutable_samples() = Samples(3, 1);
  v1::ScoreResponse resp;
  EXPECT_TRUE(Score(stub.get(), ok, &resp).ok());
}

TEST_F(ScoringServiceTest, TooManyStreamsIsResourceExhausted) {
  auto stub = Stub();
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<
      std::unique_ptr<grpc::ClientReaderWriter<v1::StreamScoreRequest, v1::StreamScoreResponse>>>
      streams;
  for (int i = 0; i < 16; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(stub->StreamScore(ctxs.back().get()));
    // A batch answered means the stream is open on the server (before the 17th is tried).
    v1::StreamScoreRequest req;
    req.mutable_config()->set_model("plain");
    *req.mutable_samples() = Samples(1, i);
    ASSERT_TRUE(streams.back()->Write(req));
    v1::StreamScoreResponse answered;
    ASSERT_TRUE(streams.back()->Read(&answered));
  }
  grpc::ClientContext extra;
  auto over = stub->StreamScore(&extra);
  v1::StreamScoreResponse r;
  EXPECT_FALSE(over->Read(&r));
  grpc::Status st = over->Finish();
  EXPECT_EQ(st.error_code(), StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  for (auto& s : streams) {
    s->WritesDone();
    EXPECT_TRUE(s->Finish().ok());
  }
}

// Columns by name (#14): the same rows with their columns shuffled and named score bit-identically
// to the positional request, unary and streamed; top features are the model's, with names.
TEST_F(ScoringServiceTest, NamedColumnsInAnyOrderScoreBitIdentically) {
  auto stub = Stub();
  v1::ScoreRequest plain;
  plain.set_model("plain");
  *plain.mutable_samples() = Samples(50, 3);
  plain.mutable_options()->set_top_k(2);
  plain.mutable_options()->set_top_feature_names(true);
  v1::ScoreResponse want;
  ASSERT_TRUE(Score(stub.get(), plain, &want).ok());
  ASSERT_EQ(want.top_feature_names_size(), 100);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(want.top_feature_names(i), "m" + std::to_string(want.top_features(i)));
  }
  // Column c of the permuted request carries feature perm[c].
  std::vector<uint32_t> perm(kFeatures);
  for (uint32_t c = 0; c < kFeatures; ++c) perm[c] = (c * 5 + 3) % kFeatures;
  v1::ScoreRequest named = plain;
  v1::Samples* s = named.mutable_samples();
  s->set_num_features(0);  // implied by the names
  for (uint32_t c = 0; c < kFeatures; ++c) s->add_feature_names("m" + std::to_string(perm[c]));
  for (int r = 0; r < 50; ++r) {
    for (uint32_t c = 0; c < kFeatures; ++c) {
      s->set_values(r * kFeatures + c, plain.samples().values(r * kFeatures + perm[c]));
    }
  }
  v1::ScoreResponse got;
  ASSERT_TRUE(Score(stub.get(), named, &got).ok());
  ASSERT_EQ(got.scores_size(), 50);
  EXPECT_EQ(std::memcmp(got.scores().data(), want.scores().data(), 50 * 4), 0);
  EXPECT_EQ(std::memcmp(got.errors().data(), want.errors().data(), 50 * 4), 0);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(got.top_features(i), want.top_features(i));
    EXPECT_EQ(got.top_feature_names(i), want.top_feature_names(i));
  }
  EXPECT_EQ(got.missing_size(), 0);

  // The same through a stream whose config names the columns once.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = stub->StreamScore(&ctx);
  v1::StreamScoreRequest req;
  req.mutable_config()->set_model("plain");
  *req.mutable_config()->mutable_feature_names() = named.samples().feature_names();
  req.set_sequence(1);
  *req.mutable_samples() = named.samples();
  req.mutable_samples()->clear_feature_names();
  req.mutable_samples()->set_num_features(kFeatures);
  ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  v1::StreamScoreResponse r;
  ASSERT_TRUE(stream->Read(&r));
  ASSERT_TRUE(r.has_result()) << r.DebugString();
  ASSERT_EQ(r.result().scores_size(), 50);
  EXPECT_EQ(std::memcmp(r.result().scores().data(), want.scores().data(), 50 * 4), 0);
  while (stream->Read(&r)) {
  }
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ScoringServiceTest, NamedColumnProblemsAreNamed) {
  auto stub = Stub();
  v1::ScoreRequest base;
  base.set_model("plain");
  *base.mutable_samples() = Samples(4, 9);
  for (uint32_t j = 0; j < kFeatures; ++j)
    base.mutable_samples()->add_feature_names("m" + std::to_string(j));
  v1::ScoreResponse want;
  ASSERT_TRUE(Score(stub.get(), base, &want).ok());
  auto status_of = [&](const v1::ScoreRequest& req, v1::ScoreResponse* resp) {
    grpc::Status st = Score(stub.get(), req, resp);
    return st;
  };
  v1::ScoreResponse resp;
  // An extra column: refused naming it, or dropped on request.
  v1::ScoreRequest extra = base;
  v1::Samples* s = extra.mutable_samples();
  s->clear_values();
  s->set_num_features(kFeatures + 1);
  s->add_feature_names("cpu_user");
  for (int r = 0; r < 4; ++r) {
    for (uint32_t j = 0; j < kFeatures; ++j)
      s->add_values(base.samples().values(r * kFeatures + j));
    s->add_values(123.f);
  }
  grpc::Status st = status_of(extra, &resp);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("unknown feature 'cpu_user'"), std::string::npos)
      << st.error_message();
  s->set_ignore_unknown_features(true);
  ASSERT_TRUE(status_of(extra, &resp).ok());
  EXPECT_EQ(std::memcmp(resp.scores().data(), want.scores().data(), 4 * 4), 0);
  // A name given twice.
  v1::ScoreRequest twice = base;
  twice.mutable_samples()->set_feature_names(1, "m0");
  st = status_of(twice, &resp);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("'m0' is given twice"), std::string::npos)
      << st.error_message();
  // Names and num_features that disagree.
  v1::ScoreRequest count = base;
  count.mutable_samples()->set_num_features(kFeatures - 1);
  EXPECT_EQ(status_of(count, &resp).error_code(), StatusCode::INVALID_ARGUMENT);
  // One feature absent: filled in (the default policy allows 6 of 12), reported per row.
  v1::ScoreRequest absent = base;
  s = absent.mutable_samples();
  s->clear_values();
  s->mutable_feature_names()->RemoveLast();  // m11
  s->set_num_features(kFeatures - 1);
  for (int r = 0; r < 4; ++r) {
    for (uint32_t j = 0; j + 1 < kFeatures; ++j)
      s->add_values(base.samples().values(r * kFeatures + j));
  }
  ASSERT_TRUE(status_of(absent, &resp).ok());
  ASSERT_EQ(resp.missing_size(), 4);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(resp.missing(r), 1u);
  // The same as sending NaN in that column.
  v1::ScoreRequest nan = base;
  for (int r = 0; r < 4; ++r) nan.mutable_samples()->set_values(r * kFeatures + kFeatures - 1, NAN);
  v1::ScoreResponse nan_resp;
  ASSERT_TRUE(status_of(nan, &nan_resp).ok());
  EXPECT_EQ(std::memcmp(resp.scores().data(), nan_resp.scores().data(), 4 * 4), 0);
  // Seven of twelve absent: over the policy, refused naming them.
  v1::ScoreRequest most = base;
  s = most.mutable_samples();
  s->clear_values();
  s->mutable_feature_names()->DeleteSubrange(0, 7);
  s->set_num_features(5);
  for (int i = 0; i < 20; ++i) s->add_values(0.5f);
  st = status_of(most, &resp);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("missing features 'm0', 'm1', 'm2', 'm3', 'm4', 'm5', 'm6'"),
            std::string::npos)
      << st.error_message();
  // A stream config naming a column twice is refused for that message; the stream goes on.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = stub->StreamScore(&ctx);
  v1::StreamScoreRequest req;
  req.mutable_config()->set_model("plain");
  req.mutable_config()->add_feature_names("m1");
  req.mutable_config()->add_feature_names("m1");
  ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  v1::StreamScoreResponse r;
  ASSERT_TRUE(stream->Read(&r));
  ASSERT_TRUE(r.has_error()) << r.DebugString();
  EXPECT_NE(r.error().message().find("given twice"), std::string::npos) << r.error().message();
  while (stream->Read(&r)) {
  }
  EXPECT_TRUE(stream->Finish().ok());
}

// Gaps (#14): NaN is missing; a batch with gaps is scored as the engine scores it, rows over the
// policy are skipped with the reason, and SetScoringPolicy changes the policy of a served model.
TEST_F(ScoringServiceTest, GapsAreScoredSkippedAndThePolicyCanChange) {
  auto stub = Stub();
  v1::ScoreRequest req;
  req.set_model("gappy");
  *req.mutable_samples() = Samples(6, 4);
  auto* v = req.mutable_samples()->mutable_values();
  v->Set(0 * kFeatures + 2, NAN);                                   // row 0: 1 missing
  for (uint32_t j = 0; j < 7; ++j) v->Set(3 * kFeatures + j, NAN);  // row 3: 7 missing
  v1::ScoreResponse resp;
  ASSERT_TRUE(Score(stub.get(), req, &resp).ok());
  const auto expected = EngineScores(*plain_file_, req.samples());
  ASSERT_EQ(resp.missing_size(), 6);
  EXPECT_EQ(resp.missing(0), 1u);
  EXPECT_EQ(resp.missing(3), 7u);
  ASSERT_EQ(resp.skipped_size(), 6);
  EXPECT_TRUE(resp.skipped(3));
  EXPECT_FALSE(resp.skipped(0));
  EXPECT_TRUE(std::isnan(resp.scores(3)));
  EXPECT_FALSE(resp.anomalous(3));
  EXPECT_NE(resp.skip_reason().find("1 sample misses more features"), std::string::npos)
      << resp.skip_reason();
  for (int i : {0, 1, 2, 4, 5}) EXPECT_EQ(resp.scores(i), expected.score[i]) << i;

  auto admin = v1::ModelAdmin::NewStub(*channel_);
  v1::SetScoringPolicyRequest set;
  set.set_model("gappy");
  set.mutable_policy()->set_max_missing_fraction(0);
  v1::ModelInfoBrief brief;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(admin->SetScoringPolicy(&ctx, set, &brief).ok());
  }
  grpc::Status st = Score(stub.get(), req, &resp);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("missing value (NaN) at row 0, feature 'm2'"),
            std::string::npos)
      << st.error_message();
  v1::GetModelRequest get;
  get.set_model("gappy");
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->GetModel(&ctx, get, &info).ok());
  }
  EXPECT_EQ(info.policy().max_missing_fraction(), 0.f);
  EXPECT_EQ(info.policy().impute_refinements(), plain_file_->policy().impute_refinements());
  set.mutable_policy()->set_max_missing_fraction(1.f);  // nothing observed: refused
  {
    grpc::ClientContext ctx;
    st = admin->SetScoringPolicy(&ctx, set, &brief);
  }
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("max_missing_fraction"), std::string::npos)
      << st.error_message();
  set.mutable_policy()->set_max_missing_fraction(0.6f);
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(admin->SetScoringPolicy(&ctx, set, &brief).ok());
  }
  ASSERT_TRUE(Score(stub.get(), req, &resp).ok());
  EXPECT_EQ(resp.skipped_size(), 0);  // 7 of 12 is within 0.6
}

// Precision (#20): the server's --precision applies to versions whose policy names none, a
// version's policy overrides it (SetScoringPolicy), and each version reports what it scores with.
// The answers are the engine's for the same choice, bit for bit.
TEST(Precision, TheServerFlagAndTheVersionPolicyChooseIt) {
  if (!engine::Model::Bf16Supported()) GTEST_SKIP() << "this CPU has no AVX-512";
  TempDir dir("aeserve_precision_test");
  const v1::ModelFile file = TrainSmall(v1::MODEL_KIND_PLAIN);
  Store(dir.path(), "m", file);
  server::Options o = TestOptions(dir.path());
  o.precision = "f16";
  auto refused = server::Server::Start(o, spdlog::null_logger_mt("precision_bad"));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("--precision is f32 or bf16, not 'f16'"),
            std::string::npos)
      << refused.status();
  o.precision = "bf16";
  std::unique_ptr<server::Server> server = StartTestServer(o);
  ASSERT_NE(server, nullptr);
  auto channel = Connect(*server);
  auto stub = v1::Scoring::NewStub(channel);
  auto admin = v1::ModelAdmin::NewStub(channel);
  auto precision = [&] {
    v1::GetModelRequest get;
    get.set_model("m");
    v1::ModelInfo info;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub->GetModel(&ctx, get, &info).ok());
    return info.versions_size() == 1 ? info.versions(0).precision() : v1::PRECISION_UNSPECIFIED;
  };
  v1::ScoreRequest req;
  req.set_model("m");
  auto d = engine::MakeSynthetic(300, 0, kFeatures, 3, 5);
  req.mutable_samples()->set_num_features(kFeatures);
  req.mutable_samples()->mutable_values()->Add(d.normal.begin(), d.normal.end());
  const absl::Span<const float> x(req.samples().values().data(), req.samples().values_size());
  auto answer = [&](const engine::ModelOptions& mo) {
    auto m = *engine::Model::Create(file, mo);
    engine::ScoreResult r;
    EXPECT_TRUE(m->Score(*m->NewContext(), x, {}, &r).ok());
    return r.error;
  };
  auto served = [&] {
    v1::ScoreResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub->Score(&ctx, req, &resp).ok());
    return std::vector<float>(resp.errors().begin(), resp.errors().end());
  };
  const std::vector<float> bf16 = answer({.bf16 = true}), f32 = answer({});
  ASSERT_NE(bf16, f32);
  EXPECT_EQ(precision(), v1::PRECISION_BF16);
  EXPECT_EQ(served(), bf16);
  v1::SetScoringPolicyRequest set;
  set.set_model("m");
  set.mutable_policy()->set_precision(v1::PRECISION_F32);
  v1::ModelInfoBrief brief;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(admin->SetScoringPolicy(&ctx, set, &brief).ok());
  }
  EXPECT_EQ(precision(), v1::PRECISION_F32);
  EXPECT_EQ(served(), f32);
  set.mutable_policy()->set_precision(static_cast<v1::Precision>(9));
  grpc::ClientContext ctx;
  const grpc::Status st = admin->SetScoringPolicy(&ctx, set, &brief);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("unknown precision 9"), std::string::npos)
      << st.error_message();
  EXPECT_EQ(precision(), v1::PRECISION_F32);
}

}  // namespace
}  // namespace aeserve::testing
