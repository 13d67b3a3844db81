// The inference path against a plain reference, the model file format, and bad input.
#include "engine/model.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "engine/model_file.h"
#include "engine/params.h"
#include "engine/scaler.h"
#include "engine/spec.h"
#include "engine/synthetic_data.h"
#include "engine/threshold.h"
#include "gtest/gtest.h"

namespace aeserve::engine {
namespace {

constexpr size_t kFeatures = 9;

v1::ModelFile MakeFile(v1::ModelKind kind, v1::Activation hidden, uint64_t seed = 3) {
  v1::ModelSpec s;
  s.set_kind(kind);
  s.add_encoder_units(16);
  s.add_encoder_units(8);
  s.set_code_size(3);
  s.set_hidden_activation(hidden);
  s.set_neighbors(0);  // the reconstruction path alone; neighbours have their own tests
  auto spec = ResolveSpec(s, kFeatures);
  EXPECT_TRUE(spec.ok()) << spec.status();
  std::mt19937_64 rng(seed);
  Params p = InitParams(*spec, rng);
  std::normal_distribution<float> n(0.f, 0.2f);
  for (auto& l : p.layers) {
    for (float& b : l.bias) b = n(rng);
  }
  v1::ModelFile f;
  f.set_format_version(kModelFormatVersion);
  *f.mutable_spec() = *spec;
  auto data = MakeSynthetic(200, 0, kFeatures, 2, seed);
  *f.mutable_scaler() = *FitScaler(v1::SCALING_STANDARD, data.normal, 200, kFeatures);
  ToModelFile(p, f);
  for (float e : {0.1f, 0.2f, 0.3f, 0.5f, 0.8f, 1.3f, 2.1f}) f.add_calibration_errors(e);
  f.set_threshold_value(0.75);
  return f;
}

double Act(v1::Activation a, double x) {
  switch (a) {
    case v1::ACTIVATION_RELU:
      return x > 0 ? x : 0;
    case v1::ACTIVATION_LEAKY_RELU:
      return x > 0 ? x : 0.01 * x;
    case v1::ACTIVATION_TANH:
      return std::tanh(x);
    case v1::ACTIVATION_SIGMOID:
      return 1 / (1 + std::exp(-x));
    case v1::ACTIVATION_ELU:
      return x > 0 ? x : std::exp(x) - 1;
    default:
      return x;
  }
}

// A float rounded to the nearest bfloat16 (ties to even), by the definition: the nearest
// multiple of 2^(e - 7), where 2^e <= |v| < 2^(e + 1).
double RoundBf16(double v) {
  if (v == 0) return 0;
  const double step = std::ldexp(1.0, std::ilogb(v) - 7);
  const double q = v / step, lo = std::floor(q);
  const double k = q - lo > 0.5 || (q - lo == 0.5 && std::fmod(lo, 2) != 0) ? lo + 1 : lo;
  return k * step;
}

// A plain double-precision forward pass: the known answer for the oneDNN path. `bf16`: every
// layer reads its input and weights rounded to bfloat16 (the output layer's result and the error's
// scaled input are not rounded), as PRECISION_BF16 promises.
std::vector<double> ReferenceErrors(const v1::ModelFile& f, const std::vector<float>& x,
                                    bool bf16 = false) {
  auto round = [&](double v) { return bf16 ? RoundBf16(v) : v; };
  const size_t d = f.spec().num_features(), c = f.spec().code_size();
  const bool vae = f.spec().kind() == v1::MODEL_KIND_VARIATIONAL;
  std::vector<double> errors;
  for (size_t r = 0; r < x.size() / d; ++r) {
    std::vector<double> xs(d);
    for (size_t j = 0; j < d; ++j)
      xs[j] = (x[r * d + j] - f.scaler().offset(j)) / f.scaler().scale(j);
    std::vector<double> h = xs;
    auto layer = [&](const v1::DenseLayer& l, size_t outputs) {
      std::vector<double> o(outputs);
      for (size_t i = 0; i < outputs; ++i) {
        double s = l.bias(i);
        for (size_t k = 0; k < l.inputs(); ++k) {
          s += round(l.weights(i * l.inputs() + k)) * round(h[k]);
        }
        o[i] = Act(l.activation(), s);
      }
      h = o;
    };
    for (int i = 0; i < f.encoder_size(); ++i) {
      const bool head = i == f.encoder_size() - 1;
      layer(f.encoder(i), head && vae ? c : f.encoder(i).outputs());  // mu only
    }
    for (const auto& l : f.decoder()) layer(l, l.outputs());
    double e = 0;
    for (size_t j = 0; j < d; ++j) e += (h[j] - xs[j]) * (h[j] - xs[j]);
    errors.push_back(e / d);
  }
  return errors;
}

std::vector<float> Rows(size_t n, uint64_t seed) {
  auto d = MakeSynthetic(n, 0, kFeatures, 2, seed);
  return d.normal;
}

class ModelKinds : public ::testing::TestWithParam<std::pair<v1::ModelKind, v1::Activation>> {};

TEST_P(ModelKinds, ScoresMatchReferenceForEveryBatchSize) {
  const v1::ModelFile f = MakeFile(GetParam().first, GetParam().second);
  auto model = Model::Create(f);
  ASSERT_TRUE(model.ok()) << model.status();
  auto ctx = (*model)->NewContext();
  for (size_t n : {1, 2, 3, 5, 7, 17, 100, 255, 256, 1000, 5000}) {
    const std::vector<float> x = Rows(n, n);
    ScoreResult r;
    ASSERT_TRUE((*model)->Score(*ctx, x, {}, &r).ok());
    const auto ref = ReferenceErrors(f, x);
    ASSERT_EQ(r.error.size(), n);
    for (size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(r.error[i], ref[i], 1e-4 * std::max(1.0, ref[i])) << "n=" << n << " row " << i;
      EXPECT_EQ(r.anomalous[i], r.error[i] > 0.75f);
      EXPECT_FLOAT_EQ(r.p_value[i], PValue(r.error[i], f.calibration_errors()));
    }
  }
}

// bf16 scoring: the same pass with inputs and weights rounded to bfloat16, chosen by the file's
// policy or by the options (for files that leave it unset); f32 otherwise.
TEST_P(ModelKinds, Bf16ScoresMatchABf16Reference) {
  if (!Model::Bf16Supported()) GTEST_SKIP() << "this CPU has no AVX-512";
  v1::ModelFile f = MakeFile(GetParam().first, GetParam().second);
  const v1::ModelFile unset = f;
  f.mutable_policy()->set_precision(v1::PRECISION_BF16);
  auto by_policy = *Model::Create(f);
  auto by_option = *Model::Create(unset, ModelOptions{.bf16 = true});
  v1::ModelFile f32 = unset;
  f32.mutable_policy()->set_precision(v1::PRECISION_F32);
  EXPECT_TRUE(by_policy->bf16());
  EXPECT_TRUE(by_option->bf16());
  EXPECT_FALSE((*Model::Create(f32, ModelOptions{.bf16 = true}))->bf16());
  EXPECT_FALSE((*Model::Create(unset))->bf16());
  EXPECT_EQ(by_policy->architecture(), by_option->architecture());
  // oneDNN sums in f32 and rounds each hidden activation once, as the reference does in double;
  // a sum within f32's error of a bf16 rounding midpoint can round the other way, moving that
  // row's error by up to about 2^-9 of one unit's share. Rows off by more than 5e-6: the bf16 path
  // rarely, the f32 reference (no rounding) almost always.
  size_t rows = 0, off = 0, f32_off = 0;
  for (size_t n : {1, 3, 17, 256, 1000, 5000}) {
    const std::vector<float> x = Rows(n, n);
    ScoreResult r;
    ASSERT_TRUE(by_policy->Score(*by_policy->NewContext(), x, {}, &r).ok());
    const auto want = ReferenceErrors(f, x, true), f32_want = ReferenceErrors(f, x);
    ASSERT_EQ(r.error.size(), n);
    for (size_t i = 0; i < n; ++i) {
      const double scale = std::max(1.0, want[i]);
      ASSERT_NEAR(r.error[i], want[i], 2e-3 * scale) << "n=" << n << " row " << i;
      off += std::abs(r.error[i] - want[i]) > 5e-6 * scale;
      f32_off += std::abs(f32_want[i] - want[i]) > 5e-6 * scale;
      ++rows;
    }
  }
  EXPECT_LE(off, rows / 100);
  EXPECT_GE(f32_off, rows / 2);
}

INSTANTIATE_TEST_SUITE_P(
    All, ModelKinds,
    ::testing::Values(std::pair{v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU},
                      std::pair{v1::MODEL_KIND_PLAIN, v1::ACTIVATION_TANH},
                      std::pair{v1::MODEL_KIND_PLAIN, v1::ACTIVATION_SIGMOID},
                      std::pair{v1::MODEL_KIND_PLAIN, v1::ACTIVATION_ELU},
                      std::pair{v1::MODEL_KIND_PLAIN, v1::ACTIVATION_LEAKY_RELU},
                      std::pair{v1::MODEL_KIND_VARIATIONAL, v1::ACTIVATION_RELU}));

TEST(Model, PerFeatureErrorsAndOriginalUnits) {
  const v1::ModelFile f = MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_TANH);
  auto model = *Model::Create(f);
  auto ctx = model->NewContext();
  const auto x = Rows(10, 1);
  ScoreResult scaled, original;
  ASSERT_TRUE(model->Score(*ctx, x, {.per_feature = true}, &scaled).ok());
  ASSERT_TRUE(model->Score(*ctx, x, {.per_feature = true, .original_units = true}, &original).ok());
  for (size_t r = 0; r < 10; ++r) {
    double mean = 0;
    for (size_t j = 0; j < kFeatures; ++j) {
      mean += scaled.feature_error[r * kFeatures + j];
      const double s = f.scaler().scale(j);
      EXPECT_NEAR(original.feature_error[r * kFeatures + j],
                  scaled.feature_error[r * kFeatures + j] * s * s, 1e-4 * (1 + s * s));
    }
    EXPECT_NEAR(mean / kFeatures, scaled.error[r], 1e-6 * (1 + scaled.error[r]));
  }
}

TEST(Model, EncodeReconstructGenerate) {
  const v1::ModelFile f = MakeFile(v1::MODEL_KIND_VARIATIONAL, v1::ACTIVATION_TANH);
  auto model = *Model::Create(f);
  auto ctx = model->NewContext();
  const auto x = Rows(20, 2);
  std::vector<float> codes, recon, gen1, gen2, gen3;
  ASSERT_TRUE(model->Encode(*ctx, x, &codes).ok());
  EXPECT_EQ(codes.size(), 20u * 3);
  ASSERT_TRUE(model->Reconstruct(*ctx, x, &recon).ok());
  ASSERT_EQ(recon.size(), x.size());
  // The reconstruction error in scaled space is the score.
  ScoreResult r;
  ASSERT_TRUE(model->Score(*ctx, x, {.neg_elbo = true}, &r).ok());
  for (size_t i = 0; i < 20; ++i) {
    double e = 0;
    for (size_t j = 0; j < kFeatures; ++j) {
      const double diff = (recon[i * kFeatures + j] - x[i * kFeatures + j]) / f.scaler().scale(j);
      e += diff * diff;
    }
    EXPECT_NEAR(e / kFeatures, r.error[i], 1e-3 * (1 + r.error[i]));
    EXPECT_GE(r.neg_elbo[i], r.error[i]);  // KL >= 0
  }
  ASSERT_TRUE(model->Generate(*ctx, 50, 9, &gen1).ok());
  ASSERT_TRUE(model->Generate(*ctx, 50, 9, &gen2).ok());
  ASSERT_TRUE(model->Generate(*ctx, 50, 10, &gen3).ok());
  EXPECT_EQ(gen1.size(), 50u * kFeatures);
  EXPECT_EQ(gen1, gen2);
  EXPECT_NE(gen1, gen3);
  auto plain = *Model::Create(MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU));
  auto pctx = plain->NewContext();
  EXPECT_EQ(plain->Generate(*pctx, 5, 1, &gen1).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(Model, BadInputIsInvalidArgument) {
  auto model = *Model::Create(MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU));
  auto ctx = model->NewContext();
  ScoreResult r;
  std::vector<float> x = Rows(3, 4);
  EXPECT_EQ(model->Score(*ctx, {}, {}, &r).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Score(*ctx, absl::MakeSpan(x).subspan(0, kFeatures + 1), {}, &r).code(),
            absl::StatusCode::kInvalidArgument);
  x[kFeatures + 2] = -INFINITY;
  auto st = model->Score(*ctx, x, {}, &r);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("infinite value at row 1, feature 2"), std::string::npos) << st;
  std::vector<float> codes;
  EXPECT_EQ(model->Encode(*ctx, x, &codes).code(), absl::StatusCode::kInvalidArgument);
}

