// A loaded, immutable autoencoder that scores, encodes, reconstructs and generates.
#include "engine/model.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <new>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/dnnl_util.h"
#include "engine/nearest.h"
#include "engine/scaler.h"
#include "engine/spec.h"
#include "engine/status_macros.h"
#include "engine/threshold.h"
#include "engine/window.h"

namespace aeserve::engine {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {
// Rows per neighbour-distance call at most: bounds the per-context buffer to kNeighbourBatch x
// reference_rows floats whatever max_batch is.
constexpr uint32_t kNeighbourBatch = 256;
// A scoring context's buffers hold at most this many floats each (256 KiB): wide models run fewer
// rows per primitive call (bigger batches are split), so a worker's context for them stays small.
// The default 38-feature model (widest layer 64) runs 1024 rows per call, a 1024-wide one 64;
// neither scores slower than with 4x the rows per call (bench/RESULTS.md, "Fleet").
constexpr uint32_t kContextFloats = uint32_t{1} << 16;

// The largest power of two <= min(cap, kContextFloats / width), and at least 1.
uint32_t RowsPerCall(uint32_t cap, uint32_t width) {
  return std::min(cap, std::bit_floor(std::max<uint32_t>(1, kContextFloats / std::max(width, 1u))));
}
}  // namespace

Model::Model(v1::ModelFile file, const ModelOptions& options)
    : file_(std::move(file)), options_(options) {}

Model::~Model() = default;

absl::StatusOr<std::shared_ptr<const Model>> Model::Create(v1::ModelFile file,
                                                           const ModelOptions& options) {
  if (options.threads < 1 || options.max_batch == 0 || !std::has_single_bit(options.max_batch)) {
    return absl::InvalidArgumentError("model options: threads >= 1, max_batch a power of two");
  }
  // Files written before neighbours existed have no `neighbors`: reconstruction error alone.
  if (!file.spec().has_neighbors()) file.mutable_spec()->set_neighbors(0);
  // ... and files written before groups existed have one group of reference rows.
  if (file.spec().neighbors() > 0 && !file.spec().has_neighbor_groups()) {
    file.mutable_spec()->set_neighbor_groups(1);
  }
  AE_ASSIGN_OR_RETURN(v1::ModelSpec spec, ResolveSpec(file.spec(), file.spec().num_features()));
  *file.mutable_spec() = spec;
  AE_ASSIGN_OR_RETURN(Params params, FromModelFile(file));
  const uint32_t d = spec.num_features();
  const v1::Scaler& sc = file.scaler();
  if (sc.offset_size() != static_cast<int>(d) || sc.scale_size() != static_cast<int>(d)) {
    return absl::InvalidArgumentError("model: scaler size does not match num_features");
  }
  for (int i = 0; i < static_cast<int>(d); ++i) {
    if (!std::isfinite(sc.offset(i)) || !std::isfinite(sc.scale(i)) || !(sc.scale(i) > 0)) {
      return absl::InvalidArgumentError("model: scaler values must be finite, scale > 0");
    }
  }
  if (file.feature_names_size() != 0 && file.feature_names_size() != static_cast<int>(d)) {
    return absl::InvalidArgumentError("model: feature_names size does not match num_features");
  }
  if (IsSeries(spec)) {
    const v1::Window& w = spec.window();
    if (w.columns() == 0 || w.interval_ms() <= 0) {
      return absl::InvalidArgumentError(
          "model: a series model needs window.columns and interval_ms");
    }
    if (file.series_columns_size() != 0 &&
        file.series_columns_size() != static_cast<int>(w.columns())) {
      return absl::InvalidArgumentError("model: series_columns size does not match window.columns");
    }
  } else if (file.series_columns_size() != 0) {
    return absl::InvalidArgumentError("model: series_columns without a window");
  }
  if (!std::is_sorted(file.calibration_errors().begin(), file.calibration_errors().end())) {
    return absl::InvalidArgumentError("model: calibration errors must be sorted");
  }
  if (!std::isfinite(file.threshold_value())) {
    return absl::InvalidArgumentError("model: threshold must be finite");
  }
  if (sc.mean_size() != 0 && sc.mean_size() != static_cast<int>(d)) {
    return absl::InvalidArgumentError("model: scaler mean size does not match num_features");
  }
  for (float v : sc.mean()) {
    if (!std::isfinite(v)) return absl::InvalidArgumentError("model: scaler means must be finite");
  }
  // Files written before scoring policies existed get the defaults.
  AE_ASSIGN_OR_RETURN(*file.mutable_policy(), ResolvePolicy(file.policy()));
  uint32_t reference_rows = 0, groups = 1;
  if (spec.neighbors() > 0) {
    const size_t values = static_cast<size_t>(file.reference_size());
    reference_rows = static_cast<uint32_t>(values / d);
    groups = spec.neighbor_groups();
    if (reference_rows % groups != 0) {
      return absl::InvalidArgumentError(absl::StrCat("model: ", reference_rows,
                                                     " reference rows do not make ", groups,
                                                     " groups of equal size"));
    }
    if (values % d != 0 || reference_rows / groups < spec.neighbors() ||
        reference_rows > spec.reference_rows()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model: ", spec.neighbors(), " neighbours need between ", spec.neighbors(), " and ",
          spec.reference_rows(), " reference rows of ", d, " values per group (", groups,
          " groups); the file holds ", values, " values"));
    }
    for (float v : file.reference()) {
      if (!std::isfinite(v))
        return absl::InvalidArgumentError("model: reference values must be finite");
    }
    if (file.has_score_scale()) {
      const v1::ScoreScale& sc = file.score_scale();
      if (!std::isfinite(sc.error_mean()) || !std::isfinite(sc.distance_mean()) ||
          !(sc.error_std() > 0) || !(sc.distance_std() > 0) || !std::isfinite(sc.error_std()) ||
          !std::isfinite(sc.distance_std())) {
        return absl::InvalidArgumentError("model: score scale needs finite means and stds > 0");
      }
    }
  } else if (file.reference_size() != 0 || file.has_score_scale()) {
    return absl::InvalidArgumentError("model: reference rows without neighbours");
  }
  std::shared_ptr<Model> m(new Model(std::move(file), options));
  m->neighbors_ = m->file_.spec().neighbors();
  m->reference_rows_ = reference_rows;
  m->groups_ = groups;
  m->scaled_ = m->neighbors_ > 0 && m->file_.has_score_scale();
  m->fill_ = ScaledFill(sc);
  m->max_missing_ = MaxMissingFeatures(m->file_.policy(), d);
  m->refinements_ = m->file_.policy().impute_refinements();
  for (uint32_t i = 0; i < d; ++i) {
    m->offset_.push_back(sc.offset(i));
    m->scale_.push_back(sc.scale(i));
    m->inv_scale_.push_back(1.0f / sc.scale(i));
  }
  // The reorders into the architecture's layouts (and, for a new architecture, its primitives)
  // run on this thread's share: one oneDNN thread in a server.
  ScopedThreads threads(options.threads);
  AE_RETURN_IF_ERROR(CatchDnnl("building inference plans", [&] { m->Build(params); }));
  // The engine's copies are the model's weights from here on (FullFile reads them back).
  // Swapped out, not cleared: protobuf's clear keeps the capacity.
  google::protobuf::RepeatedPtrField<v1::DenseLayer>().Swap(m->file_.mutable_encoder());
  google::protobuf::RepeatedPtrField<v1::DenseLayer>().Swap(m->file_.mutable_decoder());
  google::protobuf::RepeatedField<float>().Swap(m->file_.mutable_reference());
  return std::shared_ptr<const Model>(std::move(m));
}

