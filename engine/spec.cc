// Model specification: validation, defaults, and the layer shapes a spec implies.
#include "engine/spec.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/window.h"

namespace aeserve::engine {
namespace {

constexpr uint32_t kMaxUnits = 1 << 16;
constexpr uint32_t kMaxLayers = 16;

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("model spec: ", what));
}

bool ValidActivation(v1::Activation a) {
  return a >= v1::ACTIVATION_LINEAR && a <= v1::ACTIVATION_LEAKY_RELU;
}

}  // namespace

absl::StatusOr<v1::ModelSpec> ResolveSpec(const v1::ModelSpec& spec, uint32_t num_features) {
  v1::ModelSpec s = spec;
  if (s.kind() == v1::MODEL_KIND_UNSPECIFIED) s.set_kind(v1::MODEL_KIND_PLAIN);
  if (!v1::ModelKind_IsValid(s.kind())) return Invalid("unknown model kind");
  if (s.num_features() == 0) s.set_num_features(num_features);
  if (num_features != 0 && s.num_features() != num_features) {
    return Invalid(absl::StrCat("num_features is ", s.num_features(), " but the data has ",
                                num_features, " features"));
  }
  if (s.num_features() == 0 || s.num_features() > kMaxUnits) {
    return Invalid(absl::StrCat("num_features must be in [1, ", kMaxUnits, "]"));
  }
  if (auto st = ResolveWindow(s.mutable_window()); !st.ok()) return st;
  if (IsSeries(s) && s.window().columns() != 0 &&
      WindowInputs(s.window(), s.window().columns()) != s.num_features()) {
    return Invalid(absl::StrCat("num_features ", s.num_features(), " does not match a window of ",
                                s.window().length(), " x ", s.window().columns(), " columns and ",
                                s.window().time_features_size(), " time features"));
  }
  if (s.code_size() == 0 && s.encoder_units_size() == 0 && s.decoder_units_size() == 0) {
    // Nothing about the architecture given: the default for this feature count.
    const v1::ModelSpec d = DefaultSpec(s.num_features());
    *s.mutable_encoder_units() = d.encoder_units();
    s.set_code_size(d.code_size());
  }
  if (s.code_size() == 0 || s.code_size() > kMaxUnits) {
    return Invalid(absl::StrCat("code_size must be in [1, ", kMaxUnits, "]"));
  }
  if (s.encoder_units_size() > static_cast<int>(kMaxLayers) ||
      s.decoder_units_size() > static_cast<int>(kMaxLayers)) {
    return Invalid(absl::StrCat("at most ", kMaxLayers, " hidden layers per side"));
  }
  for (uint32_t u : s.encoder_units()) {
    if (u == 0 || u > kMaxUnits) return Invalid("encoder_units must be in [1, 65536]");
  }
  for (uint32_t u : s.decoder_units()) {
    if (u == 0 || u > kMaxUnits) return Invalid("decoder_units must be in [1, 65536]");
  }
  if (s.decoder_units_size() == 0) {
    for (int i = s.encoder_units_size() - 1; i >= 0; --i) s.add_decoder_units(s.encoder_units(i));
  }

  if (s.loss() == v1::LOSS_UNSPECIFIED) s.set_loss(v1::LOSS_MSE);
  if (!v1::Loss_IsValid(s.loss())) return Invalid("unknown loss");
  if (s.hidden_activation() == v1::ACTIVATION_UNSPECIFIED) {
    s.set_hidden_activation(v1::ACTIVATION_RELU);
  }
  if (s.output_activation() == v1::ACTIVATION_UNSPECIFIED) {
    s.set_output_activation(s.loss() == v1::LOSS_BCE ? v1::ACTIVATION_SIGMOID
                                                     : v1::ACTIVATION_LINEAR);
  }
  const bool kl_sparse = s.kind() == v1::MODEL_KIND_SPARSE && s.kl_sparsity_weight() > 0;
  if (s.code_activation() == v1::ACTIVATION_UNSPECIFIED) {
    s.set_code_activation(kl_sparse ? v1::ACTIVATION_SIGMOID : v1::ACTIVATION_LINEAR);
  }
  if (!ValidActivation(s.hidden_activation()) || !ValidActivation(s.code_activation()) ||
      !ValidActivation(s.output_activation())) {
    return Invalid("unknown activation");
  }
  if (s.loss() == v1::LOSS_BCE && s.output_activation() != v1::ACTIVATION_SIGMOID) {
    return Invalid("binary cross entropy needs a sigmoid output activation");
  }
  if (s.leaky_relu_slope() == 0) s.set_leaky_relu_slope(0.01f);
  if (!std::isfinite(s.leaky_relu_slope()) || s.leaky_relu_slope() < 0 ||
      s.leaky_relu_slope() >= 1) {
    return Invalid("leaky_relu_slope must be in [0, 1)");
  }

  // Settings of other kinds are cleared so that a stored spec says only what applies.
  if (s.kind() == v1::MODEL_KIND_DENOISING) {
    if (s.noise() == v1::NOISE_UNSPECIFIED) s.set_noise(v1::NOISE_GAUSSIAN);
    if (!v1::Noise_IsValid(s.noise())) return Invalid("unknown noise");
    if (s.noise_level() == 0) s.set_noise_level(s.noise() == v1::NOISE_MASKING ? 0.2f : 0.1f);
    if (!std::isfinite(s.noise_level()) || s.noise_level() < 0) {
      return Invalid("noise_level must be >= 0");
    }
    if (s.noise() == v1::NOISE_MASKING && s.noise_level() >= 1) {
      return Invalid("masking noise_level is a probability in [0, 1)");
    }
  } else {
    s.clear_noise();
    s.clear_noise_level();
  }
  if (s.kind() == v1::MODEL_KIND_SPARSE) {
    if (!std::isfinite(s.l1_penalty()) || s.l1_penalty() < 0 ||
        !std::isfinite(s.kl_sparsity_weight()) || s.kl_sparsity_weight() < 0) {
      return Invalid("sparsity penalties must be >= 0");
    }
    if (s.l1_penalty() == 0 && s.kl_sparsity_weight() == 0) s.set_l1_penalty(1e-3f);
    if (s.sparsity_target() == 0) s.set_sparsity_target(0.05f);
    if (!(s.sparsity_target() > 0 && s.sparsity_target() < 1)) {
      return Invalid("sparsity_target must be in (0, 1)");
    }
    if (kl_sparse && s.code_activation() != v1::ACTIVATION_SIGMOID) {
      return Invalid("KL sparsity needs a sigmoid code activation (activations in (0, 1))");
    }
  } else {
    s.clear_l1_penalty();
    s.clear_kl_sparsity_weight();
    s.clear_sparsity_target();
  }
  if (s.kind() == v1::MODEL_KIND_VARIATIONAL) {
    if (s.beta() == 0) s.set_beta(1.0f);
    if (!std::isfinite(s.beta()) || s.beta() < 0) return Invalid("beta must be >= 0");
    s.set_code_activation(v1::ACTIVATION_LINEAR);
  } else {
    s.clear_beta();
  }

  // Series models score by the reconstruction error alone unless asked: their samples are
  // overlapping windows of one series, which a few hundred reference windows cover poorly (NAB
  // 61.4 without neighbours against 57.8 with them; bench/RESULTS.md, "Detection quality, round
  // 3").
  if (!s.has_neighbors()) s.set_neighbors(IsSeries(s) ? 0 : kDefaultNeighbors);
  if (s.neighbors() == 0) {
    s.clear_reference_rows();
    s.clear_reconstruction_weight();
    s.clear_neighbor_groups();
  } else {
    if (s.reference_rows() == 0) s.set_reference_rows(kDefaultReferenceRows);
    if (s.reference_rows() > kMaxReferenceRows) {
      return Invalid(absl::StrCat("reference_rows must be at most ", kMaxReferenceRows));
    }
    if (!s.has_neighbor_groups()) {
      s.set_neighbor_groups(
          std::clamp(s.reference_rows() / s.neighbors(), 1u, kDefaultNeighborGroups));
    }
    if (s.neighbor_groups() == 0) return Invalid("neighbor_groups must be > 0");
    const uint32_t group_rows = s.reference_rows() / s.neighbor_groups();
    if (s.neighbors() > group_rows) {
      return Invalid(absl::StrCat(
          "neighbors (", s.neighbors(), ") must be at most the rows of a group: reference_rows (",
          s.reference_rows(), ") / neighbor_groups (", s.neighbor_groups(), ")"));
    }
    if (!s.has_reconstruction_weight()) s.set_reconstruction_weight(kDefaultReconstructionWeight);
    if (!std::isfinite(s.reconstruction_weight()) || s.reconstruction_weight() < 0) {
      return Invalid("reconstruction_weight must be >= 0");
    }
  }
  return s;
}

