// A loaded, immutable autoencoder that scores, encodes, reconstructs and generates.
// A model's anomaly score is its reconstruction error, or, for models with neighbours
// (ModelSpec.neighbors), the reconstruction error and the mean distance to the nearest of the
// training rows kept in the file, put on one scale (ScoreScale, see AnomalyScore).
// Inference plans (oneDNN primitives for power-of-two batch sizes up to max_batch, weights
// reordered once into the layouts the primitives prefer) are built in Create and never on the
// request path. One Model serves many threads: each thread brings its own ScoringContext.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "aeserve/v1/model.pb.h"
#include "engine/params.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace aeserve::engine {

struct ModelOptions {
  // oneDNN threads per scoring call. 1 is right when callers run in parallel (a server).
  int threads = 1;
  // Largest batch one primitive runs; bigger calls are split. A power of two.
  uint32_t max_batch = 4096;
};

struct ScoreOptions {
  bool per_feature = false;     // fill ScoreResult::feature_error
  bool original_units = false;  // per-feature errors in squared original units, not scaled ones
  bool neg_elbo = false;        // variational models: fill ScoreResult::neg_elbo
};

struct ScoreResult {
  std::vector<float> error;          // per sample: mean squared error over features (scaled space)
  std::vector<float> distance;       // per sample: mean distance to the nearest reference rows
                                     // (models with neighbours; empty otherwise)
  std::vector<float> score;          // per sample: the anomaly score (= error without neighbours)
  std::vector<uint8_t> anomalous;    // score > threshold
  std::vector<float> p_value;        // conformal p-value against the calibration scores
  std::vector<float> feature_error;  // rows x features squared errors, when asked
  std::vector<float> neg_elbo;       // per sample, when asked and variational
  // Per sample, when any value was missing (NaN): how many features were missing, and whether
  // the sample had more than the policy allows (skipped: error, distance and score NaN, never
  // anomalous, p-value 1). Both empty when nothing was missing.
  std::vector<uint32_t> missing;
  std::vector<uint8_t> skipped;
  double threshold = 0;
};

class ScoringContext;

// The anomaly score of a model with neighbours: w * (error - error_mean) / error_std +
// (distance - distance_mean) / distance_std.
inline float AnomalyScore(float error, float distance, float weight, const v1::ScoreScale& s) {
  return static_cast<float>(weight * (error - s.error_mean()) / s.error_std() +
                            (distance - s.distance_mean()) / s.distance_std());
}

class Model {
 public:
  // Builds the inference plans. Checks every shape of the file; errors are INVALID_ARGUMENT.
  static absl::StatusOr<std::shared_ptr<const Model>> Create(v1::ModelFile file,
                                                             const ModelOptions& options = {});
  ~Model();

  // Per-thread buffers, stream and scratchpad; use one context from one thread at a time.
  std::unique_ptr<ScoringContext> NewContext() const;

  // `x` holds rows x num_features() values, row-major, in original units. Any row count >= 1.
  // NaN is a missing value (the file's ScoringPolicy): it is filled with the training mean,
  // refined by the model's reconstruction, and the error (and neighbour distance) is measured over
  // the observed features. Score answers rows over the policy's limit as skipped; Encode and
  // Reconstruct refuse them. +-Inf is INVALID_ARGUMENT.
  absl::Status Score(ScoringContext& ctx, absl::Span<const float> x, const ScoreOptions& options,
                     ScoreResult* result) const;
  // The code of each sample (mu for variational models): rows x code_size.
  absl::Status Encode(ScoringContext& ctx, absl::Span<const float> x,
                      std::vector<float>* codes) const;
  // The reconstruction of each sample in original units: rows x num_features.
  absl::Status Reconstruct(ScoringContext& ctx, absl::Span<const float> x,
                           std::vector<float>* out) const;
  // Variational models: `n` samples decoded from z ~ N(0, I), in original units.
  absl::Status Generate(ScoringContext& ctx, uint32_t n, uint64_t seed,
                        std::vector<float>* out) const;

  const v1::ModelFile& file() const { return file_; }
  const v1::ModelSpec& spec() const { return file_.spec(); }
  uint32_t num_features() const { return file_.spec().num_features(); }
  uint32_t code_size() const { return file_.spec().code_size(); }
  double threshold() const { return file_.threshold_value(); }
  uint32_t neighbors() const { return neighbors_; }
  // The most features a sample may miss and still be scored (the file's ScoringPolicy).
  uint32_t max_missing() const { return max_missing_; }
  const ModelOptions& options() const { return options_; }