// The architecture of these layers (compiled if no loaded model has it), then this model's
// weights in its layouts.
void Model::Build(const Params& params) {
  const v1::ModelSpec& s = spec();
  const uint32_t c = s.code_size();
  const bool vae = s.kind() == v1::MODEL_KIND_VARIATIONAL;
  num_encoder_ = params.num_encoder;
  auto shape = [&](uint32_t in, uint32_t out, v1::Activation act) {
    const float alpha = act == v1::ACTIVATION_LINEAR ? 0.f : AlphaOf(act, s.leaky_relu_slope());
    return DenseShape{in, out, act, alpha, false};
  };
  ArchitectureKey key;
  key.num_encoder = num_encoder_;
  key.threads = options_.threads;
  key.compact = options_.compact;
  const v1::Precision precision = file_.policy().precision();
  key.bf16 = (precision == v1::PRECISION_BF16 ||
              (precision == v1::PRECISION_UNSPECIFIED && options_.bf16)) &&
             Bf16Supported();
  for (size_t l = 0; l < params.layers.size(); ++l) {
    const LayerShape& p = params.layers[l].shape;
    // The code head of a variational model: rows [0, c) give mu, rows [c, 2c) log sigma^2.
    const bool head = vae && l == num_encoder_ - 1;
    key.layers.push_back(shape(p.inputs, head ? c : p.outputs, p.activation));
    if (head) key.logvar = shape(p.inputs, c, v1::ACTIVATION_LINEAR);
  }
  key.max_batch = RowsPerCall(options_.max_batch, key.max_width());
  if (neighbors_ > 0) {
    key.neighbours = DenseShape{num_features(), reference_rows_, v1::ACTIVATION_LINEAR, 0, true};
    key.neighbour_batch = RowsPerCall(std::min(kNeighbourBatch, key.max_batch), reference_rows_);
  }
  arch_ = Architecture::Get(key, options_.contexts);

  // One buffer: each layer's weights in each of its layouts, then its bias, 64-byte aligned.
  size_t size = 0;
  auto place = [&](const Architecture::Layer& layer) {
    auto take = [&](size_t floats) {
      const size_t at = size;
      size += (floats + 15) / 16 * 16;
      return at;
    };
    Weights w;
    for (const memory::desc& md : layer.layouts) {
      w.layouts.push_back(take((md.get_size() + 3) / 4));
    }
    w.bias = take(layer.shape.outputs);
    if (layer.bf16) w.plain = take(size_t{layer.shape.outputs} * layer.shape.inputs);
    return w;
  };
  for (const Architecture::Layer& layer : arch_->layers()) weights_.push_back(place(layer));
  if (vae) logvar_weights_ = place(*arch_->logvar());
  if (neighbors_ > 0) neighbour_weights_ = place(*arch_->neighbours());
  params_ = Allocate(size);
  params_size_ = size;
  for (const Architecture::Layer& layer : arch_->layers()) {
    madds_per_sample_ += uint64_t{layer.shape.inputs} * layer.shape.outputs;
  }
  if (neighbors_ > 0) madds_per_sample_ += uint64_t{num_features()} * reference_rows_;

  for (size_t l = 0; l < params.layers.size(); ++l) {
    const DenseParams& p = params.layers[l];
    Fill(arch_->layers()[l], weights_[l], p.weights.data(), p.bias.data());
  }
  if (vae) {
    const DenseParams& p = params.layers[num_encoder_ - 1];
    Fill(*arch_->logvar(), logvar_weights_, p.weights.data() + size_t{c} * p.shape.inputs,
         p.bias.data() + c);
  }
  if (neighbors_ > 0) {
    const uint32_t d = num_features(), n = reference_rows_;
    const float* ref = file_.reference().data();
    std::vector<float> bias(n);
    for (uint32_t r = 0; r < n; ++r) {
      float sq = 0;
      for (uint32_t j = 0; j < d; ++j) sq += ref[size_t{r} * d + j] * ref[size_t{r} * d + j];
      bias[r] = -0.5f * sq;
    }
    // The reference rows are the weights of a linear layer with d inputs and n outputs.
    Fill(*arch_->neighbours(), neighbour_weights_, ref, bias.data());
  }
}

