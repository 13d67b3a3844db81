// The trainable parameters of an autoencoder: dense layers in plain row-major [out][in] layout.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "aeserve/v1/model.pb.h"
#include "engine/spec.h"

namespace aeserve::engine {

struct DenseParams {
  LayerShape shape;
  std::vector<float> weights;  // shape.outputs * shape.inputs
  std::vector<float> bias;     // shape.outputs
};

// Encoder layers (code layer last) followed by decoder layers (output layer last).
struct Params {
  std::vector<DenseParams> layers;
  size_t num_encoder = 0;
};

// He-uniform initialisation for rectifier-like activations, Glorot-uniform otherwise; zero bias.
Params InitParams(const v1::ModelSpec& resolved, std::mt19937_64& rng);

// Conversions to and from the layers of a model file; FromModelFile checks every shape.
void ToModelFile(const Params& params, v1::ModelFile& file);
absl::StatusOr<Params> FromModelFile(const v1::ModelFile& file);

}  // namespace aeserve::engine