TEST(Model, ManyThreadsShareOneModel) {
  auto model = *Model::Create(MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU));
  const auto x = Rows(300, 5);
  ScoreResult expected;
  ASSERT_TRUE(model->Score(*model->NewContext(), x, {}, &expected).ok());
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto ctx = model->NewContext();
      for (int i = 0; i < 50; ++i) {
        ScoreResult r;
        if (!model->Score(*ctx, x, {}, &r).ok() || r.error != expected.error) ++mismatches[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
}

class ModelFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        std::filesystem::temp_directory_path() / ("aeserve_model_test_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "model.pb").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(ModelFileTest, RoundTripGivesBitIdenticalScores) {
  const v1::ModelFile f = MakeFile(v1::MODEL_KIND_VARIATIONAL, v1::ACTIVATION_ELU);
  ASSERT_TRUE(SaveModelFile(f, path_).ok());
  auto loaded = LoadModelFile(path_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto a = *Model::Create(f), b = *Model::Create(*loaded);
  const auto x = Rows(777, 6);
  ScoreResult ra, rb;
  ASSERT_TRUE(a->Score(*a->NewContext(), x, {.per_feature = true}, &ra).ok());
  ASSERT_TRUE(b->Score(*b->NewContext(), x, {.per_feature = true}, &rb).ok());
  ASSERT_EQ(ra.error.size(), rb.error.size());
  EXPECT_EQ(std::memcmp(ra.error.data(), rb.error.data(), ra.error.size() * 4), 0);
  EXPECT_EQ(ra.feature_error, rb.feature_error);
  EXPECT_EQ(ra.p_value, rb.p_value);
  // Only the file remains: the temp file was renamed into place.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 1);
}

TEST_F(ModelFileTest, OverwriteIsAtomicReplacement) {
  ASSERT_TRUE(SaveModelFile(MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU, 1), path_).ok());
  const v1::ModelFile second = MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU, 2);
  ASSERT_TRUE(SaveModelFile(second, path_).ok());
  auto loaded = LoadModelFile(path_);
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->SerializeAsString(), second.SerializeAsString());
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 1);
}