absl::StatusOr<v1::TrainingOptions> ResolveTrainingOptions(const v1::TrainingOptions& options) {
  v1::TrainingOptions o = options;
  auto invalid = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("training options: ", what));
  };
  if (o.epochs() == 0) o.set_epochs(50);
  if (o.epochs() > 100000) return invalid("epochs must be <= 100000");
  if (o.batch_size() == 0) o.set_batch_size(64);
  if (o.batch_size() > 65536) return invalid("batch_size must be <= 65536");
  if (o.learning_rate() == 0) o.set_learning_rate(1e-3f);
  if (!std::isfinite(o.learning_rate()) || o.learning_rate() < 0 || o.learning_rate() > 10) {
    return invalid("learning_rate must be in (0, 10]");
  }
  if (!std::isfinite(o.weight_decay()) || o.weight_decay() < 0 || o.weight_decay() >= 1) {
    return invalid("weight_decay must be in [0, 1)");
  }
  if (!o.has_dropout()) o.set_dropout(0.2f);
  if (!std::isfinite(o.dropout()) || o.dropout() < 0 || o.dropout() >= 1) {
    return invalid("dropout must be in [0, 1)");
  }
  if (!o.has_validation_split()) o.set_validation_split(0.1f);
  if (o.hold_out() == v1::HOLD_OUT_UNSPECIFIED) o.set_hold_out(v1::HOLD_OUT_RANDOM);
  if (!v1::HoldOut_IsValid(o.hold_out())) return invalid("unknown hold_out");
  if (!std::isfinite(o.validation_split()) || o.validation_split() < 0 ||
      o.validation_split() >= 1) {
    return invalid("validation_split must be in [0, 1)");
  }
  if (!std::isfinite(o.min_delta()) || o.min_delta() < 0) return invalid("min_delta must be >= 0");
  if (o.seed() == 0) o.set_seed(1);
  if (o.scaling() == v1::SCALING_UNSPECIFIED) o.set_scaling(v1::SCALING_STANDARD);
  if (!v1::Scaling_IsValid(o.scaling())) return invalid("unknown scaling");
  if (o.threads() == 0) o.set_threads(1);
  if (o.threads() > 256) return invalid("threads must be <= 256");
  if (o.max_calibration_samples() == 0) o.set_max_calibration_samples(100000);
  if (o.adam_beta1() == 0) o.set_adam_beta1(0.9f);
  if (o.adam_beta2() == 0) o.set_adam_beta2(0.999f);
  if (o.adam_epsilon() == 0) o.set_adam_epsilon(1e-8f);
  if (!(o.adam_beta1() > 0 && o.adam_beta1() < 1) || !(o.adam_beta2() > 0 && o.adam_beta2() < 1) ||
      !(o.adam_epsilon() > 0)) {
    return invalid("Adam betas must be in (0, 1) and epsilon > 0");
  }
  return o;
}

