// One training step's computation on oneDNN: forward, objective, and backward for a fixed batch.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "aeserve/v1/model.pb.h"
#include "engine/params.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace aeserve::engine {

// Batch means of the training objective and its parts.
struct LossParts {
  double total = 0;           // reconstruction + penalty
  double reconstruction = 0;  // mean over samples of the per-sample loss (mean over features)
  double penalty = 0;         // KL (variational), L1 / KL sparsity (sparse)
};

// Primitives are built once for `batch` rows, with plain layouts so that the optimiser updates
// weights in place; a shorter last batch is zero-padded and its padding excluded from every term.
// The objective per sample is
//   loss(x, y) averaged over features
//   + beta * KL(q(z|x) || N(0, I)) / num_features          (variational)
//   + l1_penalty * sum_k |code_k|                            (sparse)
// averaged over the batch, plus kl_sparsity_weight * sum_k KL(rho || mean code_k) (sparse).
class TrainGraph {
 public:
  // `params` must outlive the graph and keep its buffers: weights are bound by pointer.
  static absl::StatusOr<std::unique_ptr<TrainGraph>> Create(const v1::ModelSpec& resolved_spec,
                                                            float dropout, uint32_t batch,
                                                            Params* params);

  // What a missing value (NaN in `x`) is fed as, per feature (scaled); default 0.
  void set_fill(std::vector<float> fill) { fill_ = std::move(fill); }

  // Runs the first `rows` rows of `x` (scaled, row-major). NaN entries are missing: fed as the
  // fill value and left out of the reconstruction term, whose per-row mean is then over the
  // observed features (a row with none adds nothing). With `training`, noise, dropout and
  // the variational sample are drawn from `rng` (which may be null otherwise). With `backward`,
  // fills the gradients of the objective.
  absl::StatusOr<LossParts> Run(const float* x, uint32_t rows, bool training, std::mt19937_64* rng,
                                bool backward);

  const std::vector<float>& weight_grad(size_t layer) const { return layers_[layer].gw; }
  const std::vector<float>& bias_grad(size_t layer) const { return layers_[layer].gb; }
  uint32_t batch() const { return batch_; }

 private:
  struct Layer {
    LayerShape shape;
    bool nonlinear = false;
    bool dropout = false;
    std::vector<float> z, a, mask, da, dz, gw, gb;
    float* a_ptr = nullptr;   // == z for linear layers
    float* dz_ptr = nullptr;  // == da for linear layers
    dnnl::primitive fwd, elt_fwd, elt_bwd, bwd_data, bwd_weights;
    std::unordered_map<int, dnnl::memory> fwd_args, elt_fwd_args, elt_bwd_args, bwd_data_args,
        bwd_weights_args;
  };

  TrainGraph(const v1::ModelSpec& spec, float dropout, uint32_t batch, Params* params);
  void Build();
  float* InputOf(size_t l);
  float* InputDiffOf(size_t l);
  LossParts ObjectiveAndOutputGrad(uint32_t rows, bool backward);
  void CodePenaltyGrad(uint32_t rows);

  v1::ModelSpec spec_;
  float dropout_;
  uint32_t batch_;
  Params* params_;
  size_t num_encoder_;
  uint32_t code_;
  bool vae_;
  bool bce_sigmoid_output_;

  dnnl::engine engine_;
  dnnl::stream stream_;
  std::vector<uint8_t> scratch_;
  std::vector<float> target_, input_;  // clean and (possibly corrupted) inputs, batch x features
  std::vector<float> fill_;
  bool gaps_ = false;                          // the current batch has missing values
  std::vector<uint8_t> observed_;              // batch x features, when gaps_
  std::vector<float> row_weight_;              // batch: features / observed features, when gaps_
  std::vector<float> latent_, dlatent_, eps_;  // variational sample z and its gradient
  std::vector<Layer> layers_;
};

}  // namespace aeserve::engine