TEST_F(ModelFileTest, CorruptedAndTruncatedFilesAreRejected) {
  const std::string bytes = SerializeModelFile(MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU));
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    std::string bad = bytes;
    const size_t at = std::uniform_int_distribution<size_t>(0, bad.size() - 1)(rng);
    bad[at] = static_cast<char>(bad[at] ^ (1 + trial % 255));
    EXPECT_EQ(ParseModelFile(bad).status().code(), absl::StatusCode::kDataLoss) << "byte " << at;
  }
  for (size_t len :
       {size_t{0}, size_t{5}, size_t{23}, size_t{24}, bytes.size() / 2, bytes.size() - 1}) {
    EXPECT_EQ(ParseModelFile(bytes.substr(0, len)).status().code(), absl::StatusCode::kDataLoss)
        << "length " << len;
  }
  EXPECT_EQ(ParseModelFile(bytes + "x").status().code(), absl::StatusCode::kDataLoss);
  std::ofstream(path_, std::ios::binary) << bytes.substr(0, bytes.size() - 10);
  auto st = LoadModelFile(path_).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("truncated"), std::string::npos) << st;
  EXPECT_EQ(LoadModelFile((dir_ / "missing.pb").string()).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ModelFileTest, InconsistentContentsAreRejectedAtCreate) {
  v1::ModelFile f = MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU);
  f.mutable_encoder(0)->mutable_weights()->RemoveLast();
  EXPECT_EQ(Model::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
  f = MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU);
  f.mutable_scaler()->set_scale(0, 0);
  EXPECT_EQ(Model::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
  f = MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU);
  f.mutable_decoder(0)->set_weights(0, NAN);
  EXPECT_EQ(Model::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
  f = MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU);
  f.add_calibration_errors(0.01f);  // not sorted
  EXPECT_EQ(Model::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
}

// Neighbour distance, worked by hand: scaler identity, two features, reference rows (0,0),
// (3,4), (6,8), 2 neighbours. For x = (0,0) the distances are 0, 5, 10: mean of the nearest two
// 2.5. For x = (6,8): 10, 5, 0 -> 2.5. For x = (3,0): 3, 4, sqrt(9+64)=8.544 -> 3.5. With
// ScoreScale {error 1 +- 2, distance 2 +- 0.5} and weight 0.5 the score is
// 0.5 * (error - 1) / 2 + (distance - 2) / 0.5.
v1::ModelFile NeighbourFile() {
  v1::ModelSpec s;
  s.add_encoder_units(4);
  s.set_code_size(1);
  s.set_neighbors(2);
  s.set_reference_rows(4);
  s.set_neighbor_groups(1);
  s.set_reconstruction_weight(0.5f);
  auto spec = ResolveSpec(s, 2);
  EXPECT_TRUE(spec.ok()) << spec.status();
  std::mt19937_64 rng(1);
  v1::ModelFile f;
  f.set_format_version(kModelFormatVersion);
  *f.mutable_spec() = *spec;
  ToModelFile(InitParams(*spec, rng), f);
  for (int j = 0; j < 2; ++j) {
    f.mutable_scaler()->add_offset(0);
    f.mutable_scaler()->add_scale(1);
  }
  for (float v : {0.f, 0.f, 3.f, 4.f, 6.f, 8.f}) f.add_reference(v);
  f.set_threshold_value(1.0);
  return f;
}

