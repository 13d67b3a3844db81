// Engine benchmark: scoring samples/s of aeserve's engine beside a bare oneDNN forward pass of the
// same layers (the ceiling), batch-1 latency, and training samples/s, all in one run.
//
//   build/bench/engine_bench [--threads=N] [--seconds=S] [--precision-only | --default-only]
//
// Model: 38-64-32-8-32-64-38, ReLU hidden, linear code and output, fp32. The precision table
// scores it and a wide model (1024 features, 1024-512-32) in f32 and in bf16 (ScoringPolicy
// precision), with the scores' largest relative change; --precision-only prints only that table;
// --default-only scores only with the default score (batches 256 and 4096), for profiles of it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/dnnl_util.h"
#include "engine/model.h"
#include "engine/params.h"
#include "engine/scaler.h"
#include "engine/spec.h"
#include "engine/synthetic_data.h"
#include "engine/trainer.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace {

using namespace aeserve;
using namespace aeserve::engine;
using Clock = std::chrono::steady_clock;
constexpr uint32_t kFeatures = 38;

v1::ModelSpec Spec() {
  v1::ModelSpec s;
  s.add_encoder_units(64);
  s.add_encoder_units(32);
  s.set_code_size(8);
  s.set_hidden_activation(v1::ACTIVATION_RELU);
  s.set_neighbors(0);  // the autoencoder alone; neighbours are added per run (--neighbors)
  return *ResolveSpec(s, kFeatures);
}

// The ceiling: the same layers as one oneDNN chain for exactly `batch` rows, weights in the
// layout oneDNN picks, ReLU fused, then the per-sample mean squared error. No scaling, no
// thresholds, no bucketing.
class BareForward {
 public:
  BareForward(const Params& p, uint32_t batch) : eng_(dnnl::engine::kind::cpu, 0), st_(eng_) {
    using dnnl::memory;
    uint32_t width = 0;
    for (const auto& l : p.layers) width = std::max({width, l.shape.inputs, l.shape.outputs});
    in_.assign(size_t{batch} * kFeatures, 0.5f);
    a_.assign(size_t{batch} * width, 0.f);
    b_.assign(size_t{batch} * width, 0.f);
    float* src = in_.data();
    for (size_t i = 0; i < p.layers.size(); ++i) {
      const auto& l = p.layers[i];
      float* dst = (i % 2 == 0) ? a_.data() : b_.data();
      dnnl::primitive_attr attr;
      if (l.shape.activation == v1::ACTIVATION_RELU) {
        dnnl::post_ops po;
        po.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
        attr.set_post_ops(po);
      }
      memory::desc s({batch, l.shape.inputs}, memory::data_type::f32, memory::format_tag::ab);
      memory::desc d({batch, l.shape.outputs}, memory::data_type::f32, memory::format_tag::ab);
      memory::desc w({l.shape.outputs, l.shape.inputs}, memory::data_type::f32,
                     memory::format_tag::any);
      memory::desc bmd({l.shape.outputs}, memory::data_type::f32, memory::format_tag::a);
      dnnl::inner_product_forward::primitive_desc pd(
          dnnl::inner_product_forward::desc(dnnl::prop_kind::forward_inference, s, w, bmd, d), attr,
          eng_);
      memory plain(
          {{l.shape.outputs, l.shape.inputs}, memory::data_type::f32, memory::format_tag::ab}, eng_,
          const_cast<float*>(l.weights.data()));
      memory wm(pd.weights_desc(), eng_);
      dnnl::reorder(plain, wm).execute(st_, plain, wm);
      memory bm(bmd, eng_, const_cast<float*>(l.bias.data()));
      prims_.push_back(dnnl::inner_product_forward(pd));
      args_.push_back({{DNNL_ARG_SRC, memory(s, eng_, src)},
                       {DNNL_ARG_WEIGHTS, wm},
                       {DNNL_ARG_BIAS, bm},
                       {DNNL_ARG_DST, memory(d, eng_, dst)}});
      src = dst;
    }
    out_ = src;
    err_.resize(batch);
    st_.wait();
  }
  void Run(const float* x, uint32_t batch) {
    std::memcpy(in_.data(), x, size_t{batch} * kFeatures * sizeof(float));
    for (size_t i = 0; i < prims_.size(); ++i) prims_[i].execute(st_, args_[i]);
    st_.wait();
    for (uint32_t r = 0; r < batch; ++r) {
      float s = 0;
      for (uint32_t j = 0; j < kFeatures; ++j) {
        const float d = out_[r * kFeatures + j] - in_[r * kFeatures + j];
        s += d * d;
      }
      err_[r] = s / kFeatures;
    }
  }

