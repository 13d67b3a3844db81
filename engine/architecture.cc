// The compiled half of a model, shared by every model of the same architecture.
#include "engine/architecture.h"

#include <algorithm>
#include <bit>

#include "absl/strings/str_cat.h"
#include "engine/dnnl_util.h"

namespace aeserve::engine {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

void AppendShape(std::string* s, const DenseShape& d) {
  absl::StrAppend(s, d.inputs, "x", d.outputs, ":", static_cast<int>(d.activation), ":",
                  std::bit_cast<uint32_t>(d.alpha), d.transposed ? "t" : "", ";");
}

// The cache: weak entries, so an architecture goes when its last model does.
struct Cache {
  std::mutex mu;
  std::unordered_map<std::string, std::weak_ptr<const Architecture>> entries;
};

Cache& TheCache() {
  static Cache* cache = new Cache;
  return *cache;
}

}  // namespace

std::string ArchitectureKey::str() const {
  std::string s = absl::StrCat("b", max_batch, "/", neighbour_batch, " t", threads, " e",
                               num_encoder, compact ? " c" : "", bf16 ? " bf16 " : " ");
  for (const DenseShape& d : layers) AppendShape(&s, d);
  if (logvar) {
    s += " v";
    AppendShape(&s, *logvar);
  }
  if (neighbours) {
    s += " n";
    AppendShape(&s, *neighbours);
  }
  return s;
}

std::shared_ptr<const Architecture> Architecture::Get(const ArchitectureKey& key, size_t contexts) {
  const std::string name = key.str();
  Cache& cache = TheCache();
  // Compiled under the lock: two loads of a new architecture compile it once.
  std::lock_guard lock(cache.mu);
  if (auto found = cache.entries[name].lock()) return found;
  ScopedThreads threads(key.threads);
  std::shared_ptr<Architecture> arch(new Architecture(key));
  // bf16: hidden layers write bf16; the code head (its f32 code is an output too) and the
  // reconstruction write f32.
  const size_t n = key.layers.size();
  for (size_t l = 0; l < n; ++l) {
    const bool f32_out = l + 1 == key.num_encoder || l + 1 == n;
    arch->layers_.push_back(
        arch->Compile(key.layers[l], key.max_batch, key.bf16, key.bf16 && !f32_out));
  }
  if (key.logvar) arch->logvar_ = arch->Compile(*key.logvar, key.max_batch, key.bf16, false);
  if (key.neighbours) {
    arch->neighbours_ = arch->Compile(*key.neighbours, key.neighbour_batch, false, false);
  }
  for (size_t i = 0; i < contexts; ++i) {
    arch->spare_.push_back(std::make_unique<ScoringContext>(*arch));
  }
  std::erase_if(cache.entries, [](const auto& e) { return e.second.expired(); });
  cache.entries[name] = arch;
  return arch;
}

size_t Architecture::Live() {
  Cache& cache = TheCache();
  std::lock_guard lock(cache.mu);
  return static_cast<size_t>(std::count_if(cache.entries.begin(), cache.entries.end(),
                                           [](const auto& e) { return !e.second.expired(); }));
}

uint32_t ArchitectureKey::max_width() const {
  uint32_t width = 0;
  for (const DenseShape& d : layers) width = std::max({width, d.inputs, d.outputs});
  return width;
}

Architecture::Architecture(ArchitectureKey key)
    : key_(std::move(key)), engine_(dnnl::engine::kind::cpu, 0) {}

Architecture::~Architecture() = default;