TEST(Model, NeighbourDistanceKnownAnswers) {
  v1::ModelFile f = NeighbourFile();
  auto model = Model::Create(f);
  ASSERT_TRUE(model.ok()) << model.status();
  auto ctx = (*model)->NewContext();
  ScoreResult r;
  const std::vector<float> x = {0, 0, 6, 8, 3, 0};
  ASSERT_TRUE((*model)->Score(*ctx, x, {}, &r).ok());
  ASSERT_EQ(r.distance.size(), 3u);
  EXPECT_NEAR(r.distance[0], 2.5, 1e-4);
  EXPECT_NEAR(r.distance[1], 2.5, 1e-4);
  EXPECT_NEAR(r.distance[2], 3.5, 1e-4);
  // Without a score scale (a model being calibrated) the score is the error.
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(r.score[i], r.error[i]);

  v1::ScoreScale* sc = f.mutable_score_scale();
  sc->set_error_mean(1);
  sc->set_error_std(2);
  sc->set_distance_mean(2);
  sc->set_distance_std(0.5);
  auto scaled = Model::Create(f);
  ASSERT_TRUE(scaled.ok()) << scaled.status();
  auto ctx2 = (*scaled)->NewContext();
  ASSERT_TRUE((*scaled)->Score(*ctx2, x, {}, &r).ok());
  for (size_t i = 0; i < 3; ++i) {
    const double want = 0.5 * (r.error[i] - 1) / 2 + (r.distance[i] - 2) / 0.5;
    EXPECT_NEAR(r.score[i], want, 1e-4);
    EXPECT_EQ(r.anomalous[i], r.score[i] > 1.0f);
  }
  EXPECT_NEAR(r.score[0] - 0.25 * (r.error[0] - 1), 1.0, 1e-4);  // (2.5 - 2) / 0.5
}

// Two groups, worked by hand: group A (0,0), (3,4); group B (6,8), (9,12); 1 neighbour. The
// distance is the mean over the groups of the nearest row's distance in each: x = (0,0): A 0,
// B 10 -> 5. x = (6,8): A 5, B 0 -> 2.5. x = (3,0): A 3, B sqrt(9+64) = 8.544 -> 5.772. With
// x = (3,0) missing its second feature (gaps: squared distances over the observed feature,
// stretched by 2/1): A min(0, 9)*2 -> 0, B min(9, 36)*2 -> sqrt(18) = 4.243 -> 2.121.
TEST(Model, NeighbourGroupsKnownAnswers) {
  v1::ModelFile f = NeighbourFile();
  f.mutable_spec()->set_neighbors(1);
  f.mutable_spec()->set_neighbor_groups(2);
  f.clear_reference();
  for (float v : {0.f, 0.f, 3.f, 4.f, 6.f, 8.f, 9.f, 12.f}) f.add_reference(v);
  auto model = Model::Create(f);
  ASSERT_TRUE(model.ok()) << model.status();
  auto ctx = (*model)->NewContext();
  ScoreResult r;
  ASSERT_TRUE((*model)->Score(*ctx, std::vector<float>{0, 0, 6, 8, 3, 0, 3, NAN}, {}, &r).ok());
  ASSERT_EQ(r.distance.size(), 4u);
  EXPECT_NEAR(r.distance[0], 5.0, 1e-4);
  EXPECT_NEAR(r.distance[1], 2.5, 1e-4);
  EXPECT_NEAR(r.distance[2], (3 + std::sqrt(73.0)) / 2, 1e-4);
  EXPECT_NEAR(r.distance[3], std::sqrt(18.0) / 2, 1e-4);
  // Rows that do not make equal groups are refused; a file from before groups existed (no
  // neighbor_groups) has one group: x = (0,0) is then 0 from its nearest row.
  f.mutable_reference()->Truncate(6);
  EXPECT_EQ(Model::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
  f.mutable_spec()->clear_neighbor_groups();
  auto old = Model::Create(f);
  ASSERT_TRUE(old.ok()) << old.status();
  ASSERT_TRUE((*old)->Score(*(*old)->NewContext(), std::vector<float>{0, 0}, {}, &r).ok());
  EXPECT_NEAR(r.distance[0], 0.0, 1e-4);
}

// Every batch size through the neighbour primitive (buckets, 256-row chunks) against brute force.
TEST(Model, NeighbourDistanceMatchesBruteForceForEveryBatchSize) {
  v1::ModelFile f = NeighbourFile();
  f.mutable_spec()->set_neighbors(3);
  f.mutable_spec()->set_reference_rows(64);
  f.clear_reference();
  std::mt19937_64 rng(7);
  std::normal_distribution<float> n(0.f, 1.f);
  for (int i = 0; i < 50 * 2; ++i) f.add_reference(n(rng));
  auto model = Model::Create(f, ModelOptions{1, 1024});
  ASSERT_TRUE(model.ok()) << model.status();
  auto ctx = (*model)->NewContext();
  for (size_t rows : {1u, 3u, 255u, 256u, 257u, 700u, 1024u, 1500u}) {
    std::vector<float> x(rows * 2);
    for (float& v : x) v = 2 * n(rng);
    ScoreResult r;
    ASSERT_TRUE((*model)->Score(*ctx, x, {}, &r).ok());
    for (size_t i = 0; i < rows; ++i) {
      std::vector<double> d;
      for (int k = 0; k < 50; ++k) {
        d.push_back(
            std::hypot(x[2 * i] - f.reference(2 * k), x[2 * i + 1] - f.reference(2 * k + 1)));
      }
      std::sort(d.begin(), d.end());
      ASSERT_NEAR(r.distance[i], (d[0] + d[1] + d[2]) / 3, 1e-3) << rows << " rows, row " << i;
    }
  }
}

TEST(Model, NeighbourSpecDefaultsAndLimits) {
  v1::ModelSpec s;
  auto d = ResolveSpec(s, 4);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->neighbors(), 8u);
  EXPECT_EQ(d->reference_rows(), 256u);
  EXPECT_EQ(d->neighbor_groups(), 2u);
  EXPECT_FLOAT_EQ(d->reconstruction_weight(), 0.25f);
  // A series model (a window, or time features) scores by its error alone unless asked.
  v1::ModelSpec series;
  series.mutable_window()->set_length(4);
  auto sd = ResolveSpec(series, 4);
  ASSERT_TRUE(sd.ok()) << sd.status();
  EXPECT_EQ(sd->neighbors(), 0u);
  series.mutable_window()->set_length(1);
  series.mutable_window()->add_time_features(v1::TIME_FEATURE_HOUR_OF_DAY);
  sd = ResolveSpec(series, 3);
  ASSERT_TRUE(sd.ok()) << sd.status();
  EXPECT_EQ(sd->neighbors(), 0u);
  series.set_neighbors(4);
  sd = ResolveSpec(series, 3);
  ASSERT_TRUE(sd.ok()) << sd.status();
  EXPECT_EQ(sd->neighbors(), 4u);
  s.set_neighbors(10);
  s.set_reference_rows(16);  // groups unset: as many as hold 10 neighbours each, here 1
  auto one = ResolveSpec(s, 4);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->neighbor_groups(), 1u);
  s.set_neighbor_groups(2);  // 8 rows a group for 10 neighbours
  EXPECT_EQ(ResolveSpec(s, 4).status().code(), absl::StatusCode::kInvalidArgument);
  s.set_neighbor_groups(0);
  EXPECT_EQ(ResolveSpec(s, 4).status().code(), absl::StatusCode::kInvalidArgument);
  s.set_neighbors(0);  // no neighbours: the other fields are cleared
  auto none = ResolveSpec(s, 4);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_neighbor_groups());
}

