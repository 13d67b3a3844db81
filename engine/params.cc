// The trainable parameters of an autoencoder: dense layers in plain row-major [out][in] layout.
#include "engine/params.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace aeserve::engine {

Params InitParams(const v1::ModelSpec& spec, std::mt19937_64& rng) {
  const LayerShapes shapes = ShapesOf(spec);
  Params p;
  p.num_encoder = shapes.encoder.size();
  auto add = [&](const LayerShape& s) {
    DenseParams d{s, std::vector<float>(size_t{s.outputs} * s.inputs),
                  std::vector<float>(s.outputs)};
    const bool rectifier = s.activation == v1::ACTIVATION_RELU ||
                           s.activation == v1::ACTIVATION_LEAKY_RELU ||
                           s.activation == v1::ACTIVATION_ELU;
    const double limit =
        rectifier ? std::sqrt(6.0 / s.inputs) : std::sqrt(6.0 / (s.inputs + s.outputs));
    std::uniform_real_distribution<float> u(static_cast<float>(-limit), static_cast<float>(limit));
    for (float& w : d.weights) w = u(rng);
    p.layers.push_back(std::move(d));
  };
  for (const auto& s : shapes.encoder) add(s);
  for (const auto& s : shapes.decoder) add(s);
  return p;
}

void ToModelFile(const Params& params, v1::ModelFile& file) {
  file.clear_encoder();
  file.clear_decoder();
  for (size_t i = 0; i < params.layers.size(); ++i) {
    const DenseParams& d = params.layers[i];
    v1::DenseLayer* l = i < params.num_encoder ? file.add_encoder() : file.add_decoder();
    l->set_inputs(d.shape.inputs);
    l->set_outputs(d.shape.outputs);
    l->set_activation(d.shape.activation);
    l->mutable_weights()->Add(d.weights.begin(), d.weights.end());
    l->mutable_bias()->Add(d.bias.begin(), d.bias.end());
  }
}

absl::StatusOr<Params> FromModelFile(const v1::ModelFile& file) {
  const LayerShapes shapes = ShapesOf(file.spec());
  if (static_cast<size_t>(file.encoder_size()) != shapes.encoder.size() ||
      static_cast<size_t>(file.decoder_size()) != shapes.decoder.size()) {
    return absl::InvalidArgumentError("model: layer count does not match the spec");
  }
  Params p;
  p.num_encoder = shapes.encoder.size();
  auto add = [&](const v1::DenseLayer& l, const LayerShape& s) -> absl::Status {
    if (l.inputs() != s.inputs || l.outputs() != s.outputs || l.activation() != s.activation ||
        static_cast<size_t>(l.weights_size()) != size_t{s.inputs} * s.outputs ||
        static_cast<size_t>(l.bias_size()) != s.outputs) {
      return absl::InvalidArgumentError(
          absl::StrCat("model: layer ", p.layers.size(), " does not match the spec"));
    }
    for (float w : l.weights()) {
      if (!std::isfinite(w)) return absl::InvalidArgumentError("model: non-finite weight");
    }
    for (float b : l.bias()) {
      if (!std::isfinite(b)) return absl::InvalidArgumentError("model: non-finite bias");
    }
    p.layers.push_back(
        {s, {l.weights().begin(), l.weights().end()}, {l.bias().begin(), l.bias().end()}});
    return absl::OkStatus();
  };
  for (size_t i = 0; i < shapes.encoder.size(); ++i) {
    if (auto st = add(file.encoder(i), shapes.encoder[i]); !st.ok()) return st;
  }
  for (size_t i = 0; i < shapes.decoder.size(); ++i) {
    if (auto st = add(file.decoder(i), shapes.decoder[i]); !st.ok()) return st;
  }
  return p;
}

}  // namespace aeserve::engine