// One layer's primitives for buckets 1, 2, 4, ..., max_batch: activation fused, user scratchpad
// (the context's), weights in the layout the primitive prefers unless the shape fixes it.
Architecture::Layer Architecture::Compile(const DenseShape& shape, uint32_t max_batch, bool bf16,
                                          bool bf16_out) {
  Layer layer{shape, bf16, {}, {}};
  const dt in_type = bf16 ? dt::bf16 : dt::f32, out_type = bf16_out ? dt::bf16 : dt::f32;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (shape.activation != v1::ACTIVATION_LINEAR) {
    dnnl::post_ops po;
    po.append_eltwise(1.f, AlgorithmOf(shape.activation), shape.alpha, 0.f);
    attr.set_post_ops(po);
  }
  const memory::dim in = shape.inputs, out = shape.outputs;
  const memory::desc b_md({out}, dt::f32, tag::a);
  for (uint32_t batch = 1; batch <= max_batch; batch *= 2) {
    const memory::desc src_md({batch, in}, in_type, tag::ab);
    const memory::desc dst_md({batch, out}, out_type, tag::ab);
    auto make = [&](tag t) {
      return dnnl::inner_product_forward::primitive_desc(
          dnnl::inner_product_forward::desc(dnnl::prop_kind::forward_inference, src_md,
                                            memory::desc({out, in}, in_type, t), b_md, dst_md),
          attr, engine_);
    };
    auto pd = make(shape.transposed ? tag::ba : tag::any);
    if (key_.compact && pd.weights_desc().get_size() != memory::data_type_size(in_type) *
                                                            size_t{shape.inputs} * shape.outputs) {
      // A blocked layout that pads (a dimension not a multiple of its block): compact
      // architectures take the plain transposed layout instead, so that weights take no more
      // than their size (up to ~20% slower for those layers at small batches; bench/RESULTS.md).
      pd = make(tag::ba);
    }
    Dense dense{dnnl::inner_product_forward(pd), 0, pd.scratchpad_desc()};
    const memory::desc w = pd.weights_desc();
    auto same = std::find(layer.layouts.begin(), layer.layouts.end(), w);
    dense.layout = static_cast<uint32_t>(same - layer.layouts.begin());
    if (same == layer.layouts.end()) layer.layouts.push_back(w);
    scratch_bytes_ = std::max(scratch_bytes_, dense.scratch.get_size());
    layer.buckets.push_back(std::move(dense));
  }
  return layer;
}

size_t Architecture::context_bytes() const {
  const size_t b = key_.max_batch, d = features(), c = code_size();
  size_t floats = 2 * b * d + 2 * b * c + (key_.bf16 ? 0 : 2 * b * max_width());
  if (neighbours_) floats += size_t{key_.neighbour_batch} * neighbours_->shape.outputs;
  const size_t halves = key_.bf16 ? b * d + b * c + 2 * b * max_width() : 0;
  return floats * sizeof(float) + halves * sizeof(uint16_t) + std::max<size_t>(scratch_bytes_, 64);
}

std::unique_ptr<ScoringContext> Architecture::TakeContext() const {
  {
    std::lock_guard lock(spare_mu_);
    if (!spare_.empty()) {
      std::unique_ptr<ScoringContext> ctx = std::move(spare_.back());
      spare_.pop_back();
      return ctx;
    }
  }
  return std::make_unique<ScoringContext>(*this);
}

