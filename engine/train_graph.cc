// One training step's computation on oneDNN: forward, objective, and backward for a fixed batch.
#include "engine/train_graph.h"

#include <algorithm>
#include <cmath>

#include "engine/dnnl_util.h"

namespace aeserve::engine {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

memory::desc Matrix(uint32_t rows, uint32_t cols) {
  return memory::desc({rows, cols}, dt::f32, tag::ab);
}

}  // namespace

TrainGraph::TrainGraph(const v1::ModelSpec& spec, float dropout, uint32_t batch, Params* params)
    : spec_(spec),
      dropout_(dropout),
      batch_(batch),
      params_(params),
      num_encoder_(params->num_encoder),
      code_(spec.code_size()),
      vae_(spec.kind() == v1::MODEL_KIND_VARIATIONAL),
      bce_sigmoid_output_(spec.loss() == v1::LOSS_BCE &&
                          spec.output_activation() == v1::ACTIVATION_SIGMOID),
      engine_(dnnl::engine::kind::cpu, 0),
      stream_(engine_) {}

absl::StatusOr<std::unique_ptr<TrainGraph>> TrainGraph::Create(const v1::ModelSpec& spec,
                                                               float dropout, uint32_t batch,
                                                               Params* params) {
  if (batch == 0) return absl::InvalidArgumentError("train graph: batch must be > 0");
  std::unique_ptr<TrainGraph> g(new TrainGraph(spec, dropout, batch, params));
  absl::Status st = CatchDnnl("building the training graph", [&] { g->Build(); });
  if (!st.ok()) return st;
  return g;
}

float* TrainGraph::InputOf(size_t l) {
  if (l == 0) return input_.data();
  if (l == num_encoder_) return vae_ ? latent_.data() : layers_[l - 1].a_ptr;
  return layers_[l - 1].a_ptr;
}

float* TrainGraph::InputDiffOf(size_t l) {
  if (l == num_encoder_) return vae_ ? dlatent_.data() : layers_[l - 1].da.data();
  return layers_[l - 1].da.data();
}