TEST(Model, NeighbourFilesAreChecked) {
  v1::ModelFile f = NeighbourFile();
  f.add_reference(1.f);  // not a multiple of the feature count
  EXPECT_EQ(Model::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
  f = NeighbourFile();
  f.mutable_reference()->Truncate(2);  // one row for two neighbours
  EXPECT_EQ(Model::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
  f = NeighbourFile();
  f.mutable_score_scale()->set_error_std(1);  // distance_std 0
  EXPECT_EQ(Model::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
  f = NeighbourFile();
  f.mutable_spec()->set_neighbors(0);  // reference rows without neighbours
  EXPECT_EQ(Model::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
  // A file from before neighbours existed (no `neighbors` at all) scores by its error alone.
  f = NeighbourFile();
  f.mutable_spec()->clear_neighbors();
  f.mutable_spec()->clear_reference_rows();
  f.mutable_spec()->clear_reconstruction_weight();
  f.clear_reference();
  auto old = Model::Create(f);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ((*old)->neighbors(), 0u);
}

// Gaps, by hand. Without refinement a missing value is the training mean, so a row with feature m
// missing scores like the row with the mean in its place, except that the error is the mean of
// the squared errors over the observed features only. One refinement puts the reconstruction of
// that mean-filled row in the gap and runs again.
TEST(Model, GapsAreFilledAndMeasuredOverTheObservedFeatures) {
  v1::ModelFile f = MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_TANH);
  const auto means = f.scaler().mean();
  ASSERT_EQ(means.size(), static_cast<int>(kFeatures));
  std::vector<float> row = Rows(1, 5);
  constexpr size_t kGap = 4;
  std::vector<float> gap = row, filled = row;
  gap[kGap] = NAN;
  filled[kGap] = means[kGap];
  for (uint32_t refinements : {0u, 1u, 2u}) {
    f.mutable_policy()->set_impute_refinements(refinements);
    auto model = Model::Create(f);
    ASSERT_TRUE(model.ok()) << model.status();
    auto ctx = (*model)->NewContext();
    // The value the model ends up using in the gap: the mean, then its own reconstructions.
    std::vector<float> in = filled;
    for (uint32_t i = 0; i < refinements; ++i) {
      std::vector<float> rec;
      ASSERT_TRUE((*model)->Reconstruct(*ctx, in, &rec).ok());
      in[kGap] = rec[kGap];
    }
    ScoreResult want, got;
    ASSERT_TRUE((*model)->Score(*ctx, in, {.per_feature = true}, &want).ok());
    ASSERT_TRUE((*model)->Score(*ctx, gap, {.per_feature = true}, &got).ok());
    double observed = 0;
    for (size_t j = 0; j < kFeatures; ++j) {
      if (j == kGap) {
        EXPECT_EQ(got.feature_error[j], 0.f);
      } else {
        EXPECT_NEAR(got.feature_error[j], want.feature_error[j],
                    1e-5 + 1e-6 * want.feature_error[j])
            << refinements << " " << j;
        observed += want.feature_error[j];
      }
    }
    EXPECT_NEAR(got.error[0], observed / (kFeatures - 1), 1e-6 * observed) << refinements;
    ASSERT_EQ(got.missing.size(), 1u);
    EXPECT_EQ(got.missing[0], 1u);
    EXPECT_EQ(got.skipped[0], 0);
    EXPECT_TRUE(want.missing.empty() && want.skipped.empty());
    // Reconstruct fills the gap the same way.
    std::vector<float> rec_gap, rec_in;
    ASSERT_TRUE((*model)->Reconstruct(*ctx, gap, &rec_gap).ok());
    ASSERT_TRUE((*model)->Reconstruct(*ctx, in, &rec_in).ok());
    for (size_t j = 0; j < kFeatures; ++j) {
      EXPECT_NEAR(rec_gap[j], rec_in[j], 1e-5 * std::max(1.f, std::fabs(rec_in[j])));
    }
  }
}

// Default policy: up to half the features (4 of 9) may be missing; more -> skipped (NaN score,
// never anomalous, p-value 1) without failing the batch; Encode/Reconstruct refuse such a row;
// policy 0 refuses any gap, naming it.
TEST(Model, SamplesOverTheMissingLimitAreSkippedOrRefused) {
  v1::ModelFile f = MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_TANH);
  auto model = *Model::Create(f);
  EXPECT_EQ(model->file().policy().max_missing_fraction(), 0.5f);  // resolved default
  auto ctx = model->NewContext();
  std::vector<float> x = Rows(3, 9);
  for (size_t j = 0; j < 4; ++j) x[j] = NAN;              // row 0: 4 missing, scored
  for (size_t j = 0; j < 5; ++j) x[kFeatures + j] = NAN;  // row 1: 5 missing, skipped
  ScoreResult r;
  ASSERT_TRUE(model->Score(*ctx, x, {}, &r).ok());
  EXPECT_EQ(r.missing, (std::vector<uint32_t>{4, 5, 0}));
  EXPECT_EQ(r.skipped, (std::vector<uint8_t>{0, 1, 0}));
  EXPECT_TRUE(std::isfinite(r.score[0]) && std::isfinite(r.score[2]));
  EXPECT_TRUE(std::isnan(r.score[1]) && std::isnan(r.error[1]));
  EXPECT_EQ(r.anomalous[1], 0);
  EXPECT_EQ(r.p_value[1], 1.f);
  std::vector<float> out;
  auto st = model->Reconstruct(*ctx, x, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("row 1 misses 5 of 9 features"), std::string::npos) << st;
  EXPECT_EQ(model->Encode(*ctx, x, &out).code(), absl::StatusCode::kInvalidArgument);

  f.mutable_policy()->set_max_missing_fraction(0);
  f.add_feature_names("a");
  for (size_t j = 1; j < kFeatures; ++j) f.add_feature_names("f" + std::to_string(j));
  auto strict = *Model::Create(f);
  auto sctx = strict->NewContext();
  std::vector<float> one = Rows(2, 2);
  one[kFeatures + 0] = NAN;
  st = strict->Score(*sctx, one, {}, &r);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("missing value (NaN) at row 1, feature 'a'"), std::string::npos)
      << st;
  f.mutable_policy()->set_max_missing_fraction(1);  // nothing observed would be allowed
  EXPECT_EQ(Model::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
}

// A row with gaps measures its neighbour distance over the observed features, each squared
// distance stretched by features / observed. Reference (0,0), (3,4), (6,8), 2 neighbours;
// x = (3, missing): squared distances over feature 0 are 9, 0, 9, times 2 -> 18, 0, 18; the
// nearest two: 0 and sqrt(18) -> mean 2.1213.
TEST(Model, NeighbourDistanceOfARowWithGaps) {
  v1::ModelFile f = NeighbourFile();
  auto model = Model::Create(f);
  ASSERT_TRUE(model.ok()) << model.status();
  auto ctx = (*model)->NewContext();
  ScoreResult r;
  const std::vector<float> x = {3, NAN, 0, 0};
  ASSERT_TRUE((*model)->Score(*ctx, x, {}, &r).ok());
  EXPECT_NEAR(r.distance[0], std::sqrt(18.0) / 2, 1e-4);
  EXPECT_NEAR(r.distance[1], 2.5, 1e-4);  // the complete row is unchanged
}

// The weights and reference rows a model keeps, compared value for value with its file.
void ExpectSameParameters(const v1::ModelFile& want, const v1::ModelFile& got) {
  ASSERT_EQ(got.encoder_size(), want.encoder_size());
  ASSERT_EQ(got.decoder_size(), want.decoder_size());
  auto same = [](const v1::DenseLayer& a, const v1::DenseLayer& b) {
    EXPECT_EQ(a.inputs(), b.inputs());
    EXPECT_EQ(a.outputs(), b.outputs());
    EXPECT_EQ(a.activation(), b.activation());
    EXPECT_TRUE(
        std::equal(a.weights().begin(), a.weights().end(), b.weights().begin(), b.weights().end()));
    EXPECT_TRUE(std::equal(a.bias().begin(), a.bias().end(), b.bias().begin(), b.bias().end()));
  };
  for (int i = 0; i < want.encoder_size(); ++i) same(want.encoder(i), got.encoder(i));
  for (int i = 0; i < want.decoder_size(); ++i) same(want.decoder(i), got.decoder(i));
  EXPECT_TRUE(std::equal(want.reference().begin(), want.reference().end(), got.reference().begin(),
                         got.reference().end()));
}

// A model keeps its weights only in the engine's layouts; FullFile reads them back exactly, and
// a model made from it scores bit for bit the same.
TEST(Model, FullFileGivesBackEveryWeightAndReferenceRow) {
  v1::ModelFile knn = MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_LEAKY_RELU);
  knn.mutable_spec()->set_neighbors(3);
  knn.mutable_spec()->set_reference_rows(40);
  knn.mutable_spec()->set_neighbor_groups(2);
  std::mt19937_64 rng(9);
  std::normal_distribution<float> n(0.f, 1.f);
  for (size_t i = 0; i < 40 * kFeatures; ++i) knn.add_reference(n(rng));
  knn.mutable_score_scale()->set_error_mean(0.5);
  knn.mutable_score_scale()->set_error_std(0.2);
  knn.mutable_score_scale()->set_distance_mean(2);
  knn.mutable_score_scale()->set_distance_std(0.5);
  for (const v1::ModelFile& f : {MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU),
                                 MakeFile(v1::MODEL_KIND_VARIATIONAL, v1::ACTIVATION_ELU), knn}) {
    SCOPED_TRACE(f.spec().ShortDebugString());
    auto model = *Model::Create(f);
    EXPECT_EQ(model->file().encoder_size() + model->file().decoder_size(), 0);
    EXPECT_EQ(model->file().reference_size(), 0);
    const v1::ModelFile full = model->FullFile();
    ExpectSameParameters(f, full);
    auto again = *Model::Create(full);
    const auto x = Rows(300, 4);
    ScoreResult a, b;
    ASSERT_TRUE(model->Score(*model->NewContext(), x, {.neg_elbo = true}, &a).ok());
    ASSERT_TRUE(again->Score(*again->NewContext(), x, {.neg_elbo = true}, &b).ok());
    EXPECT_EQ(a.score, b.score);
    EXPECT_EQ(a.neg_elbo, b.neg_elbo);
  }
}