std::unique_ptr<float[], Model::Free> Model::Allocate(size_t floats) {
  const size_t bytes = std::max<size_t>(floats, 16) * sizeof(float);
  if (bytes >= (size_t{64} << 10)) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return std::unique_ptr<float[], Free>(static_cast<float*>(p), Free{bytes});
  }
  auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));  // bytes: a multiple of 64
  if (p == nullptr) throw std::bad_alloc();
  return std::unique_ptr<float[], Free>(p, Free{0});
}

void Model::Free::operator()(float* p) const {
  if (mapped > 0) {
    munmap(p, mapped);
  } else {
    std::free(p);
  }
}

// `weights` (plain [out][in]) reordered into each layout the layer's primitives read.
void Model::Fill(const Architecture::Layer& layer, const Weights& w, const float* weights,
                 const float* bias) {
  const DenseShape& s = layer.shape;
  const dnnl::engine& eng = arch_->engine();
  memory plain({{s.outputs, s.inputs}, dt::f32, tag::ab}, eng, const_cast<float*>(weights));
  dnnl::stream st(eng);
  for (size_t i = 0; i < layer.layouts.size(); ++i) {
    memory dst(layer.layouts[i], eng, params_.get() + w.layouts[i]);
    dnnl::reorder(plain, dst).execute(st, plain, dst);
  }
  st.wait();
  std::copy_n(bias, s.outputs, params_.get() + w.bias);
  if (w.plain) std::copy_n(weights, size_t{s.outputs} * s.inputs, params_.get() + *w.plain);
}