void TrainGraph::Build() {
  const uint32_t d = spec_.num_features();
  target_.assign(size_t{batch_} * d, 0.f);
  input_.assign(size_t{batch_} * d, 0.f);
  observed_.assign(size_t{batch_} * d, 1);
  row_weight_.assign(batch_, 1.f);
  if (vae_) {
    latent_.assign(size_t{batch_} * code_, 0.f);
    dlatent_.assign(size_t{batch_} * code_, 0.f);
    eps_.assign(size_t{batch_} * code_, 0.f);
  }
  const size_t n = params_->layers.size();
  layers_.resize(n);
  for (size_t l = 0; l < n; ++l) {
    Layer& L = layers_[l];
    L.shape = params_->layers[l].shape;
    L.nonlinear = L.shape.activation != v1::ACTIVATION_LINEAR;
    L.dropout = dropout_ > 0 && l != num_encoder_ - 1 && l != n - 1;
    const size_t out = size_t{batch_} * L.shape.outputs;
    L.z.assign(out, 0.f);
    L.da.assign(out, 0.f);
    if (L.nonlinear) {
      L.a.assign(out, 0.f);
      L.dz.assign(out, 0.f);
    }
    if (L.dropout) L.mask.assign(out, 1.f);
    L.a_ptr = L.nonlinear ? L.a.data() : L.z.data();
    L.dz_ptr = L.nonlinear ? L.dz.data() : L.da.data();
    L.gw.assign(params_->layers[l].weights.size(), 0.f);
    L.gb.assign(params_->layers[l].bias.size(), 0.f);
  }

  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  std::vector<std::pair<std::unordered_map<int, memory>*, memory::desc>> scratch_users;
  size_t scratch_bytes = 0;
  auto use_scratch = [&](std::unordered_map<int, memory>* args, const memory::desc& md) {
    scratch_bytes = std::max(scratch_bytes, md.get_size());
    scratch_users.emplace_back(args, md);
  };

  for (size_t l = 0; l < n; ++l) {
    Layer& L = layers_[l];
    DenseParams& P = params_->layers[l];
    const uint32_t in = L.shape.inputs, out = L.shape.outputs;
    const memory::desc src_md = Matrix(batch_, in), dst_md = Matrix(batch_, out);
    const memory::desc w_md = Matrix(out, in);
    const memory::desc b_md({out}, dt::f32, tag::a);

    memory src(src_md, engine_, InputOf(l));
    memory w(w_md, engine_, P.weights.data());
    memory b(b_md, engine_, P.bias.data());
    memory z(dst_md, engine_, L.z.data());
    memory a(dst_md, engine_, L.a_ptr);
    memory da(dst_md, engine_, L.da.data());
    memory dz(dst_md, engine_, L.dz_ptr);
    memory gw(w_md, engine_, L.gw.data());
    memory gb(b_md, engine_, L.gb.data());

    dnnl::inner_product_forward::primitive_desc fwd_pd(
        dnnl::inner_product_forward::desc(dnnl::prop_kind::forward_training, src_md, w_md, b_md,
                                          dst_md),
        attr, engine_);
    L.fwd = dnnl::inner_product_forward(fwd_pd);
    L.fwd_args = {
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, z}};
    use_scratch(&L.fwd_args, fwd_pd.scratchpad_desc());

    dnnl::inner_product_backward_weights::primitive_desc bw_pd(
        dnnl::inner_product_backward_weights::desc(src_md, w_md, b_md, dst_md), attr, engine_,
        fwd_pd);
    L.bwd_weights = dnnl::inner_product_backward_weights(bw_pd);
    L.bwd_weights_args = {{DNNL_ARG_SRC, src},
                          {DNNL_ARG_DIFF_DST, dz},
                          {DNNL_ARG_DIFF_WEIGHTS, gw},
                          {DNNL_ARG_DIFF_BIAS, gb}};
    use_scratch(&L.bwd_weights_args, bw_pd.scratchpad_desc());

    if (l > 0) {
      memory dsrc(src_md, engine_, InputDiffOf(l));
      dnnl::inner_product_backward_data::primitive_desc bd_pd(
          dnnl::inner_product_backward_data::desc(src_md, w_md, dst_md), attr, engine_, fwd_pd);
      L.bwd_data = dnnl::inner_product_backward_data(bd_pd);
      L.bwd_data_args = {{DNNL_ARG_DIFF_DST, dz}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, dsrc}};
      use_scratch(&L.bwd_data_args, bd_pd.scratchpad_desc());
    }

    if (L.nonlinear) {
      const dnnl::algorithm alg = AlgorithmOf(L.shape.activation);
      const float alpha = AlphaOf(L.shape.activation, spec_.leaky_relu_slope());
      dnnl::eltwise_forward::primitive_desc ef_pd(
          dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_training, alg, dst_md, alpha, 0.f),
          attr, engine_);
      L.elt_fwd = dnnl::eltwise_forward(ef_pd);
      L.elt_fwd_args = {{DNNL_ARG_SRC, z}, {DNNL_ARG_DST, a}};
      use_scratch(&L.elt_fwd_args, ef_pd.scratchpad_desc());
      dnnl::eltwise_backward::primitive_desc eb_pd(
          dnnl::eltwise_backward::desc(alg, dst_md, dst_md, alpha, 0.f), attr, engine_, ef_pd);
      L.elt_bwd = dnnl::eltwise_backward(eb_pd);
      L.elt_bwd_args = {{DNNL_ARG_SRC, z}, {DNNL_ARG_DIFF_DST, da}, {DNNL_ARG_DIFF_SRC, dz}};
      use_scratch(&L.elt_bwd_args, eb_pd.scratchpad_desc());
    }
  }
  scratch_.assign(std::max<size_t>(scratch_bytes, 64), 0);
  for (auto& [args, md] : scratch_users) {
    args->insert({DNNL_ARG_SCRATCHPAD, memory(md, engine_, scratch_.data())});
  }
}