// Models of one shape share one architecture (primitives, layouts) and so one context per
// thread; each still scores with its own weights. Another shape is another architecture.
TEST(Model, ModelsOfOneShapeShareTheirArchitectureAndContexts) {
  const size_t live = Architecture::Live();
  std::vector<std::shared_ptr<const Model>> models;
  for (uint64_t seed : {1, 2, 3}) {
    models.push_back(*Model::Create(MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU, seed)));
  }
  EXPECT_EQ(models[0]->architecture(), models[1]->architecture());
  EXPECT_EQ(models[0]->architecture(), models[2]->architecture());
  EXPECT_EQ(Architecture::Live(), live + 1);
  const auto x = Rows(100, 8);
  auto shared = models[0]->NewContext();
  for (const auto& m : models) {
    ScoreResult own, with_shared;
    ASSERT_TRUE(m->Score(*m->NewContext(), x, {}, &own).ok());
    ASSERT_TRUE(m->Score(*shared, x, {}, &with_shared).ok());
    EXPECT_EQ(own.error, with_shared.error);
    const auto ref = ReferenceErrors(MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU,
                                              &m == &models[0]   ? 1
                                              : &m == &models[1] ? 2
                                                                 : 3),
                                     x);
    for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(own.error[i], ref[i], 1e-4 * (1 + ref[i]));
  }
  EXPECT_NE(models[0]->file().scaler().offset(0), 0);  // the models differ, and so do their
  ScoreResult a, b;                                    // errors: each used its own weights
  ASSERT_TRUE(models[0]->Score(*shared, x, {}, &a).ok());
  ASSERT_TRUE(models[1]->Score(*shared, x, {}, &b).ok());
  EXPECT_NE(a.error, b.error);

  auto other = *Model::Create(MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_TANH));
  EXPECT_NE(other->architecture(), models[0]->architecture());
  EXPECT_EQ(Architecture::Live(), live + 2);
  ScoreResult r;
  const absl::Status wrong = other->Score(*shared, x, {}, &r);
  EXPECT_EQ(wrong.code(), absl::StatusCode::kInternal) << wrong;
  other.reset();
  EXPECT_EQ(Architecture::Live(), live + 1);
  shared.reset();
  models.clear();
  EXPECT_EQ(Architecture::Live(), live);
}

