// The compiled half of a model, shared by every model of the same architecture: the oneDNN
// primitives of each batch bucket, the weight layouts they read, and the per-thread scoring
// contexts (buffers, scratchpad) sized for them. A Model (model.h) holds only its own weights,
// reordered once into these layouts, so ten thousand entity models of one spec share one set of
// primitives and one context per scoring thread.
//
// Architectures live in a process-wide cache while any model uses them; a new one is compiled
// (every bucket's primitives, and `contexts` scoring contexts) before the first model of it is
// returned, so no primitive and no context is built on the request path.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "aeserve/v1/model.pb.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace aeserve::engine {

// One dense layer as the primitives see it.
struct DenseShape {
  uint32_t inputs = 0, outputs = 0;
  v1::Activation activation = v1::ACTIVATION_LINEAR;
  float alpha = 0;          // the activation's parameter (leaky ReLU's slope)
  bool transposed = false;  // weights stored inputs-major (the neighbour layer's fixed layout);
                            // otherwise in the layout oneDNN prefers for each bucket
};

// Everything the primitives depend on; equal keys share one Architecture.
struct ArchitectureKey {
  std::vector<DenseShape> layers;  // encoder (code head last), then decoder
  size_t num_encoder = 0;
  std::optional<DenseShape> logvar;      // variational models: the log sigma^2 half of the head
  std::optional<DenseShape> neighbours;  // models with neighbours: features -> reference rows
  uint32_t max_batch = 0;                // buckets 1, 2, 4, ..., max_batch
  uint32_t neighbour_batch = 0;          // neighbour buckets 1, 2, ..., neighbour_batch
  int threads = 1;                       // oneDNN threads per call, fixed at creation
  bool compact = false;                  // weights in layouts without padding (ModelOptions)
  // Layers read bfloat16 inputs and weights and write bfloat16 hidden activations; the code
  // head, the log sigma^2 half and the output write f32 (the neighbour layer stays f32).
  bool bf16 = false;
  std::string str() const;
  // The widest layer's inputs or outputs (the scoring buffers' row width).
  uint32_t max_width() const;
};

class ScoringContext;

class Architecture {
 public:
  // One layer's primitive for one bucket.
  struct Dense {
    dnnl::inner_product_forward fwd;
    uint32_t layout = 0;  // index into Layer::layouts
    dnnl::memory::desc scratch;
  };
  struct Layer {
    DenseShape shape;
    bool bf16 = false;                        // reads bf16 inputs and weights
    std::vector<dnnl::memory::desc> layouts;  // the distinct weight layouts of its buckets
    std::vector<Dense> buckets;               // one per bucket
  };

  // The architecture for `key`, from the cache or compiled now with `contexts` spare contexts.
  // Throws dnnl::error (callers wrap it in CatchDnnl).
  static std::shared_ptr<const Architecture> Get(const ArchitectureKey& key, size_t contexts);
  // Architectures alive in the process (models of them are loaded).
  static size_t Live();

  ~Architecture();

  const ArchitectureKey& key() const { return key_; }
  const dnnl::engine& engine() const { return engine_; }
  const std::vector<Layer>& layers() const { return layers_; }
  const std::optional<Layer>& logvar() const { return logvar_; }
  const std::optional<Layer>& neighbours() const { return neighbours_; }
  uint32_t features() const { return key_.layers.front().inputs; }
  uint32_t code_size() const { return key_.layers[key_.num_encoder - 1].outputs; }
  uint32_t max_width() const { return key_.max_width(); }
  size_t scratch_bytes() const { return scratch_bytes_; }
  // Bytes a scoring context of this architecture holds.
  size_t context_bytes() const;

  // A context for one thread: a spare one made at compile time, else a new one.
  std::unique_ptr<ScoringContext> TakeContext() const;

 private:
  explicit Architecture(ArchitectureKey key);
  // `bf16`: bf16 input and weights; `bf16_out`: bf16 output too.
  Layer Compile(const DenseShape& shape, uint32_t max_batch, bool bf16, bool bf16_out);

  const ArchitectureKey key_;
  dnnl::engine engine_;
  std::vector<Layer> layers_;
  std::optional<Layer> logvar_, neighbours_;
  size_t scratch_bytes_ = 0;
  mutable std::mutex spare_mu_;
  mutable std::vector<std::unique_ptr<ScoringContext>> spare_;
};

// Per-thread state for scoring with any model of one architecture: a oneDNN stream, buffers for
// the largest bucket, the scratchpad, and argument maps built once per bucket (a model puts its
// own weights into them for each call). Use one context from one thread at a time.
class ScoringContext {
 public:
  explicit ScoringContext(const Architecture& arch);
  ~ScoringContext();
  const Architecture& architecture() const { return arch_; }
  using Args = std::unordered_map<int, dnnl::memory>;  // one primitive's arguments

 private:
  friend class Model;

  const Architecture& arch_;
  dnnl::stream stream_;
  std::vector<float> in_, latent_, logvar_, ping_, pong_, out_, dots_;
  std::vector<float> nearest_scratch_;  // the k-nearest selection's (nearest.h), reused
  // bf16 architectures: the input and the code as the next layer reads them (converted from
  // in_ and latent_), and the hidden activations.
  std::vector<uint16_t> in16_, latent16_, ping16_, pong16_;
  std::vector<uint8_t> scratch_;
  std::vector<std::vector<Args>> args_;  // per bucket, per layer
  std::vector<Args> logvar_args_;        // per bucket
  std::vector<Args> neighbour_args_;     // per neighbour bucket
};

}  // namespace aeserve::engine