std::vector<float> Model::PlainWeights(const Architecture::Layer& layer, const Weights& w) const {
  const DenseShape& s = layer.shape;
  std::vector<float> out(size_t{s.outputs} * s.inputs);
  if (w.plain) {
    std::copy_n(params_.get() + *w.plain, out.size(), out.data());
    return out;
  }
  const dnnl::engine& eng = arch_->engine();
  memory plain({{s.outputs, s.inputs}, dt::f32, tag::ab}, eng, out.data());
  memory src(layer.layouts.front(), eng, params_.get() + w.layouts.front());
  dnnl::stream st(eng);
  dnnl::reorder(src, plain).execute(st, src, plain);
  st.wait();
  return out;
}

v1::ModelFile Model::FullFile() const {
  v1::ModelFile f = file_;
  Params params;
  params.num_encoder = num_encoder_;
  const auto& layers = arch_->layers();
  for (size_t l = 0; l < layers.size(); ++l) {
    const DenseShape& s = layers[l].shape;
    const float* b = params_.get() + weights_[l].bias;
    DenseParams p{{s.inputs, s.outputs, s.activation},
                  PlainWeights(layers[l], weights_[l]),
                  std::vector<float>(b, b + s.outputs)};
    if (l == num_encoder_ - 1 && arch_->logvar()) {
      // The variational head: mu's rows, then log sigma^2's.
      const DenseShape& v = arch_->logvar()->shape;
      const std::vector<float> w = PlainWeights(*arch_->logvar(), logvar_weights_);
      const float* vb = params_.get() + logvar_weights_.bias;
      p.weights.insert(p.weights.end(), w.begin(), w.end());
      p.bias.insert(p.bias.end(), vb, vb + v.outputs);
      p.shape.outputs += v.outputs;
    }
    params.layers.push_back(std::move(p));
  }
  ToModelFile(params, f);
  if (neighbors_ > 0) {
    const std::vector<float> ref = PlainWeights(*arch_->neighbours(), neighbour_weights_);
    f.mutable_reference()->Add(ref.begin(), ref.end());
  }
  return f;
}

size_t Model::resident_bytes() const {
  return sizeof(Model) + file_.SpaceUsedLong() + params_size_ * sizeof(float) +
         (offset_.capacity() + scale_.capacity() + inv_scale_.capacity() + fill_.capacity()) *
             sizeof(float);
}

std::unique_ptr<ScoringContext> Model::NewContext() const { return arch_->TakeContext(); }

bool Model::Bf16Supported() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto avx512 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core);
  return (isa & avx512) == avx512;
}

namespace {

// True when no value is NaN or infinite (an all-ones exponent): an OR over the bits, in one pass
// that the compiler vectorizes; the exact check runs only when this finds something.
bool AllFinite(absl::Span<const float> x) {
  uint32_t bad = 0;
  for (const float v : x) {
    bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(v) & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

}  // namespace

absl::Status Model::CheckContext(const ScoringContext& ctx) const {
  if (&ctx.arch_ == arch_.get()) return absl::OkStatus();
  return absl::InternalError("scoring context of another architecture");
}

absl::Status Model::CheckInput(absl::Span<const float> x, size_t* rows,
                               std::vector<uint32_t>* missing) const {
  const uint32_t d = num_features();
  if (x.empty()) return absl::InvalidArgumentError("empty batch: no values");
  if (x.size() % d != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("values count ", x.size(), " is not a multiple of the feature count ", d));
  }
  *rows = x.size() / d;
  missing->clear();
  if (AllFinite(x)) return absl::OkStatus();
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isfinite(x[i])) continue;
    const size_t r = i / d;
    if (!std::isnan(x[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("infinite value at row ", r, ", feature ", FeatureName(i % d)));
    }
    if (max_missing_ == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("missing value (NaN) at row ", r, ", feature ", FeatureName(i % d),
                       ": this model's scoring policy allows none (max_missing_fraction 0)"));
    }
    if (missing->empty()) missing->resize(*rows, 0);
    ++(*missing)[r];
  }
  return absl::OkStatus();
}