 private:
  dnnl::engine eng_;
  dnnl::stream st_;
  std::vector<float> in_, a_, b_, err_;
  float* out_ = nullptr;
  std::vector<dnnl::primitive> prims_;
  std::vector<std::unordered_map<int, dnnl::memory>> args_;
};

// Samples per second of `f` (which scores `batch` rows) over about `seconds`.
template <typename F>
double Rate(F&& f, uint32_t batch, double seconds) {
  f();  // warm up
  size_t calls = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  do {
    f();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  return calls * static_cast<double>(batch) / elapsed;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A model file with random weights for `spec` (the default 38-feature spec, or the wide one).
v1::ModelFile RandomFile(const v1::ModelSpec& spec, const std::vector<float>& rows, size_t n) {
  std::mt19937_64 rng(1);
  Params params = InitParams(spec, rng);
  v1::ModelFile file;
  file.set_format_version(1);
  *file.mutable_spec() = spec;
  *file.mutable_scaler() = *FitScaler(v1::SCALING_STANDARD, rows, n, spec.num_features());
  ToModelFile(params, file);
  for (int i = 1; i <= 1000; ++i) file.add_calibration_errors(i * 1e-3f);
  file.set_threshold_value(0.99);
  return file;
}

// f32 against bf16 scoring, same model, same rows, interleaved: samples/s and the largest
// relative change of a score.
void PrecisionTable(int threads, double seconds) {
  std::printf(
      "\nf32 vs bf16 (ScoringPolicy.precision), %d oneDNN thread(s); median of 3 "
      "interleaved runs\n",
      threads);
  if (!Model::Bf16Supported()) {
    std::printf("this CPU has no AVX-512: no bf16\n");
    return;
  }
  std::printf("%-28s %6s %14s %14s %8s %16s\n", "model", "batch", "f32/s", "bf16/s", "bf16/f32",
              "max rel change");
  v1::ModelSpec wide;
  wide.add_encoder_units(1024);
  wide.add_encoder_units(512);
  wide.set_code_size(32);
  wide.set_neighbors(0);
  struct Case {
    const char* name;
    v1::ModelSpec spec;
  };
  for (const Case& c : {Case{"default 38-64-32-8", Spec()},
                        Case{"wide 1024-1024-512-32", *ResolveSpec(wide, 1024)}}) {
    const uint32_t d = c.spec.num_features();
    const size_t n = 4096;
    auto data = MakeSynthetic(n, 0, d, 6, 3);
    v1::ModelFile f32_file = RandomFile(c.spec, data.normal, n);
    v1::ModelFile bf16_file = f32_file;
    bf16_file.mutable_policy()->set_precision(v1::PRECISION_BF16);
    auto f32 = *Model::Create(f32_file, ModelOptions{threads, 4096});
    auto bf16 = *Model::Create(bf16_file, ModelOptions{threads, 4096});
    auto fctx = f32->NewContext(), bctx = bf16->NewContext();
    ScoreResult a, b;
    for (uint32_t batch : {16u, 256u, 4096u}) {
      const absl::Span<const float> x(data.normal.data(), size_t{batch} * d);
      std::vector<double> rf, rb;
      const double s = d > 100 ? seconds * 2 : seconds;
      for (int rep = 0; rep < 3; ++rep) {
        rf.push_back(Rate([&] { (void)f32->Score(*fctx, x, {}, &a); }, batch, s));
        rb.push_back(Rate([&] { (void)bf16->Score(*bctx, x, {}, &b); }, batch, s));
      }
      double change = 0;
      for (size_t i = 0; i < a.score.size(); ++i) {
        change = std::max(change, std::abs(double{b.score[i]} - a.score[i]) /
                                      std::max(1e-12, std::abs(double{a.score[i]})));
      }
      std::printf("%-28s %6u %14.0f %14.0f %7.2fx %16.4g\n", c.name, batch, Median(rf), Median(rb),
                  Median(rb) / Median(rf), change);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  double seconds = 0.3;
  bool precision_only = false, default_only = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0)
      threads = std::atoi(argv[i] + 10);
    else if (std::strncmp(argv[i], "--seconds=", 10) == 0)
      seconds = std::atof(argv[i] + 10);
    else if (std::strcmp(argv[i], "--precision-only") == 0)
      precision_only = true;
    else if (std::strcmp(argv[i], "--default-only") == 0)
      default_only = true;
    else {
      std::fprintf(stderr,
                   "usage: engine_bench [--threads=N] [--seconds=S] [--precision-only | "
                   "--default-only]\n");
      return 2;
    }
  }
  ScopedThreads scoped(threads);
  if (precision_only) {
    PrecisionTable(threads, seconds);
    return 0;
  }
  const v1::ModelSpec spec = Spec();
  std::mt19937_64 rng(1);
  Params params = InitParams(spec, rng);
  auto data = MakeSynthetic(65536, 0, kFeatures, 6, 3);
  v1::ModelFile file;
  file.set_format_version(1);
  *file.mutable_spec() = spec;
  *file.mutable_scaler() = *FitScaler(v1::SCALING_STANDARD, data.normal, 65536, kFeatures);
  ToModelFile(params, file);
  for (int i = 1; i <= 1000; ++i) file.add_calibration_errors(i * 1e-3f);
  file.set_threshold_value(0.99);
  auto model = *Model::Create(file, ModelOptions{threads, 4096});
  auto ctx = model->NewContext();
  // The default anomaly score: the same autoencoder plus the distance to the nearest
  // kDefaultNeighbors in each of kDefaultNeighborGroups groups of kDefaultReferenceRows rows.
  v1::ModelFile nfile = file;
  nfile.mutable_spec()->set_neighbors(kDefaultNeighbors);
  nfile.mutable_spec()->set_reference_rows(kDefaultReferenceRows);
  nfile.mutable_spec()->set_neighbor_groups(kDefaultNeighborGroups);
  nfile.mutable_spec()->set_reconstruction_weight(kDefaultReconstructionWeight);
  for (size_t i = 0; i < size_t{kDefaultReferenceRows} * kFeatures; ++i) {
    nfile.add_reference(data.normal[i]);
  }
  nfile.mutable_score_scale()->set_error_std(1);
  nfile.mutable_score_scale()->set_distance_std(1);
  auto nmodel = *Model::Create(nfile, ModelOptions{threads, 4096});
  auto nctx = nmodel->NewContext();

  ScoreResult result;
  if (default_only) {  // the default score alone, for profiles of it
    for (uint32_t batch : {256u, 4096u}) {
      const absl::Span<const float> x(data.normal.data(), size_t{batch} * kFeatures);
      std::printf("batch %u: default score %.0f samples/s\n", batch,
                  Rate([&] { (void)nmodel->Score(*nctx, x, {}, &result); }, batch, seconds));
    }
    return 0;
  }
  std::printf(
      "aeserve engine benchmark: model 38-64-32-8-32-64-38 ReLU, fp32, %d oneDNN thread(s)\n",
      threads);
  std::printf("each figure: median of 3 interleaved runs of %.2f s\n\n", seconds);
  std::printf("%8s %16s %16s %8s %20s %8s\n", "batch", "bare oneDNN/s", "aeserve/s", "ratio",
              "aeserve default/s", "cost");
  for (uint32_t batch : {1u, 16u, 256u, 4096u, 65536u}) {
    BareForward bare(params, batch);
    const absl::Span<const float> x(data.normal.data(), size_t{batch} * kFeatures);
    std::vector<double> b, e, n;
    for (int rep = 0; rep < 3; ++rep) {
      b.push_back(Rate([&] { bare.Run(x.data(), batch); }, batch, seconds));
      e.push_back(Rate([&] { (void)model->Score(*ctx, x, {}, &result); }, batch, seconds));
      n.push_back(Rate([&] { (void)nmodel->Score(*nctx, x, {}, &result); }, batch, seconds));
    }
    // cost = time per sample of the default score / time per sample of the autoencoder alone.
    std::printf("%8u %16.0f %16.0f %7.1f%% %20.0f %7.2fx\n", batch, Median(b), Median(e),
                100 * Median(e) / Median(b), Median(n), Median(e) / Median(n));
  }

  // Batch-1 latency distribution.
  std::vector<double> us;
  const absl::Span<const float> one(data.normal.data(), kFeatures);
  for (int i = 0; i < 20000; ++i) {
    const auto t = Clock::now();
    (void)model->Score(*ctx, one, {}, &result);
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
  }
  std::sort(us.begin(), us.end());
  std::printf("\nbatch-1 Score latency: p50 %.2f us, p99 %.2f us\n", us[us.size() / 2],
              us[us.size() * 99 / 100]);

  // Training throughput: 100k rows, batch 256, Adam, 3 epochs.
  auto train = MakeSynthetic(100000, 0, kFeatures, 6, 4);
  TrainRequest req;
  req.spec = spec;
  req.options.set_epochs(3);
  req.options.set_batch_size(256);
  req.options.set_validation_split(0);
  req.options.set_threads(threads);
  auto trained = Train(req, TrainingData{train.normal, 100000, kFeatures, {}, {}});
  if (!trained.ok()) {
    std::fprintf(stderr, "training failed: %s\n", trained.status().ToString().c_str());
    return 1;
  }
  std::vector<double> sps;
  for (const auto& ep : trained->history().epochs()) sps.push_back(ep.samples_per_second());
  std::printf("training (100k rows, batch 256, Adam, 3 epochs): %.0f samples/s (median epoch)\n",
              Median(sps));
  PrecisionTable(threads, seconds);
  return 0;
}