absl::StatusOr<LossParts> TrainGraph::Run(const float* x, uint32_t rows, bool training,
                                          std::mt19937_64* rng, bool backward) {
  if (rows == 0 || rows > batch_) {
    return absl::InvalidArgumentError("train graph: rows must be in [1, batch]");
  }
  if ((training || backward) && rng == nullptr) {
    return absl::InvalidArgumentError("train graph: training needs a random generator");
  }
  const uint32_t d = spec_.num_features();
  const size_t used = size_t{rows} * d;
  std::copy(x, x + used, target_.begin());
  std::fill(target_.begin() + used, target_.end(), 0.f);
  // Missing values (NaN): the input gets the fill value, the objective leaves them out and
  // weighs each row's observed features up to a mean over them.
  gaps_ = false;
  for (size_t i = 0; i < used && !gaps_; ++i) gaps_ = std::isnan(target_[i]);
  if (gaps_) {
    for (uint32_t r = 0; r < rows; ++r) {
      uint32_t observed = 0;
      for (uint32_t j = 0; j < d; ++j) {
        const size_t i = size_t{r} * d + j;
        observed_[i] = !std::isnan(target_[i]);
        observed += observed_[i];
        if (!observed_[i]) target_[i] = fill_.empty() ? 0.f : fill_[j];
      }
      row_weight_[r] = observed == 0 ? 0.f : static_cast<float>(d) / static_cast<float>(observed);
    }
  }
  std::copy(target_.begin(), target_.end(), input_.begin());
  if (training && spec_.kind() == v1::MODEL_KIND_DENOISING && spec_.noise_level() > 0) {
    if (spec_.noise() == v1::NOISE_MASKING) {
      std::bernoulli_distribution drop(spec_.noise_level());
      for (size_t i = 0; i < used; ++i) {
        if (drop(*rng)) input_[i] = 0.f;
      }
    } else {
      std::normal_distribution<float> noise(0.f, spec_.noise_level());
      for (size_t i = 0; i < used; ++i) input_[i] += noise(*rng);
    }
  }

  LossParts loss;
  absl::Status st = CatchDnnl("training step", [&] {
    const size_t n = layers_.size();
    for (size_t l = 0; l < n; ++l) {
      Layer& L = layers_[l];
      L.fwd.execute(stream_, L.fwd_args);
      if (L.nonlinear) L.elt_fwd.execute(stream_, L.elt_fwd_args);
      if (L.dropout && training) {
        std::bernoulli_distribution keep(1.0 - dropout_);
        const float kept = 1.f / (1.f - dropout_);
        const size_t m = size_t{rows} * L.shape.outputs;
        for (size_t i = 0; i < m; ++i) {
          L.mask[i] = keep(*rng) ? kept : 0.f;
          L.a_ptr[i] *= L.mask[i];
        }
      }
      if (l == num_encoder_ - 1 && vae_) {
        // Reparameterisation: z = mu + exp(logvar / 2) * eps; the mean in evaluation.
        std::normal_distribution<float> normal(0.f, 1.f);
        std::fill(latent_.begin(), latent_.end(), 0.f);
        for (uint32_t i = 0; i < rows; ++i) {
          const float* h = L.a_ptr + size_t{i} * 2 * code_;
          for (uint32_t k = 0; k < code_; ++k) {
            const float e = training ? normal(*rng) : 0.f;
            eps_[size_t{i} * code_ + k] = e;
            latent_[size_t{i} * code_ + k] = h[k] + std::exp(0.5f * h[code_ + k]) * e;
          }
        }
      }
    }
    loss = ObjectiveAndOutputGrad(rows, backward);
    if (!backward) return;
    for (size_t l = n; l-- > 0;) {
      Layer& L = layers_[l];
      if (l == num_encoder_ - 1) CodePenaltyGrad(rows);
      if (L.dropout && training) {
        const size_t m = size_t{rows} * L.shape.outputs;
        for (size_t i = 0; i < m; ++i) L.da[i] *= L.mask[i];
      }
      const bool skip_elt = l == n - 1 && bce_sigmoid_output_;  // gradient set on logits already
      if (L.nonlinear && !skip_elt) L.elt_bwd.execute(stream_, L.elt_bwd_args);
      L.bwd_weights.execute(stream_, L.bwd_weights_args);
      if (l > 0) L.bwd_data.execute(stream_, L.bwd_data_args);
    }
  });
  if (!st.ok()) return st;
  stream_.wait();
  return loss;
}

