// Finite-difference gradient checks of the training graph: every activation, loss, model kind,
// dropout, a padded short batch, and batches with missing values (the masked objective).
#include "engine/train_graph.h"

#include <cmath>
#include <random>

#include "engine/dnnl_util.h"
#include "engine/params.h"
#include "engine/spec.h"
#include "gtest/gtest.h"

namespace aeserve::engine {
namespace {

struct Case {
  const char* name;
  v1::ModelSpec spec;
  float dropout = 0;
  uint32_t batch = 5;
  uint32_t rows = 5;
  bool unit_inputs = false;  // inputs in [0, 1] (binary cross entropy)
  double min_pass = 1.0;     // share of coordinates that must match (kinks of ReLU / L1)
  float missing = 0;         // share of inputs set to NaN (missing); row 0 then misses all
};

v1::ModelSpec Base(v1::Activation hidden) {
  v1::ModelSpec s;
  s.add_encoder_units(6);
  s.add_encoder_units(4);
  s.set_code_size(3);
  s.set_hidden_activation(hidden);
  return s;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  cases.push_back({"tanh_mse", Base(v1::ACTIVATION_TANH)});
  cases.push_back({"sigmoid_mse", Base(v1::ACTIVATION_SIGMOID)});
  cases.push_back({"elu_mse", Base(v1::ACTIVATION_ELU)});
  cases.push_back({"relu_mse", Base(v1::ACTIVATION_RELU), 0, 5, 5, false, 0.95});
  cases.push_back({"leaky_relu_mse", Base(v1::ACTIVATION_LEAKY_RELU), 0, 5, 5, false, 0.95});
  {
    auto s = Base(v1::ACTIVATION_TANH);
    s.set_code_activation(v1::ACTIVATION_SIGMOID);
    s.set_output_activation(v1::ACTIVATION_TANH);
    cases.push_back({"sigmoid_code_tanh_output", s});
  }
  {
    auto s = Base(v1::ACTIVATION_TANH);
    s.set_loss(v1::LOSS_BCE);
    cases.push_back({"bce_sigmoid_output", s, 0, 5, 5, true});
  }
  {
    auto s = Base(v1::ACTIVATION_TANH);
    s.set_kind(v1::MODEL_KIND_DENOISING);
    s.set_noise(v1::NOISE_GAUSSIAN);
    s.set_noise_level(0.3f);
    cases.push_back({"denoising_gaussian", s});
    s.set_noise(v1::NOISE_MASKING);
    cases.push_back({"denoising_masking", s});
  }
  {
    auto s = Base(v1::ACTIVATION_TANH);
    s.set_kind(v1::MODEL_KIND_SPARSE);
    s.set_code_activation(v1::ACTIVATION_TANH);
    s.set_l1_penalty(0.1f);
    cases.push_back({"sparse_l1", s, 0, 5, 5, false, 0.95});
  }
  {
    auto s = Base(v1::ACTIVATION_TANH);
    s.set_kind(v1::MODEL_KIND_SPARSE);
    s.set_kl_sparsity_weight(0.5f);
    s.set_sparsity_target(0.2f);
    cases.push_back({"sparse_kl", s});
  }
  {
    auto s = Base(v1::ACTIVATION_TANH);
    s.set_kind(v1::MODEL_KIND_VARIATIONAL);
    s.set_beta(0.7f);
    cases.push_back({"variational", s});
  }
  {
    auto s = Base(v1::ACTIVATION_ELU);
    s.set_kind(v1::MODEL_KIND_VARIATIONAL);
    cases.push_back({"variational_padded_batch", s, 0, 8, 5});
  }
  cases.push_back({"dropout", Base(v1::ACTIVATION_TANH), 0.3f});
  cases.push_back({"padded_batch", Base(v1::ACTIVATION_SIGMOID), 0, 8, 3});
  cases.push_back({"gaps_mse", Base(v1::ACTIVATION_TANH), 0, 6, 5, false, 1.0, 0.3f});
  {
    auto s = Base(v1::ACTIVATION_TANH);
    s.set_loss(v1::LOSS_BCE);
    cases.push_back({"gaps_bce", s, 0, 5, 5, true, 1.0, 0.3f});
    s = Base(v1::ACTIVATION_ELU);
    s.set_kind(v1::MODEL_KIND_VARIATIONAL);
    cases.push_back({"gaps_variational_dropout", s, 0.2f, 5, 5, false, 1.0, 0.3f});
  }
  {
    v1::ModelSpec s;  // no hidden layers: a single code layer
    s.set_code_size(2);
    s.set_code_activation(v1::ACTIVATION_TANH);
    cases.push_back({"shallow", s});
  }
  return cases;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class GradientCheck : public ::testing::TestWithParam<Case> {};

TEST_P(GradientCheck, MatchesCentralDifferences) {
  const Case& c = GetParam();
  ScopedThreads one_thread(1);  // tiny layers; more threads only contend under ctest -j
  constexpr uint32_t kFeatures = 7;
  auto spec = ResolveSpec(c.spec, kFeatures);
  ASSERT_TRUE(spec.ok()) << spec.status();
  std::mt19937_64 init(42);
  Params params = InitParams(*spec, init);
  std::normal_distribution<float> n01(0.f, 0.3f);
  for (auto& l : params.layers) {
    for (float& b : l.bias) b = n01(init);  // non-zero biases so their gradients are exercised
  }
  std::vector<float> x(size_t{c.rows} * kFeatures);
  std::uniform_real_distribution<float> u01(0.05f, 0.95f);
  for (float& v : x) v = c.unit_inputs ? u01(init) : 1.5f * n01(init) / 0.3f * 0.5f;
  std::vector<float> fill(kFeatures);
  for (float& v : fill) v = c.unit_inputs ? u01(init) : n01(init);
  if (c.missing > 0) {
    std::bernoulli_distribution gap(c.missing);
    for (float& v : x) {
      if (gap(init)) v = NAN;
    }
    for (uint32_t j = 0; j < kFeatures; ++j) x[j] = NAN;  // a row with nothing observed
  }

  auto graph = TrainGraph::Create(*spec, c.dropout, c.batch, &params);
  ASSERT_TRUE(graph.ok()) << graph.status();
  (*graph)->set_fill(fill);
  constexpr uint64_t kSeed = 7;
  auto objective = [&]() {
    std::mt19937_64 rng(kSeed);  // same noise, dropout masks and samples in every evaluation
    auto loss = (*graph)->Run(x.data(), c.rows, true, &rng, false);
    EXPECT_TRUE(loss.ok());
    return loss->total;
  };
  std::mt19937_64 rng(kSeed);
  auto loss = (*graph)->Run(x.data(), c.rows, true, &rng, true);
  ASSERT_TRUE(loss.ok()) << loss.status();
  ASSERT_TRUE(std::isfinite(loss->total));
  if (spec->kind() == v1::MODEL_KIND_SPARSE || spec->kind() == v1::MODEL_KIND_VARIATIONAL) {
    EXPECT_GT(loss->penalty, 0) << "the penalty term must be part of the objective";
  }

  // Copy the analytic gradients before the finite differences overwrite nothing (backward=false),
  // then compare every parameter.
  size_t checked = 0, passed = 0;
  double worst = 0;
  for (size_t l = 0; l < params.layers.size(); ++l) {
    const std::vector<float> gw = (*graph)->weight_grad(l), gb = (*graph)->bias_grad(l);
    for (int which = 0; which < 2; ++which) {
      std::vector<float>& p = which == 0 ? params.layers[l].weights : params.layers[l].bias;
      const std::vector<float>& g = which == 0 ? gw : gb;
      for (size_t i = 0; i < p.size(); ++i) {
        constexpr float kH = 2e-3f;
        const float saved = p[i];
        p[i] = saved + kH;
        const double up = objective();
        p[i] = saved - kH;
        const double down = objective();
        p[i] = saved;
        const double numeric = (up - down) / (2.0 * kH);
        const double err = std::abs(numeric - g[i]);
        const double tol = 2e-4 + 2e-2 * std::max(std::abs(numeric), std::abs(double{g[i]}));
        ++checked;
        if (err <= tol) ++passed;
        worst = std::max(worst, err);
        if (c.min_pass >= 1.0) {
          EXPECT_LE(err, tol) << c.name << " layer " << l << (which ? " bias " : " weight ") << i
                              << ": analytic " << g[i] << " numeric " << numeric;
        }
      }
    }
  }
  EXPECT_GE(static_cast<double>(passed) / checked, c.min_pass)
      << c.name << ": " << passed << "/" << checked << " coordinates match, worst " << worst;
}

INSTANTIATE_TEST_SUITE_P(AllKinds, GradientCheck, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// The masked objective by hand: a single linear layer with known weights, one row, one missing
// feature. Output y = W x_in + b where x_in has the fill value in the gap; the reconstruction term
// is the mean squared error over the observed features only.
TEST(TrainGraph, MaskedObjectiveKnownAnswer) {
  v1::ModelSpec s;
  s.set_code_size(2);
  s.set_code_activation(v1::ACTIVATION_LINEAR);
  auto spec = ResolveSpec(s, 2);
  ASSERT_TRUE(spec.ok()) << spec.status();
  std::mt19937_64 rng(1);
  Params params = InitParams(*spec, rng);
  ASSERT_EQ(params.layers.size(), 2u);  // code layer 2->2, output layer 2->2
  // Encoder: identity. Decoder: y0 = 2 * c0 + 1, y1 = c1 - 1 (row-major [out][in]).
  params.layers[0].weights = {1, 0, 0, 1};
  params.layers[0].bias = {0, 0};
  params.layers[1].weights = {2, 0, 0, 1};
  params.layers[1].bias = {1, -1};
  auto graph = TrainGraph::Create(*spec, 0, 1, &params);
  ASSERT_TRUE(graph.ok()) << graph.status();
  (*graph)->set_fill({0.5f, 3.f});
  // x = (0.25, missing): input (0.25, 3) -> y = (1.5, 2); observed error (1.5 - 0.25)^2 = 1.5625.
  const float x[2] = {0.25f, NAN};
  auto loss = (*graph)->Run(x, 1, false, nullptr, false);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_NEAR(loss->reconstruction, 1.5625, 1e-6);
  // Nothing missing: (0.25, 2) -> y = (1.5, 1); mean of 1.5625 and 1 = 1.28125.
  const float full[2] = {0.25f, 2.f};
  loss = (*graph)->Run(full, 1, false, nullptr, false);
  ASSERT_TRUE(loss.ok());
  EXPECT_NEAR(loss->reconstruction, 1.28125, 1e-6);
}

TEST(TrainGraph, RejectsBadRowCounts) {
  auto spec = ResolveSpec(Base(v1::ACTIVATION_TANH), 4);
  ASSERT_TRUE(spec.ok());
  std::mt19937_64 rng(1);
  Params params = InitParams(*spec, rng);
  auto graph = TrainGraph::Create(*spec, 0, 4, &params);
  ASSERT_TRUE(graph.ok());
  std::vector<float> x(20, 0.f);
  EXPECT_EQ((*graph)->Run(x.data(), 5, true, &rng, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*graph)->Run(x.data(), 0, true, &rng, true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace aeserve::engine
