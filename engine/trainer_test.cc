// Training end to end: loss falls, anomalies rank above normal rows for every model kind,
// determinism, early stopping, cancellation, calibration, and bad requests.
#include "engine/trainer.h"

#include <cmath>
#include <random>
#include <set>

#include "engine/model.h"
#include "engine/synthetic_data.h"
#include "gtest/gtest.h"

namespace aeserve::engine {
namespace {

constexpr size_t kFeatures = 12;

TrainRequest Request(v1::ModelKind kind) {
  TrainRequest r;
  r.spec.set_kind(kind);
  r.spec.add_encoder_units(32);
  r.spec.add_encoder_units(16);
  r.spec.set_code_size(4);
  r.options.set_epochs(40);
  r.options.set_batch_size(64);
  r.options.set_learning_rate(3e-3f);
  r.options.set_seed(5);
  return r;
}

TrainingData Data(const std::vector<float>& v) {
  return TrainingData{v, v.size() / kFeatures, kFeatures, {}, {}};
}

std::vector<float> Errors(const v1::ModelFile& f, const std::vector<float>& x) {
  auto model = Model::Create(f);
  EXPECT_TRUE(model.ok()) << model.status();
  ScoreResult r;
  EXPECT_TRUE((*model)->Score(*(*model)->NewContext(), x, {}, &r).ok());
  return r.error;
}

struct KindCase {
  const char* name;
  v1::ModelKind kind;
  void (*tweak)(TrainRequest&);
};
void PrintTo(const KindCase& c, std::ostream* os) { *os << c.name; }

class TrainKinds : public ::testing::TestWithParam<KindCase> {};

TEST_P(TrainKinds, LossFallsAndAnomaliesRankAboveNormal) {
  const auto data = MakeSynthetic(3000, 200, kFeatures, 3, 21);
  TrainRequest req = Request(GetParam().kind);
  if (GetParam().tweak) GetParam().tweak(req);
  // Hold out the last 500 normal rows for testing.
  std::vector<float> train(data.normal.begin(), data.normal.end() - 500 * kFeatures);
  std::vector<float> held(data.normal.end() - 500 * kFeatures, data.normal.end());
  auto file = Train(req, Data(train));
  ASSERT_TRUE(file.ok()) << file.status();
  const auto& h = file->history();
  ASSERT_GE(h.epochs_size(), 2);
  // Cross entropy against non-binary targets is bounded below by their entropy, not by 0.
  const double factor = req.spec.loss() == v1::LOSS_BCE ? 0.97 : 0.5;
  EXPECT_LT(h.epochs(h.epochs_size() - 1).train_loss(), factor * h.epochs(0).train_loss());
  EXPECT_TRUE(std::isfinite(h.epochs(0).validation_loss()));
  const double auc = Auc(Errors(*file, held), Errors(*file, data.anomalies));
  EXPECT_GT(auc, 0.95) << GetParam().name;
  // Calibrated at the 99th percentile of held-out errors: few fresh normal rows are flagged.
  auto model = *Model::Create(*file);
  ScoreResult r;
  ASSERT_TRUE(model->Score(*model->NewContext(), held, {}, &r).ok());
  size_t flagged = 0;
  for (uint8_t a : r.anomalous) flagged += a;
  EXPECT_LT(flagged, 0.06 * 500) << "threshold " << file->threshold_value();
  EXPECT_GT(file->calibration_errors_size(), 200);
}

INSTANTIATE_TEST_SUITE_P(
    AllKinds, TrainKinds,
    ::testing::Values(KindCase{"plain", v1::MODEL_KIND_PLAIN, nullptr},
                      KindCase{"denoising", v1::MODEL_KIND_DENOISING,
                               [](TrainRequest& r) { r.spec.set_noise_level(0.1f); }},
                      KindCase{"denoising_masking", v1::MODEL_KIND_DENOISING,
                               [](TrainRequest& r) { r.spec.set_noise(v1::NOISE_MASKING); }},
                      KindCase{"sparse_l1", v1::MODEL_KIND_SPARSE,
                               [](TrainRequest& r) { r.spec.set_l1_penalty(1e-3f); }},
                      KindCase{"sparse_kl", v1::MODEL_KIND_SPARSE,
                               [](TrainRequest& r) {
                                 r.spec.set_kl_sparsity_weight(1e-2f);
                                 r.spec.set_code_size(8);
                               }},
                      KindCase{"variational", v1::MODEL_KIND_VARIATIONAL,
                               [](TrainRequest& r) { r.spec.set_beta(0.01f); }},
                      KindCase{"dropout_weight_decay_tanh", v1::MODEL_KIND_PLAIN,
                               [](TrainRequest& r) {
                                 r.options.set_dropout(0.1f);
                                 r.options.set_weight_decay(1e-4f);
                                 r.spec.set_hidden_activation(v1::ACTIVATION_TANH);
                               }},
                      KindCase{"bce_minmax", v1::MODEL_KIND_PLAIN,
                               [](TrainRequest& r) {
                                 r.spec.set_loss(v1::LOSS_BCE);
                                 r.options.set_scaling(v1::SCALING_MINMAX);
                                 r.options.set_learning_rate(1e-2f);
                               }}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Trainer, SameSeedSameWeightsOtherSeedOtherWeights) {
  const auto data = MakeSynthetic(600, 0, kFeatures, 3, 2);
  TrainRequest req = Request(v1::MODEL_KIND_DENOISING);
  req.options.set_epochs(3);
  req.options.set_dropout(0.1f);
  auto a = Train(req, Data(data.normal));
  auto b = Train(req, Data(data.normal));
  req.options.set_seed(6);
  auto c = Train(req, Data(data.normal));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->encoder(0).weights().at(0), b->encoder(0).weights().at(0));
  EXPECT_TRUE(std::equal(a->decoder(0).weights().begin(), a->decoder(0).weights().end(),
                         b->decoder(0).weights().begin()));
  EXPECT_EQ(a->calibration_errors_size(), b->calibration_errors_size());
  EXPECT_NE(a->encoder(0).weights().at(0), c->encoder(0).weights().at(0));
  EXPECT_EQ(a->metadata().engine_version(), AESERVE_VERSION)
      << "the project version (CMakeLists.txt)";
  EXPECT_NE(std::string(AESERVE_VERSION), "");
}

// A server scoring in bf16 calibrates in bf16 (TrainRequest::bf16): same weights, the calibration
// errors of the same rows as bf16 scores them (close to f32's, not equal); a policy naming f32
// keeps f32's calibration.
TEST(Trainer, CalibrationUsesThePrecisionTheModelWillScoreWith) {
  if (!Model::Bf16Supported()) GTEST_SKIP() << "this CPU has no AVX-512";
  const auto data = MakeSynthetic(600, 0, kFeatures, 3, 2);
  TrainRequest req = Request(v1::MODEL_KIND_PLAIN);
  req.options.set_epochs(3);
  auto f32 = Train(req, Data(data.normal));
  req.bf16 = true;
  auto bf16 = Train(req, Data(data.normal));
  req.policy.set_precision(v1::PRECISION_F32);
  auto named = Train(req, Data(data.normal));
  ASSERT_TRUE(f32.ok() && bf16.ok() && named.ok());
  EXPECT_TRUE(std::equal(f32->encoder(0).weights().begin(), f32->encoder(0).weights().end(),
                         bf16->encoder(0).weights().begin()));
  ASSERT_EQ(f32->calibration_errors_size(), bf16->calibration_errors_size());
  ASSERT_GT(f32->calibration_errors_size(), 50);
  // Scores (standardized: the default has neighbours) within 0.03 x max(1, |score|) of each other
  // stay so when both lists are sorted.
  for (int i = 0; i < f32->calibration_errors_size(); ++i) {
    EXPECT_NEAR(bf16->calibration_errors(i), f32->calibration_errors(i),
                0.03 * std::max(1.f, std::abs(f32->calibration_errors(i))));
  }
  EXPECT_FALSE(std::equal(f32->calibration_errors().begin(), f32->calibration_errors().end(),
                          bf16->calibration_errors().begin()));
  EXPECT_TRUE(std::equal(f32->calibration_errors().begin(), f32->calibration_errors().end(),
                         named->calibration_errors().begin()));
}

TEST(Trainer, EarlyStoppingKeepsTheBestEpoch) {
  // A large learning rate on little data makes the validation loss stall and bounce.
  const auto data = MakeSynthetic(300, 0, kFeatures, 3, 8);
  TrainRequest req = Request(v1::MODEL_KIND_PLAIN);
  req.options.set_epochs(500);
  req.options.set_patience(3);
  req.options.set_learning_rate(0.05f);
  req.options.set_validation_split(0.3f);
  auto f = Train(req, Data(data.normal));
  ASSERT_TRUE(f.ok()) << f.status();
  const auto& h = f->history();
  EXPECT_TRUE(h.early_stopped());
  EXPECT_LT(h.epochs_size(), 500);
  EXPECT_EQ(h.epochs_size(), static_cast<int>(h.best_epoch()) + 3);
  double best = INFINITY;
  for (const auto& e : h.epochs()) best = std::min(best, e.validation_loss());
  EXPECT_EQ(h.epochs(h.best_epoch() - 1).validation_loss(), best);
  EXPECT_EQ(h.validation_rows(), 90u);
}

TEST(Trainer, ProgressIsReportedAndCanCancel) {
  const auto data = MakeSynthetic(300, 0, kFeatures, 3, 9);
  TrainRequest req = Request(v1::MODEL_KIND_PLAIN);
  std::vector<TrainingProgress> seen;
  auto f = Train(req, Data(data.normal), [&](const TrainingProgress& p) {
    seen.push_back(p);
    return p.epoch < 2;
  });
  EXPECT_EQ(f.status().code(), absl::StatusCode::kCancelled);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].epoch, 1u);
  EXPECT_EQ(seen[0].epochs, 40u);
  EXPECT_GT(seen[0].samples_per_second, 0);
  EXPECT_GT(seen[0].train_loss, 0);
}