LossParts TrainGraph::ObjectiveAndOutputGrad(uint32_t rows, bool backward) {
  const uint32_t d = spec_.num_features();
  Layer& out = layers_.back();
  const float* y = out.a_ptr;
  const double inv_rd = 1.0 / (static_cast<double>(rows) * d);
  // For BCE with a sigmoid output the gradient is taken with respect to the logits, which is
  // exact and avoids dividing by y(1 - y).
  float* grad = bce_sigmoid_output_ ? out.dz_ptr : out.da.data();
  double recon = 0;
  const size_t used = size_t{rows} * d;
  for (size_t i = 0; i < used; ++i) {
    const double yi = y[i], xi = target_[i];
    // Weight of this entry: 1 without gaps; 0 for a missing value, features / observed otherwise.
    const double w = gaps_ ? (observed_[i] ? row_weight_[i / d] : 0.0) : 1.0;
    if (spec_.loss() == v1::LOSS_BCE) {
      const double yc = std::clamp(yi, 1e-7, 1 - 1e-7);
      recon -= w * (xi * std::log(yc) + (1 - xi) * std::log(1 - yc));
      if (backward) grad[i] = static_cast<float>(w * (yi - xi) * inv_rd);
    } else {
      recon += w * (yi - xi) * (yi - xi);
      if (backward) grad[i] = static_cast<float>(2 * w * (yi - xi) * inv_rd);
    }
  }
  if (backward) std::fill(grad + used, grad + size_t{batch_} * d, 0.f);

  LossParts loss;
  loss.reconstruction = recon * inv_rd;
  const Layer& code = layers_[num_encoder_ - 1];
  if (vae_) {
    double kl = 0;
    for (uint32_t i = 0; i < rows; ++i) {
      const float* h = code.a_ptr + size_t{i} * 2 * code_;
      for (uint32_t k = 0; k < code_; ++k) {
        const double mu = h[k], lv = h[code_ + k];
        kl += 0.5 * (std::exp(lv) + mu * mu - 1 - lv);
      }
    }
    loss.penalty += spec_.beta() * kl * inv_rd;
  }
  if (spec_.kind() == v1::MODEL_KIND_SPARSE) {
    double l1 = 0;
    std::vector<double> mean(code_, 0.0);
    for (uint32_t i = 0; i < rows; ++i) {
      for (uint32_t k = 0; k < code_; ++k) {
        const double h = code.a_ptr[size_t{i} * code_ + k];
        l1 += std::abs(h);
        mean[k] += h;
      }
    }
    loss.penalty += spec_.l1_penalty() * l1 / rows;
    if (spec_.kl_sparsity_weight() > 0) {
      const double rho = spec_.sparsity_target();
      double kl = 0;
      for (uint32_t k = 0; k < code_; ++k) {
        const double r = std::clamp(mean[k] / rows, 1e-6, 1 - 1e-6);
        kl += rho * std::log(rho / r) + (1 - rho) * std::log((1 - rho) / (1 - r));
      }
      loss.penalty += spec_.kl_sparsity_weight() * kl;
    }
  }
  loss.total = loss.reconstruction + loss.penalty;
  return loss;
}

void TrainGraph::CodePenaltyGrad(uint32_t rows) {
  Layer& code = layers_[num_encoder_ - 1];
  if (vae_) {
    const double w = spec_.beta() / (static_cast<double>(rows) * spec_.num_features());
    std::fill(code.da.begin(), code.da.end(), 0.f);
    for (uint32_t i = 0; i < rows; ++i) {
      const float* h = code.a_ptr + size_t{i} * 2 * code_;
      float* g = code.da.data() + size_t{i} * 2 * code_;
      for (uint32_t k = 0; k < code_; ++k) {
        const size_t j = size_t{i} * code_ + k;
        const double mu = h[k], lv = h[code_ + k], sd = std::exp(0.5 * lv);
        g[k] = static_cast<float>(dlatent_[j] + w * mu);
        g[code_ + k] =
            static_cast<float>(dlatent_[j] * eps_[j] * 0.5 * sd + w * 0.5 * (sd * sd - 1));
      }
    }
    return;
  }
  if (spec_.kind() != v1::MODEL_KIND_SPARSE) return;
  const double l1 = spec_.l1_penalty() / static_cast<double>(rows);
  std::vector<double> kl_grad(code_, 0.0);
  if (spec_.kl_sparsity_weight() > 0) {
    const double rho = spec_.sparsity_target();
    for (uint32_t k = 0; k < code_; ++k) {
      double m = 0;
      for (uint32_t i = 0; i < rows; ++i) m += code.a_ptr[size_t{i} * code_ + k];
      const double r = m / rows;
      if (r <= 1e-6 || r >= 1 - 1e-6) continue;  // the clamp in the objective has zero slope here
      kl_grad[k] = spec_.kl_sparsity_weight() * (-rho / r + (1 - rho) / (1 - r)) / rows;
    }
  }
  for (uint32_t i = 0; i < rows; ++i) {
    for (uint32_t k = 0; k < code_; ++k) {
      const size_t j = size_t{i} * code_ + k;
      const float h = code.a_ptr[j];
      const double sign = h > 0 ? 1.0 : (h < 0 ? -1.0 : 0.0);
      code.da[j] += static_cast<float>(l1 * sign + kl_grad[k]);
    }
  }
}

}  // namespace aeserve::engine