absl::StatusOr<v1::ThresholdConfig> ResolveThresholdConfig(const v1::ThresholdConfig& config) {
  v1::ThresholdConfig c = config;
  if (c.method() == v1::THRESHOLD_METHOD_UNSPECIFIED) {
    c.set_method(v1::THRESHOLD_PERCENTILE);
    if (c.value() == 0) c.set_value(99);
  }
  const double v = c.value();
  if (!std::isfinite(v)) return absl::InvalidArgumentError("threshold: value must be finite");
  switch (c.method()) {
    case v1::THRESHOLD_PERCENTILE:
      if (!(v > 0 && v <= 100)) {
        return absl::InvalidArgumentError("threshold: percentile must be in (0, 100]");
      }
      break;
    case v1::THRESHOLD_MEAN_STD:
    case v1::THRESHOLD_MEDIAN_MAD:
      if (v < 0) return absl::InvalidArgumentError("threshold: k must be >= 0");
      break;
    case v1::THRESHOLD_TARGET_FPR:
      if (!(v >= 0 && v < 1)) {
        return absl::InvalidArgumentError(
            "threshold: target false-positive rate must be in [0, 1)");
      }
      break;
    case v1::THRESHOLD_FIXED:
      if (v < 0) return absl::InvalidArgumentError("threshold: fixed value must be >= 0");
      break;
    default:
      return absl::InvalidArgumentError("threshold: unknown method");
  }
  return c;
}