TEST(Trainer, FineTuningStartsFromTheBaseWeights) {
  const auto data = MakeSynthetic(1000, 0, kFeatures, 3, 10);
  TrainRequest req = Request(v1::MODEL_KIND_PLAIN);
  req.options.set_epochs(20);
  auto base = Train(req, Data(data.normal));
  ASSERT_TRUE(base.ok());
  req.options.set_epochs(1);
  auto scratch = Train(req, Data(data.normal));
  req.start_from = &*base;
  auto tuned = Train(req, Data(data.normal));
  ASSERT_TRUE(scratch.ok() && tuned.ok()) << tuned.status();
  EXPECT_LT(tuned->history().epochs(0).train_loss(),
            0.5 * scratch->history().epochs(0).train_loss());
  EXPECT_EQ(tuned->scaler().SerializeAsString(), base->scaler().SerializeAsString());
}

// The default neighbour distance keeps 2 groups of 128 reference rows, each an independent sample
// of the training rows (rows as scaled; never a held-out row), 8 neighbours, error weight 0.25; a
// training set smaller than a group keeps every training row in one group.
TEST(Trainer, ReferenceRowsAreGroupsOfTrainingRows) {
  const auto data = MakeSynthetic(1000, 10, kFeatures, 3, 4);
  TrainRequest req = Request(v1::MODEL_KIND_PLAIN);
  req.options.set_epochs(2);
  auto file = Train(req, Data(data.normal));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->spec().neighbors(), 8u);
  EXPECT_EQ(file->spec().neighbor_groups(), 2u);
  EXPECT_FLOAT_EQ(file->spec().reconstruction_weight(), 0.25f);
  ASSERT_EQ(file->reference_size(), static_cast<int>(256 * kFeatures));
  // Each reference row is a training row, scaled; within a group no row repeats.
  const v1::Scaler& sc = file->scaler();
  for (size_t g = 0; g < 2; ++g) {
    std::set<size_t> rows;
    for (size_t i = 0; i < 128; ++i) {
      const float* ref = file->reference().data() + ((g * 128) + i) * kFeatures;
      size_t found = SIZE_MAX;
      for (size_t r = 0; r < 1000 && found == SIZE_MAX; ++r) {
        bool same = true;
        for (size_t j = 0; j < kFeatures && same; ++j) {
          const float scaled = (data.normal[r * kFeatures + j] - sc.offset(j)) / sc.scale(j);
          same = std::abs(scaled - ref[j]) < 1e-4f;
        }
        if (same) found = r;
      }
      ASSERT_NE(found, SIZE_MAX) << "group " << g << " row " << i << " is no training row";
      EXPECT_TRUE(rows.insert(found).second) << "group " << g << " repeats training row " << found;
    }
  }
  // 100 rows, 90 after the hold-out: one group of all 90.
  std::vector<float> few(data.normal.begin(), data.normal.begin() + 100 * kFeatures);
  auto small = Train(req, Data(few));
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->spec().neighbor_groups(), 1u);
  EXPECT_EQ(small->reference_size(), static_cast<int>(90 * kFeatures));
}

