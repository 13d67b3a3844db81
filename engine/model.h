// A loaded, immutable autoencoder that scores, encodes, reconstructs and generates.
// A model's anomaly score is its reconstruction error, or, for models with neighbours
// (ModelSpec.neighbors), the reconstruction error and the mean distance to the nearest of the
// training rows kept in the file, put on one scale (ScoreScale, see AnomalyScore).
// The oneDNN primitives (for power-of-two batch sizes up to max_batch) belong to the model's
// Architecture (architecture.h), shared by every model of the same shape; a Model holds its own
// weights only, reordered once into the layouts those primitives read (one copy per distinct
// layout), and drops the plain copies from its file. Everything is built in Create, never on the
// request path. One Model serves many threads: each thread brings its own ScoringContext, which
// serves every model of the architecture.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "aeserve/v1/model.pb.h"
#include "engine/architecture.h"
#include "engine/params.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace aeserve::engine {

struct ModelOptions {
  // oneDNN threads per scoring call. 1 is right when callers run in parallel (a server).
  int threads = 1;
  // Largest batch one primitive runs; bigger calls are split. A power of two. Wide models run
  // fewer (a context's buffers are bounded; model.cc, kContextFloats).
  uint32_t max_batch = 4096;
  // Scoring contexts made when a new architecture is compiled: one per thread that will score
  // (a server's workers), so that the first call of each finds its context ready.
  size_t contexts = 1;
  // Weights in layouts that take no more than the weights themselves: where oneDNN's preferred
  // blocked layout would pad a layer (a dimension not a multiple of 16), the plain one instead.
  // For fleets of small models (per-entity models): 38-feature default models take ~13% less
  // memory and score up to ~20% slower at small batches (bench/RESULTS.md, "Fleet").
  bool compact = false;
  // Score in bfloat16 (v1::PRECISION_BF16) when the file's ScoringPolicy leaves the precision
  // unset. A version whose policy names a precision scores in it whatever this says.
  bool bf16 = false;
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

// The anomaly score of a model with neighbours: w * (error - error_mean) / error_std +
// (distance - distance_mean) / distance_std.
inline float AnomalyScore(float error, float distance, float weight, const v1::ScoreScale& s) {
  return static_cast<float>(weight * (error - s.error_mean()) / s.error_std() +
                            (distance - s.distance_mean()) / s.distance_std());
}

class Model {
 public:
  // Where one layer's values are in the model's buffer: its weights in each of the layouts its
  // primitives read, and its bias (offsets in floats).
  struct Weights {
    std::vector<size_t> layouts;
    size_t bias = 0;
    std::optional<size_t> plain;  // bf16 layers: the f32 weights too, plain (FullFile reads them)
  };

  // Builds the inference plans. Checks every shape of the file; errors are INVALID_ARGUMENT.
  static absl::StatusOr<std::shared_ptr<const Model>> Create(v1::ModelFile file,
                                                             const ModelOptions& options = {});
  ~Model();

  // Per-thread buffers, stream and scratchpad for this model's architecture (a spare one made
  // with the architecture when there is one); use one context from one thread at a time.
  std::unique_ptr<ScoringContext> NewContext() const;
  const std::shared_ptr<const Architecture>& architecture() const { return arch_; }

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

  // The model's file without its layers' weights and reference rows (the engine holds those in
  // its own layouts); FullFile() puts them back.
  const v1::ModelFile& file() const { return file_; }
  // The complete file, weights and reference rows read back from the engine's copies: equal,
  // value for value, to the file the model was created from (after defaults were resolved).
  v1::ModelFile FullFile() const;
  // Bytes this model holds on its own: weights, reference rows, its file (not the architecture's
  // primitives or contexts, which models of the same architecture share).
  size_t resident_bytes() const;
  // The weights' share of it (every layout of every layer, and the biases).
  size_t weight_bytes() const { return params_size_ * sizeof(float); }
  const v1::ModelSpec& spec() const { return file_.spec(); }
  uint32_t num_features() const { return file_.spec().num_features(); }
  uint32_t code_size() const { return file_.spec().code_size(); }
  double threshold() const { return file_.threshold_value(); }
  uint32_t neighbors() const { return neighbors_; }
  // The most features a sample may miss and still be scored (the file's ScoringPolicy).
  uint32_t max_missing() const { return max_missing_; }
  const ModelOptions& options() const { return options_; }
  // Multiply-adds to score one sample once (every layer, the neighbour distances): what a
  // caller weighs a request by before deciding where to run it.
  uint64_t madds_per_sample() const { return madds_per_sample_; }
  // Scores in bfloat16 (the file's policy or the options asked for it, and the CPU has AVX-512).
  bool bf16() const { return arch_->key().bf16; }
  // Whether this CPU runs bf16 layers (AVX-512; oneDNN 2.6 has no bf16 inner product below it).
  static bool Bf16Supported();

 private:
  friend class ScoringContext;
  enum class Pass { kEncode, kFull, kDecode };

  Model(v1::ModelFile file, const ModelOptions& options);
  // Gets the architecture and reorders the weights (and reference rows) into its layouts.
  void Build(const Params& params);
  void Fill(const Architecture::Layer& layer, const Weights& w, const float* weights,
            const float* bias);
  // A layer's weights back in plain [out][in] layout.
  std::vector<float> PlainWeights(const Architecture::Layer& layer, const Weights& w) const;
  // Counts missing values per row into `missing` (left empty when there are none).
  absl::Status CheckInput(absl::Span<const float> x, size_t* rows,
                          std::vector<uint32_t>* missing) const;
  // INTERNAL unless `ctx` was made for this model's architecture.
  absl::Status CheckContext(const ScoringContext& ctx) const;
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
  // Mean distance from each of the first `take` rows of ctx.in_ to its nearest reference rows.
  absl::Status Distances(ScoringContext& ctx, size_t take, float* out) const;

  v1::ModelFile file_;  // without weights and reference rows
  ModelOptions options_;
  std::shared_ptr<const Architecture> arch_;
  // Buffers of 64 KiB or more are mapped pages of their own: a model unloaded from a fleet gives
  // its memory back to the system at once, instead of leaving a hole in the heap.
  struct Free {
    size_t mapped;  // bytes mapped, or 0 for a heap buffer
    void operator()(float* p) const;
  };
  static std::unique_ptr<float[], Free> Allocate(size_t floats);
  std::unique_ptr<float[], Free> params_;  // every weight and bias of the model
  size_t params_size_ = 0;                 // floats
  std::vector<Weights> weights_;           // per layer of the architecture
  Weights logvar_weights_;                 // variational models: the log sigma^2 half of the head
  Weights neighbour_weights_;              // models with neighbours: the reference rows, transposed
  std::vector<float> offset_, inv_scale_, scale_;
  std::vector<float> fill_;                     // a missing value, scaled (ScaledFill)
  uint32_t max_missing_ = 0, refinements_ = 0;  // from the file's ScoringPolicy
  size_t num_encoder_ = 0;
  // Neighbours: the reference rows are the weights of one inner product per bucket of up to
  // kNeighbourBatch rows (bias -|r|^2 / 2, so |x - r|^2 = |x|^2 - 2 * output).
  uint32_t neighbors_ = 0, reference_rows_ = 0, groups_ = 1;
  bool scaled_ = false;  // the file has a ScoreScale: score = AnomalyScore(error, distance)
  uint64_t madds_per_sample_ = 0;
};

}  // namespace aeserve::engine