ScoringContext::ScoringContext(const Architecture& a) : arch_(a), stream_(a.engine()) {
  const ArchitectureKey& key = a.key();
  const size_t b = key.max_batch;
  const uint32_t d = a.features(), c = a.code_size();
  const dnnl::engine& eng = a.engine();
  in_.assign(b * d, 0.f);
  latent_.assign(b * c, 0.f);
  logvar_.assign(key.logvar ? b * c : 0, 0.f);
  if (!key.bf16) {  // bf16 layers keep their hidden activations in ping16_ / pong16_
    ping_.assign(b * a.max_width(), 0.f);
    pong_.assign(b * a.max_width(), 0.f);
  }
  out_.assign(b * d, 0.f);
  scratch_.assign(std::max<size_t>(a.scratch_bytes(), 64), 0);
  if (key.bf16) {
    in16_.assign(b * d, 0);
    latent16_.assign(b * c, 0);
    ping16_.assign(b * a.max_width(), 0);
    pong16_.assign(b * a.max_width(), 0);
  }
  // Weights and bias point nowhere until a model's call points them at its own.
  auto args = [&](const Architecture::Layer& layer, size_t p, void* src, void* dst,
                  dt dst_type) -> Args {
    const memory::dim batch = memory::dim{1} << p;
    const Architecture::Dense& dense = layer.buckets[p];
    const memory::dim in = layer.shape.inputs, out = layer.shape.outputs;
    const dt src_type = layer.bf16 ? dt::bf16 : dt::f32;
    return {{DNNL_ARG_SRC, memory({{batch, in}, src_type, tag::ab}, eng, src)},
            {DNNL_ARG_DST, memory({{batch, out}, dst_type, tag::ab}, eng, dst)},
            {DNNL_ARG_WEIGHTS, memory(layer.layouts[dense.layout], eng, DNNL_MEMORY_NONE)},
            {DNNL_ARG_BIAS, memory({{out}, dt::f32, tag::a}, eng, DNNL_MEMORY_NONE)},
            {DNNL_ARG_SCRATCHPAD, memory(dense.scratch, eng, scratch_.data())}};
  };
  if (a.neighbours()) {
    const Architecture::Layer& L = *a.neighbours();
    dots_.assign(size_t{key.neighbour_batch} * L.shape.outputs, 0.f);
    for (size_t p = 0; p < L.buckets.size(); ++p) {
      neighbour_args_.push_back(args(L, p, in_.data(), dots_.data(), dt::f32));
    }
  }
  // Layer i reads from and writes to fixed buffers: encoder hidden layers alternate ping/pong,
  // the code head writes `latent_`, decoder hidden layers alternate again, the output is `out_`.
  // bf16 layers read in16_ / latent16_ (converted before the layer runs) and ping16_ / pong16_.
  enum Buffer { kIn, kLatent, kPing, kPong, kOut };
  auto pointer = [&](Buffer buf, bool bf16) -> void* {
    switch (buf) {
      case kIn:
        return bf16 ? static_cast<void*>(in16_.data()) : in_.data();
      case kLatent:
        return bf16 ? static_cast<void*>(latent16_.data()) : latent_.data();
      case kPing:
        return bf16 ? static_cast<void*>(ping16_.data()) : ping_.data();
      case kPong:
        return bf16 ? static_cast<void*>(pong16_.data()) : pong_.data();
      case kOut:
        return out_.data();
    }
    return nullptr;
  };
  const size_t n = a.layers().size(), enc = key.num_encoder;
  std::vector<Buffer> src(n), dst(n);
  for (size_t l = 0; l < n; ++l) {
    const bool first_of_side = l == 0 || l == enc;
    src[l] = l == 0 ? kIn : (l == enc ? kLatent : dst[l - 1]);
    if (l == enc - 1) {
      dst[l] = kLatent;
    } else if (l == n - 1) {
      dst[l] = kOut;
    } else {
      dst[l] = first_of_side || src[l] == kPong ? kPing : kPong;
    }
  }
  // Hidden activations are bf16 in a bf16 architecture; the code and the output never are.
  auto out_type = [&](Buffer buf) {
    return key.bf16 && (buf == kPing || buf == kPong) ? dt::bf16 : dt::f32;
  };
  for (size_t p = 0; p < a.layers().front().buckets.size(); ++p) {
    std::vector<Args> layers;
    for (size_t l = 0; l < n; ++l) {
      layers.push_back(args(a.layers()[l], p, pointer(src[l], key.bf16),
                            pointer(dst[l], out_type(dst[l]) == dt::bf16), out_type(dst[l])));
    }
    if (a.logvar()) {
      logvar_args_.push_back(
          args(*a.logvar(), p, pointer(src[enc - 1], key.bf16), logvar_.data(), dt::f32));
    }
    args_.push_back(std::move(layers));
  }
}

ScoringContext::~ScoringContext() = default;

}  // namespace aeserve::engine