// Training rows with gaps (10% of values missing at random, and some rows missing more than the
// policy allows): the model still learns (anomalies rank above normal rows), rows over the limit
// are left out, reference rows are complete, and scoring rows with gaps works.
TEST(Trainer, TrainsOnRowsWithGaps) {
  const auto data = MakeSynthetic(3000, 200, kFeatures, 3, 21);
  std::vector<float> train(data.normal.begin(), data.normal.end() - 500 * kFeatures);
  std::vector<float> held(data.normal.end() - 500 * kFeatures, data.normal.end());
  std::mt19937_64 rng(3);
  std::bernoulli_distribution gap(0.1);
  for (float& v : train) {
    if (gap(rng)) v = NAN;
  }
  for (size_t r = 0; r < 50; ++r) {  // 50 rows missing 8 of 12 features: over the 0.5 limit
    for (size_t j = 0; j < 8; ++j) train[r * 40 * kFeatures + j] = NAN;
  }
  TrainRequest req = Request(v1::MODEL_KIND_PLAIN);
  req.policy.set_impute_refinements(1);
  auto file = Train(req, Data(train));
  ASSERT_TRUE(file.ok()) << file.status();
  const size_t rows = train.size() / kFeatures;
  EXPECT_EQ(file->history().train_rows() + file->history().validation_rows(), rows - 50);
  EXPECT_EQ(file->policy().max_missing_fraction(), 0.5f);
  EXPECT_EQ(file->policy().impute_refinements(), 1u);
  for (float v : file->reference()) ASSERT_TRUE(std::isfinite(v));
  for (float v : file->scaler().mean()) ASSERT_TRUE(std::isfinite(v));
  EXPECT_GT(Auc(Errors(*file, held), Errors(*file, data.anomalies)), 0.95);
  // Scoring with one feature missing in every row still ranks anomalies above normal rows.
  std::vector<float> held_gap = held, anomalies_gap = data.anomalies;
  for (size_t r = 0; r < held_gap.size() / kFeatures; ++r)
    held_gap[r * kFeatures + r % kFeatures] = NAN;
  for (size_t r = 0; r < anomalies_gap.size() / kFeatures; ++r) {
    anomalies_gap[r * kFeatures + r % kFeatures] = NAN;
  }
  EXPECT_GT(Auc(Errors(*file, held_gap), Errors(*file, anomalies_gap)), 0.9);
}