// A model holds one copy of its weights, not one per batch bucket: for a wide model (no padding
// in oneDNN's blocked layouts) its own bytes stay under twice its plain weights.
TEST(Model, AWideModelHoldsAboutItsWeights) {
  v1::ModelSpec s;
  s.add_encoder_units(1024);
  s.add_encoder_units(512);
  s.set_code_size(32);
  s.set_neighbors(0);
  auto spec = *ResolveSpec(s, 256);
  std::mt19937_64 rng(2);
  const Params p = InitParams(spec, rng);
  v1::ModelFile f;
  f.set_format_version(kModelFormatVersion);
  *f.mutable_spec() = spec;
  for (int j = 0; j < 256; ++j) {
    f.mutable_scaler()->add_offset(0);
    f.mutable_scaler()->add_scale(1);
  }
  ToModelFile(p, f);
  f.set_threshold_value(1);
  size_t weights = 0;
  for (const auto& l : p.layers) weights += (l.weights.size() + l.bias.size()) * sizeof(float);
  auto model = *Model::Create(f);
  EXPECT_GE(model->resident_bytes(), weights);
  EXPECT_LT(model->resident_bytes(), 2 * weights);
  // Its scoring contexts are bounded too: 1024 wide, it runs at most 64 rows per primitive call
  // (256 KiB per buffer), and a batch of more is split, scoring as the same rows in smaller calls.
  EXPECT_EQ(model->architecture()->key().max_batch, 64u);
  EXPECT_LE(model->architecture()->context_bytes(), 3u << 19);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<float> x(600 * 256);
  for (float& v : x) v = n(rng);
  auto ctx = model->NewContext();
  ScoreResult whole, part;
  ASSERT_TRUE(model->Score(*ctx, x, {}, &whole).ok());
  ASSERT_EQ(whole.error.size(), 600u);
  for (size_t start = 0; start < 600; start += 100) {
    ASSERT_TRUE(
        model->Score(*ctx, absl::MakeConstSpan(x).subspan(start * 256, 100 * 256), {}, &part).ok());
    for (size_t i = 0; i < 100; ++i) {
      EXPECT_NEAR(whole.error[start + i], part.error[i], 1e-4 * (1 + part.error[i]));
    }
  }
}

// Compact models (the registry's entity models) keep their weights in no more than their plain
// size, score like the default layout, and are another architecture.
TEST(Model, CompactWeightsTakeTheirPlainSizeAndScoreAlike) {
  const v1::ModelFile f = MakeFile(v1::MODEL_KIND_PLAIN, v1::ACTIVATION_RELU);
  auto fast = *Model::Create(f);
  auto compact = *Model::Create(f, ModelOptions{.compact = true});
  EXPECT_NE(fast->architecture(), compact->architecture());
  size_t plain = 0, layers = 0;
  for (const auto& side : {f.encoder(), f.decoder()}) {
    for (const auto& l : side) {
      plain += (l.weights_size() + l.bias_size()) * sizeof(float);
      ++layers;
    }
  }
  // Each layer's weights and bias start 64-byte aligned: at most 2 x 60 bytes of gaps a layer.
  EXPECT_GE(compact->weight_bytes(), plain);
  EXPECT_LE(compact->weight_bytes(), plain + 120 * layers);
  EXPECT_GT(fast->weight_bytes(), compact->weight_bytes());  // 9 features: blocked layouts pad
  const auto x = Rows(500, 3);
  ScoreResult a, b;
  ASSERT_TRUE(fast->Score(*fast->NewContext(), x, {}, &a).ok());
  ASSERT_TRUE(compact->Score(*compact->NewContext(), x, {}, &b).ok());
  for (size_t i = 0; i < a.error.size(); ++i) {
    EXPECT_NEAR(a.error[i], b.error[i], 1e-5 * (1 + a.error[i]));
  }
  ExpectSameParameters(f, compact->FullFile());
}