std::string Model::FeatureName(size_t j) const {
  if (static_cast<int>(j) < file_.feature_names_size()) {
    return absl::StrCat("'", file_.feature_names(static_cast<int>(j)), "'");
  }
  return absl::StrCat(j);
}

absl::Status Model::RefuseOverLimit(const std::vector<uint32_t>& missing) const {
  for (size_t r = 0; r < missing.size(); ++r) {
    if (missing[r] > max_missing_) {
      return absl::InvalidArgumentError(
          absl::StrCat("row ", r, " misses ", missing[r], " of ", num_features(),
                       " features, over this model's max_missing_fraction ",
                       file_.policy().max_missing_fraction()));
    }
  }
  return absl::OkStatus();
}

// Splits work into power-of-two buckets: a remainder of at least 3/4 of the next bucket is padded
// up to it (one call), a smaller one runs the bucket below and continues.
uint32_t Model::ChooseBucket(size_t remaining, size_t* take) const {
  const uint32_t max_batch = arch_->key().max_batch;
  if (remaining >= max_batch) {
    *take = max_batch;
    return max_batch;
  }
  const uint32_t up = std::bit_ceil(static_cast<uint32_t>(remaining));
  if (remaining * 4 >= size_t{up} * 3) {
    *take = remaining;
    return up;
  }
  *take = up / 2;
  return up / 2;
}

absl::Status Model::ForEachBucket(
    size_t rows,
    absl::FunctionRef<absl::Status(size_t done, size_t take, uint32_t bucket)> fn) const {
  for (size_t done = 0; done < rows;) {
    size_t take = 0;
    const uint32_t bucket = ChooseBucket(rows - done, &take);
    AE_RETURN_IF_ERROR(fn(done, take, bucket));
    done += take;
  }
  return absl::OkStatus();
}

absl::Status Model::RunRows(ScoringContext& ctx, absl::Span<const float> x, size_t done,
                            size_t take, uint32_t bucket, const uint32_t* missing, Pass pass,
                            bool logvar) const {
  const float* xb = x.data() + done * num_features();
  ScaleInto(xb, take, bucket, missing != nullptr, ctx.in_.data());
  AE_RETURN_IF_ERROR(Run(ctx, bucket, pass, logvar));
  return Impute(ctx, xb, take, bucket, missing == nullptr ? nullptr : missing + done, pass, logvar);
}

void Model::Unscale(const ScoringContext& ctx, size_t take, float* out) const {
  const uint32_t d = num_features();
  for (size_t i = 0; i < take * d; ++i) out[i] = ctx.out_[i] * scale_[i % d] + offset_[i % d];
}

void Model::ScaleInto(const float* x, size_t take, uint32_t bucket, bool gaps, float* dst) const {
  const uint32_t d = num_features();
  const float* offset = offset_.data();
  const float* inv_scale = inv_scale_.data();
  for (size_t r = 0; r < take; ++r) {
    const float* row = x + r * d;
    float* out = dst + r * d;
    if (gaps) {
      for (uint32_t j = 0; j < d; ++j) {
        out[j] = std::isnan(row[j]) ? fill_[j] : (row[j] - offset[j]) * inv_scale[j];
      }
    } else {
      for (uint32_t j = 0; j < d; ++j) out[j] = (row[j] - offset[j]) * inv_scale[j];
    }
  }
  std::fill(dst + take * d, dst + size_t{bucket} * d, 0.f);
}

// Rows with missing values: each refinement replaces the filled-in values with the model's
// reconstruction and runs the bucket again.
absl::Status Model::Impute(ScoringContext& ctx, const float* x, size_t take, uint32_t bucket,
                           const uint32_t* missing, Pass pass, bool logvar) const {
  if (missing == nullptr || refinements_ == 0) return absl::OkStatus();
  if (std::all_of(missing, missing + take, [](uint32_t m) { return m == 0; })) {
    return absl::OkStatus();
  }
  const uint32_t d = num_features();
  for (uint32_t it = 0; it < refinements_; ++it) {
    if (pass == Pass::kEncode) AE_RETURN_IF_ERROR(Run(ctx, bucket, Pass::kFull, false));
    for (size_t r = 0; r < take; ++r) {
      if (missing[r] == 0) continue;
      for (uint32_t j = 0; j < d; ++j) {
        if (std::isnan(x[r * d + j])) ctx.in_[r * d + j] = ctx.out_[r * d + j];
      }
    }
    AE_RETURN_IF_ERROR(Run(ctx, bucket, pass, logvar));
  }
  return absl::OkStatus();
}