TEST(Trainer, BadRequestsAreInvalidArgument) {
  auto data = MakeSynthetic(100, 0, kFeatures, 3, 11).normal;
  TrainRequest req = Request(v1::MODEL_KIND_PLAIN);
  req.options.set_epochs(1);
  data[7] = INFINITY;
  EXPECT_EQ(Train(req, Data(data)).status().code(), absl::StatusCode::kInvalidArgument);
  data[7] = NAN;  // missing: refused only when the policy allows no gaps
  TrainRequest strict = req;
  strict.policy.set_max_missing_fraction(0);
  auto st = Train(strict, Data(data)).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("row 0, feature 7"), std::string::npos) << st;
  TrainRequest bad_policy = req;
  bad_policy.policy.set_max_missing_fraction(1);
  EXPECT_EQ(Train(bad_policy, Data(data)).status().code(), absl::StatusCode::kInvalidArgument);
  for (size_t j = 0; j < kFeatures; ++j) {
    for (size_t r = 0; r < 100; ++r)
      data[r * kFeatures + j] = j == 3 ? NAN : data[r * kFeatures + j];
  }
  st = Train(req, Data(data)).status();  // a feature no row observes
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("feature 3 has no observed value"), std::string::npos) << st;
  data = MakeSynthetic(100, 0, kFeatures, 3, 11).normal;
  TrainRequest bce = req;
  bce.spec.set_loss(v1::LOSS_BCE);  // z-scored inputs are not in [0, 1]
  EXPECT_EQ(Train(bce, Data(data)).status().code(), absl::StatusCode::kInvalidArgument);
  TrainRequest no_code = req;
  no_code.spec.set_code_size(0);
  EXPECT_EQ(Train(no_code, Data(data)).status().code(), absl::StatusCode::kInvalidArgument);
  TrainRequest wrong_width = req;
  wrong_width.spec.set_num_features(5);
  EXPECT_EQ(Train(wrong_width, Data(data)).status().code(), absl::StatusCode::kInvalidArgument);
  TrainRequest bad_dropout = req;
  bad_dropout.options.set_dropout(1.0f);
  EXPECT_EQ(Train(bad_dropout, Data(data)).status().code(), absl::StatusCode::kInvalidArgument);
  TrainingData named = Data(data);
  named.feature_names = {"a", "b"};
  EXPECT_EQ(Train(req, named).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Train(req, TrainingData{}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace aeserve::engine
