// Model specification: validation, defaults, and the layer shapes a spec implies.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "aeserve/v1/model.pb.h"

namespace aeserve::engine {

// Neighbour distance defaults (ModelSpec.neighbors, reference_rows, neighbor_groups,
// reconstruction_weight) and the largest reference: chosen on ODDS (bench/RESULTS.md, "Detection
// quality, round 3").
inline constexpr uint32_t kDefaultNeighbors = 8;
inline constexpr uint32_t kDefaultReferenceRows = 256;
inline constexpr uint32_t kDefaultNeighborGroups = 2;
inline constexpr uint32_t kMaxReferenceRows = 16384;
inline constexpr float kDefaultReconstructionWeight = 0.25f;
// ScoringPolicy defaults: a sample may miss up to half its features; missing values are filled
// with the training mean, refined kDefaultImputeRefinements times by the model's reconstruction
// (0: measured no better on ODDS with 10% missing, bench/RESULTS.md "Gaps").
inline constexpr float kDefaultMaxMissingFraction = 0.5f;
inline constexpr uint32_t kDefaultImputeRefinements = 0;
inline constexpr uint32_t kMaxImputeRefinements = 10;
// Series models: a short gap in time is closed up (measured best on NAB, bench/RESULTS.md
// "Series gaps").
inline constexpr v1::GapFill kDefaultGapFill = v1::GAP_FILL_JOIN;

// Returns the spec with every default filled in, or INVALID_ARGUMENT naming what is wrong.
// A spec that gives neither layers nor a code size gets DefaultSpec's architecture.
// `num_features` (from the data) is used when the spec leaves it 0; otherwise they must agree.
absl::StatusOr<v1::ModelSpec> ResolveSpec(const v1::ModelSpec& spec, uint32_t num_features);

// Returns the options with every default filled in, or INVALID_ARGUMENT.
absl::StatusOr<v1::TrainingOptions> ResolveTrainingOptions(const v1::TrainingOptions& options);

// Returns the threshold config with defaults filled in (99th percentile), or INVALID_ARGUMENT.
absl::StatusOr<v1::ThresholdConfig> ResolveThresholdConfig(const v1::ThresholdConfig& config);

// Fills the policy's defaults and checks its ranges (max_missing_fraction in [0, 1),
// impute_refinements <= kMaxImputeRefinements); INVALID_ARGUMENT naming the field.
absl::StatusOr<v1::ScoringPolicy> ResolvePolicy(const v1::ScoringPolicy& policy);
// The most features a sample of `num_features` may miss under a resolved policy and still be
// scored.
uint32_t MaxMissingFeatures(const v1::ScoringPolicy& resolved, uint32_t num_features);
// `update`'s set fields over `base` (unset ones keep base's value), resolved.
absl::StatusOr<v1::ScoringPolicy> MergePolicy(const v1::ScoringPolicy& base,
                                              const v1::ScoringPolicy& update);

// The architecture a user gets without tuning, from the feature count d alone: two hidden layers
// of width h1 = clamp(bit_ceil(d), 8, 256) and h2 = max(h1 / 2, 2 * code), code size
// clamp(bit_floor(d / 4), 2, 32), ReLU, linear code and output, MSE. For d = 38 that is
// 38-64-32-8-32-64-38.
v1::ModelSpec DefaultSpec(uint32_t num_features);

struct LayerShape {
  uint32_t inputs;
  uint32_t outputs;
  v1::Activation activation;
};

// The dense layers of a resolved spec: encoder (code layer last; 2 * code_size outputs for
// variational models) and decoder (output layer last).
struct LayerShapes {
  std::vector<LayerShape> encoder;
  std::vector<LayerShape> decoder;
};
LayerShapes ShapesOf(const v1::ModelSpec& resolved);

}  // namespace aeserve::engine