// A bf16 model keeps its f32 weights (edits and fine-tuning start from them): FullFile gives them
// back exactly. Its layouts hold half the bytes, so it holds 1.5x an f32 model's weights.
TEST(Model, Bf16KeepsItsF32Weights) {
  if (!Model::Bf16Supported()) GTEST_SKIP() << "this CPU has no AVX-512";
  v1::ModelFile f = MakeFile(v1::MODEL_KIND_VARIATIONAL, v1::ACTIVATION_RELU);
  f.mutable_policy()->set_precision(v1::PRECISION_BF16);
  auto compact = *Model::Create(f, ModelOptions{.compact = true});
  auto f32 = *Model::Create(MakeFile(v1::MODEL_KIND_VARIATIONAL, v1::ACTIVATION_RELU),
                            ModelOptions{.compact = true});
  EXPECT_NE(compact->architecture(), f32->architecture());
  const v1::ModelFile full = compact->FullFile();
  ExpectSameParameters(f, full);
  EXPECT_EQ(full.policy().precision(), v1::PRECISION_BF16);
  size_t weights = 0, bias = 0, layers = 0;
  for (const auto& side : {f.encoder(), f.decoder()}) {
    for (const auto& l : side) {
      weights += l.weights_size();
      bias += l.bias_size();
      ++layers;
    }
  }
  const size_t want = weights * (2 + 4) + bias * 4;
  // One more layer (the head's log sigma^2 half); each part starts 64-byte aligned.
  EXPECT_GE(compact->weight_bytes(), want);
  EXPECT_LE(compact->weight_bytes(), want + 3 * 60 * (layers + 1));
  // Encode, Reconstruct and Generate run through the bf16 layers too.
  auto ctx = compact->NewContext();
  const auto x = Rows(50, 5);
  std::vector<float> codes, out, gen;
  ASSERT_TRUE(compact->Encode(*ctx, x, &codes).ok());
  ASSERT_TRUE(compact->Reconstruct(*ctx, x, &out).ok());
  ASSERT_TRUE(compact->Generate(*ctx, 20, 1, &gen).ok());
  std::vector<float> codes32, out32;
  auto ctx32 = f32->NewContext();
  ASSERT_TRUE(f32->Encode(*ctx32, x, &codes32).ok());
  ASSERT_TRUE(f32->Reconstruct(*ctx32, x, &out32).ok());
  ASSERT_EQ(codes.size(), codes32.size());
  ASSERT_EQ(out.size(), out32.size());
  for (size_t i = 0; i < codes.size(); ++i) {
    EXPECT_NEAR(codes[i], codes32[i], 0.05 * (1 + std::abs(codes32[i])));
  }
  for (size_t i = 0; i < out.size(); ++i)
    EXPECT_NEAR(out[i], out32[i], 0.05 * (1 + std::abs(out32[i])));
  EXPECT_NE(codes, codes32);
  EXPECT_EQ(gen.size(), 20 * kFeatures);
  for (float v : gen) EXPECT_TRUE(std::isfinite(v));
  // An unknown precision is refused.
  f.mutable_policy()->set_precision(static_cast<v1::Precision>(7));
  auto bad = Model::Create(f);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("precision 7"), std::string::npos) << bad.status();
}

// Contexts point their weight memories at each model's buffer for each call. That is safe for
// models sharing a context across threads only because oneDNN (2.6, CPU) writes nothing when a
// memory's handle is set, not even zeros into a padded layout's padding: checked here, so that
// a oneDNN that starts writing fails this test rather than racing in production.
TEST(Model, PointingAMemoryAtWeightsWritesNothing) {
  const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  const dnnl::memory::desc padded({38, 64}, dnnl::memory::data_type::f32,
                                  dnnl::memory::format_tag::AB16b64a);
  ASSERT_GT(padded.get_size(), 38u * 64 * sizeof(float));
  std::vector<float> a(padded.get_size() / sizeof(float), 7.f), b = a;
  dnnl::memory m(padded, eng, DNNL_MEMORY_NONE);
  m.set_data_handle(a.data());
  m.set_data_handle(b.data());
  EXPECT_EQ(std::count(a.begin(), a.end(), 7.f), static_cast<long>(a.size()));
  EXPECT_EQ(std::count(b.begin(), b.end(), 7.f), static_cast<long>(b.size()));
}

// A variational model's negative ELBO against a plain double-precision forward pass: error of the
// mean's reconstruction + beta * KL(N(mu, sigma^2) || N(0, I)) / features, with mu and log sigma^2
// from the two halves of the code head (computed from the head's input, before the decoder runs).
TEST(Model, NegativeElboMatchesAPlainForwardPass) {
  const v1::ModelFile f = MakeFile(v1::MODEL_KIND_VARIATIONAL, v1::ACTIVATION_ELU);
  auto model = *Model::Create(f);
  const auto x = Rows(40, 12);
  ScoreResult r;
  ASSERT_TRUE(model->Score(*model->NewContext(), x, {.neg_elbo = true}, &r).ok());
  const size_t d = f.spec().num_features(), c = f.spec().code_size();
  const auto errors = ReferenceErrors(f, x);
  for (size_t row = 0; row < x.size() / d; ++row) {
    std::vector<double> h(d);
    for (size_t j = 0; j < d; ++j) {
      h[j] = (x[row * d + j] - f.scaler().offset(j)) / f.scaler().scale(j);
    }
    for (int i = 0; i < f.encoder_size(); ++i) {
      const v1::DenseLayer& l = f.encoder(i);
      std::vector<double> o(l.outputs());
      for (size_t k = 0; k < l.outputs(); ++k) {
        double sum = l.bias(k);
        for (size_t m = 0; m < l.inputs(); ++m) sum += l.weights(k * l.inputs() + m) * h[m];
        o[k] = i + 1 < f.encoder_size() ? Act(l.activation(), sum) : sum;  // the head is linear
      }
      h = o;
    }
    double kl = 0;
    for (size_t k = 0; k < c; ++k) {
      const double mu = h[k], lv = h[c + k];
      kl += 0.5 * (std::exp(lv) + mu * mu - 1 - lv);
    }
    const double want = errors[row] + f.spec().beta() * kl / static_cast<double>(d);
    EXPECT_NEAR(r.neg_elbo[row], want, 1e-4 * (1 + want)) << "row " << row;
    EXPECT_GT(kl, 1e-3);  // the test means something: the KL part is not negligible
  }
}

}  // namespace
}  // namespace aeserve::engine