v1::ModelSpec DefaultSpec(uint32_t d) {
  const uint32_t h1 = std::clamp<uint32_t>(std::bit_ceil(std::max<uint32_t>(d, 1)), 8, 256);
  const uint32_t code = std::clamp<uint32_t>(std::bit_floor(std::max<uint32_t>(d / 4, 1)), 2, 32);
  v1::ModelSpec s;
  s.set_kind(v1::MODEL_KIND_PLAIN);
  s.set_num_features(d);
  s.add_encoder_units(h1);
  s.add_encoder_units(std::max(h1 / 2, 2 * code));
  s.set_code_size(code);
  s.set_hidden_activation(v1::ACTIVATION_RELU);
  return s;
}

LayerShapes ShapesOf(const v1::ModelSpec& s) {
  LayerShapes shapes;
  uint32_t width = s.num_features();
  for (uint32_t u : s.encoder_units()) {
    shapes.encoder.push_back({width, u, s.hidden_activation()});
    width = u;
  }
  const bool vae = s.kind() == v1::MODEL_KIND_VARIATIONAL;
  shapes.encoder.push_back({width, vae ? 2 * s.code_size() : s.code_size(), s.code_activation()});
  width = s.code_size();
  for (uint32_t u : s.decoder_units()) {
    shapes.decoder.push_back({width, u, s.hidden_activation()});
    width = u;
  }
  shapes.decoder.push_back({width, s.num_features(), s.output_activation()});
  return shapes;
}

absl::StatusOr<v1::ScoringPolicy> ResolvePolicy(const v1::ScoringPolicy& policy) {
  v1::ScoringPolicy p = policy;
  if (!p.has_max_missing_fraction()) p.set_max_missing_fraction(kDefaultMaxMissingFraction);
  if (!p.has_impute_refinements()) p.set_impute_refinements(kDefaultImputeRefinements);
  if (p.gap_fill() == v1::GAP_FILL_UNSPECIFIED) p.set_gap_fill(kDefaultGapFill);
  if (!v1::GapFill_IsValid(p.gap_fill())) {
    return absl::InvalidArgumentError(
        absl::StrCat("scoring policy: unknown gap_fill ", p.gap_fill()));
  }
  if (!v1::Precision_IsValid(p.precision())) {
    return absl::InvalidArgumentError(
        absl::StrCat("scoring policy: unknown precision ", p.precision()));
  }
  const float f = p.max_missing_fraction();
  if (!(f >= 0 && f < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scoring policy: max_missing_fraction ", f,
        " must be in [0, 1) (0 = no missing values; at least one feature must be observed)"));
  }
  if (p.impute_refinements() > kMaxImputeRefinements) {
    return absl::InvalidArgumentError(absl::StrCat("scoring policy: impute_refinements ",
                                                   p.impute_refinements(), " is over ",
                                                   kMaxImputeRefinements));
  }
  return p;
}

uint32_t MaxMissingFeatures(const v1::ScoringPolicy& p, uint32_t num_features) {
  // The epsilon keeps e.g. 0.5 x 12 at 6 despite the float fraction's rounding.
  return static_cast<uint32_t>(
      std::floor(p.max_missing_fraction() * static_cast<double>(num_features) + 1e-6));
}

absl::StatusOr<v1::ScoringPolicy> MergePolicy(const v1::ScoringPolicy& base,
                                              const v1::ScoringPolicy& update) {
  v1::ScoringPolicy p = base;
  p.MergeFrom(update);  // proto3 optional fields: only the ones set in `update` are copied
  return ResolvePolicy(p);
}

}  // namespace aeserve::engine