namespace {

// f32 to bfloat16, rounding to nearest even (the values are finite: scaled inputs and codes).
void ToBf16(const float* x, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; ++i) {
    const uint32_t u = std::bit_cast<uint32_t>(x[i]);
    out[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

// Runs one layer's primitive for bucket `p` with the weights at `params` + `w`, in the layout it
// reads. Pointing the context's memories at them writes nothing, padding included (oneDNN 2.6;
// Model.PointingAMemoryAtWeightsWritesNothing), so threads share the weights safely.
void Execute(const Architecture::Layer& layer, size_t p, const float* params,
             const Model::Weights& w, ScoringContext::Args& args, dnnl::stream& stream) {
  const Architecture::Dense& dense = layer.buckets[p];
  args[DNNL_ARG_WEIGHTS].set_data_handle(const_cast<float*>(params + w.layouts[dense.layout]));
  args[DNNL_ARG_BIAS].set_data_handle(const_cast<float*>(params + w.bias));
  dense.fwd.execute(stream, args);
}

}  // namespace

absl::Status Model::Run(ScoringContext& ctx, uint32_t bucket, Pass pass, bool logvar) const {
  const size_t p = static_cast<size_t>(std::countr_zero(bucket));
  std::vector<ScoringContext::Args>& args = ctx.args_[p];
  const auto& layers = arch_->layers();
  const size_t begin = pass == Pass::kDecode ? num_encoder_ : 0;
  const size_t end = pass == Pass::kEncode ? num_encoder_ : layers.size();
  const bool bf16 = arch_->key().bf16;
  return CatchDnnl("scoring", [&] {
    if (bf16 && begin == 0)
      ToBf16(ctx.in_.data(), size_t{bucket} * num_features(), ctx.in16_.data());
    for (size_t l = begin; l < end; ++l) {
      if (bf16 && l == num_encoder_) {
        ctx.stream_.wait();  // the code head's output, converted for the decoder
        ToBf16(ctx.latent_.data(), size_t{bucket} * code_size(), ctx.latent16_.data());
      }
      Execute(layers[l], p, params_.get(), weights_[l], args[l], ctx.stream_);
      // The log sigma^2 half of the head reads the head's input, which the decoder's hidden
      // layers overwrite (ping/pong): it runs right after the head.
      if (logvar && l == num_encoder_ - 1) {
        Execute(*arch_->logvar(), p, params_.get(), logvar_weights_, ctx.logvar_args_[p],
                ctx.stream_);
      }
    }
    ctx.stream_.wait();
  });
}

absl::Status Model::Distances(ScoringContext& ctx, size_t take, float* out) const {
  const uint32_t d = num_features(), n = reference_rows_, k = neighbors_;
  const uint32_t per_call = arch_->key().neighbour_batch;
  for (size_t start = 0; start < take; start += per_call) {
    const size_t rows = std::min<size_t>(per_call, take - start);
    const uint32_t bucket = std::bit_ceil(static_cast<uint32_t>(rows));
    const size_t p = static_cast<size_t>(std::countr_zero(bucket));
    ScoringContext::Args& args = ctx.neighbour_args_[p];
    args[DNNL_ARG_SRC].set_data_handle(ctx.in_.data() + start * d);
    AE_RETURN_IF_ERROR(CatchDnnl("neighbour distances", [&] {
      Execute(*arch_->neighbours(), p, params_.get(), neighbour_weights_, args, ctx.stream_);
      ctx.stream_.wait();
    }));
    for (size_t r = 0; r < rows; ++r) {
      const float* x = ctx.in_.data() + (start + r) * d;
      // |x|^2 in 8 partial sums: the compiler vectorizes them, not one sum's chain of adds.
      float part[8] = {};
      uint32_t j = 0;
      for (; j + 8 <= d; j += 8) {
        for (uint32_t l = 0; l < 8; ++l) part[l] += x[j + l] * x[j + l];
      }
      for (; j < d; ++j) part[0] += x[j] * x[j];
      const float xx =
          ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      out[start + r] =
          NeighbourDistance(ctx.dots_.data() + r * n, xx, n, groups_, k, ctx.nearest_scratch_);
    }
  }
  return absl::OkStatus();
}

// Mean distance from a row with missing values to its nearest reference rows over the observed
// features, the squared distances scaled by features / observed so they stay comparable.
float Model::GapDistance(ScoringContext& ctx, const float* raw, const float* xs,
                         uint32_t missing) const {
  const uint32_t d = num_features(), n = reference_rows_;
  // The reference rows transposed: feature j of row i at j * n + i.
  const float* ref = params_.get() + neighbour_weights_.layouts.front();
  const float stretch = static_cast<float>(d) / static_cast<float>(d - missing);
  float* sq = ctx.dots_.data();
  std::fill_n(sq, n, 0.f);
  for (uint32_t j = 0; j < d; ++j) {
    if (std::isnan(raw[j])) continue;
    const float* col = ref + size_t{j} * n;
    for (uint32_t i = 0; i < n; ++i) sq[i] += (xs[j] - col[i]) * (xs[j] - col[i]);
  }
  for (uint32_t i = 0; i < n; ++i) sq[i] *= stretch;
  return MeanOverGroups(sq, n, groups_, neighbors_, ctx.nearest_scratch_);
}

absl::Status Model::Score(ScoringContext& ctx, absl::Span<const float> x,
                          const ScoreOptions& options, ScoreResult* result) const {
  AE_RETURN_IF_ERROR(CheckContext(ctx));
  size_t rows = 0;
  AE_RETURN_IF_ERROR(CheckInput(x, &rows, &result->missing));
  const uint32_t d = num_features(), c = code_size();
  const bool elbo = options.neg_elbo && spec().kind() == v1::MODEL_KIND_VARIATIONAL;
  const bool gaps = !result->missing.empty();
  result->skipped.assign(gaps ? rows : 0, 0);
  result->threshold = threshold();
  result->error.resize(rows);
  result->distance.resize(neighbors_ > 0 ? rows : 0);
  result->score.resize(rows);
  result->anomalous.resize(rows);
  result->p_value.resize(rows);
  result->feature_error.resize(options.per_feature ? rows * d : 0);
  result->neg_elbo.resize(elbo ? rows : 0);
  const float thr = static_cast<float>(threshold());
  const float inv_d = 1.0f / static_cast<float>(d);
  const float beta = spec().beta();
  return ForEachBucket(rows, [&](size_t done, size_t take, uint32_t bucket) -> absl::Status {
    const float* xb = x.data() + done * d;
    const uint32_t* miss = gaps ? result->missing.data() + done : nullptr;
    AE_RETURN_IF_ERROR(RunRows(ctx, x, done, take, bucket, gaps ? result->missing.data() : nullptr,
                               Pass::kFull, elbo));
    if (neighbors_ > 0) AE_RETURN_IF_ERROR(Distances(ctx, take, result->distance.data() + done));
    for (size_t r = 0; r < take; ++r) {
      const float* xs = ctx.in_.data() + r * d;
      const float* y = ctx.out_.data() + r * d;
      float sum = 0;
      if (miss != nullptr && miss[r] > 0) {
        // Gaps: the error over the observed features only; a missing feature's error is 0.
        const float* raw = xb + r * d;
        const size_t i = done + r;
        float* fe = options.per_feature ? result->feature_error.data() + i * d : nullptr;
        for (uint32_t j = 0; j < d; ++j) {
          const float e = std::isnan(raw[j]) ? 0.f : (y[j] - xs[j]) * (y[j] - xs[j]);
          sum += e;
          if (fe != nullptr) fe[j] = options.original_units ? e * scale_[j] * scale_[j] : e;
        }
        if (miss[r] > max_missing_) {
          result->skipped[i] = 1;
          result->error[i] = result->score[i] = NAN;
          if (neighbors_ > 0) result->distance[i] = NAN;
          result->anomalous[i] = 0;
          result->p_value[i] = 1;
          if (elbo) result->neg_elbo[i] = NAN;
          continue;
        }
        if (neighbors_ > 0) result->distance[i] = GapDistance(ctx, raw, xs, miss[r]);
        sum *= static_cast<float>(d) / static_cast<float>(d - miss[r]);
      } else if (options.per_feature) {
        float* fe = result->feature_error.data() + (done + r) * d;
        for (uint32_t j = 0; j < d; ++j) {
          const float e = (y[j] - xs[j]) * (y[j] - xs[j]);
          sum += e;
          fe[j] = options.original_units ? e * scale_[j] * scale_[j] : e;
        }
      } else {
        for (uint32_t j = 0; j < d; ++j) sum += (y[j] - xs[j]) * (y[j] - xs[j]);
      }
      const float err = sum * inv_d;
      if (!std::isfinite(err)) {
        // A value so far from the training data that its squared error overflows: no score (and
        // no attribution) would mean anything, so the batch is refused with the row named.
        const float* raw = x.data() + (done + r) * d;
        uint32_t worst = 0;
        for (uint32_t j = 1; j < d; ++j)
          worst = std::fabs(raw[j]) > std::fabs(raw[worst]) ? j : worst;
        return absl::InvalidArgumentError(absl::StrCat(
            "row ", done + r, ": feature ", worst, " = ", raw[worst],
            " is too far outside this model's training range to score (its error overflows)"));
      }
      result->error[done + r] = err;
      const float score = scaled_
                              ? AnomalyScore(err, result->distance[done + r],
                                             spec().reconstruction_weight(), file_.score_scale())
                              : err;
      result->score[done + r] = score;
      result->anomalous[done + r] = score > thr;
      result->p_value[done + r] = static_cast<float>(PValue(score, file_.calibration_errors()));
      if (elbo) {
        double kl = 0;
        for (uint32_t k = 0; k < c; ++k) {
          const double mu = ctx.latent_[r * c + k], lv = ctx.logvar_[r * c + k];
          kl += 0.5 * (std::exp(lv) + mu * mu - 1 - lv);
        }
        result->neg_elbo[done + r] = static_cast<float>(err + beta * kl / d);
      }
    }
    return absl::OkStatus();
  });
}

absl::Status Model::Encode(ScoringContext& ctx, absl::Span<const float> x,
                           std::vector<float>* codes) const {
  AE_RETURN_IF_ERROR(CheckContext(ctx));
  size_t rows = 0;
  std::vector<uint32_t> missing;
  AE_RETURN_IF_ERROR(CheckInput(x, &rows, &missing));
  AE_RETURN_IF_ERROR(RefuseOverLimit(missing));
  const uint32_t c = code_size();
  codes->resize(rows * c);
  return ForEachBucket(rows, [&](size_t done, size_t take, uint32_t bucket) -> absl::Status {
    AE_RETURN_IF_ERROR(RunRows(ctx, x, done, take, bucket,
                               missing.empty() ? nullptr : missing.data(), Pass::kEncode, false));
    std::copy_n(ctx.latent_.data(), take * c, codes->data() + done * c);
    return absl::OkStatus();
  });
}

absl::Status Model::Reconstruct(ScoringContext& ctx, absl::Span<const float> x,
                                std::vector<float>* out) const {
  AE_RETURN_IF_ERROR(CheckContext(ctx));
  size_t rows = 0;
  std::vector<uint32_t> missing;
  AE_RETURN_IF_ERROR(CheckInput(x, &rows, &missing));
  AE_RETURN_IF_ERROR(RefuseOverLimit(missing));
  const uint32_t d = num_features();
  out->resize(rows * d);
  return ForEachBucket(rows, [&](size_t done, size_t take, uint32_t bucket) -> absl::Status {
    AE_RETURN_IF_ERROR(RunRows(ctx, x, done, take, bucket,
                               missing.empty() ? nullptr : missing.data(), Pass::kFull, false));
    Unscale(ctx, take, out->data() + done * d);
    return absl::OkStatus();
  });
}

absl::Status Model::Generate(ScoringContext& ctx, uint32_t n, uint64_t seed,
                             std::vector<float>* out) const {
  AE_RETURN_IF_ERROR(CheckContext(ctx));
  if (spec().kind() != v1::MODEL_KIND_VARIATIONAL) {
    return absl::FailedPreconditionError("generate: only variational models have a prior");
  }
  if (n == 0) return absl::InvalidArgumentError("generate: n must be >= 1");
  const uint32_t d = num_features(), c = code_size();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  out->resize(size_t{n} * d);
  return ForEachBucket(n, [&](size_t done, size_t take, uint32_t bucket) -> absl::Status {
    for (size_t i = 0; i < size_t{bucket} * c; ++i)
      ctx.latent_[i] = i < take * c ? normal(rng) : 0.f;
    AE_RETURN_IF_ERROR(Run(ctx, bucket, Pass::kDecode, false));
    Unscale(ctx, take, out->data() + done * d);
    return absl::OkStatus();
  });
}

}  // namespace aeserve::engine