 private:
  friend class ScoringContext;
  struct Layer;
  struct Plan;
  struct NeighbourPlan;
  enum class Pass { kEncode, kFull, kDecode };

  Model(v1::ModelFile file, const ModelOptions& options);
  void Build(const Params& params);
  // Counts missing values per row into `missing` (left empty when there are none).
  absl::Status CheckInput(absl::Span<const float> x, size_t* rows,
                          std::vector<uint32_t>* missing) const;
  absl::Status RefuseOverLimit(const std::vector<uint32_t>& missing) const;
  std::string FeatureName(size_t j) const;  // quoted name, or the index without names
  uint32_t ChooseBucket(size_t remaining, size_t* take) const;
  // Runs `fn(done, take, bucket)` over consecutive slices of `rows` rows, each one bucket call.
  absl::Status ForEachBucket(
      size_t rows,
      absl::FunctionRef<absl::Status(size_t done, size_t take, uint32_t bucket)> fn) const;
  // Scales rows [done, done + take) of `x` into the bucket's input, runs `pass` and fills in
  // missing values (`missing`: counts per row of the whole batch, or null).
  absl::Status RunRows(ScoringContext& ctx, absl::Span<const float> x, size_t done, size_t take,
                       uint32_t bucket, const uint32_t* missing, Pass pass, bool logvar) const;
  // The first `take` rows of the bucket's output, back in original units.
  void Unscale(const ScoringContext& ctx, size_t take, float* out) const;
  // Scales `take` rows into the bucket's input, padding with zeros; `gaps`: some values are NaN
  // (filled in with the training means), else a straight pass the compiler vectorizes.
  void ScaleInto(const float* x, size_t take, uint32_t bucket, bool gaps, float* dst) const;
  absl::Status Run(ScoringContext& ctx, uint32_t bucket, Pass pass, bool logvar) const;
  absl::Status Impute(ScoringContext& ctx, const float* x, size_t take, uint32_t bucket,
                      const uint32_t* missing, Pass pass, bool logvar) const;
  float GapDistance(ScoringContext& ctx, const float* raw, const float* xs, uint32_t missing) const;
  void BuildNeighbours();
  void MakeDense(uint32_t batch, uint32_t in, uint32_t out, v1::Activation act,
                 absl::Span<const float> w, absl::Span<const float> b,
                 dnnl::inner_product_forward* prim, dnnl::memory* wmem, dnnl::memory* bmem,
                 dnnl::memory::desc* scratch);
  // Mean distance from each of the first `take` rows of ctx.in_ to its nearest reference rows.
  absl::Status Distances(ScoringContext& ctx, size_t take, float* out) const;

  v1::ModelFile file_;
  ModelOptions options_;
  dnnl::engine engine_;
  std::vector<float> offset_, inv_scale_, scale_;
  std::vector<float> fill_;                     // a missing value, scaled (ScaledFill)
  uint32_t max_missing_ = 0, refinements_ = 0;  // from the file's ScoringPolicy
  std::vector<Layer> layers_;  // inference layers: encoder (code head last), decoder
  size_t num_encoder_ = 0;
  std::vector<Plan> plans_;  // one per bucket: 1, 2, 4, ..., max_batch
  std::vector<float> calibration_;
  // Neighbours: the reference rows are the weights of one inner product per bucket of up to
  // kNeighbourBatch rows (bias -|r|^2 / 2, so |x - r|^2 = |x|^2 - 2 * output).
  uint32_t neighbors_ = 0, reference_rows_ = 0, groups_ = 1;
  std::vector<NeighbourPlan> neighbour_plans_;
  bool scaled_ = false;  // the file has a ScoreScale: score = AnomalyScore(error, distance)
  size_t scratch_bytes_ = 0;
  uint32_t max_width_ = 0;
};

// Per-thread state of one model: a oneDNN stream, buffers for the largest bucket, the scratchpad,
// and argument maps built once per bucket.
class ScoringContext {
 public:
  ~ScoringContext();
  const Model& model() const { return model_; }

 private:
  friend class Model;
  explicit ScoringContext(const Model& model);

  const Model& model_;
  dnnl::stream stream_;
  std::vector<float> in_, latent_, logvar_, ping_, pong_, out_, dots_;
  std::vector<uint8_t> scratch_;
  struct Args;
  std::vector<std::unique_ptr<Args>> args_;            // per bucket, built on first use
  std::vector<std::unique_ptr<Args>> neighbour_args_;  // per neighbour bucket
};

}  // namespace aeserve::engine
