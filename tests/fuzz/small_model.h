// A tiny untrained model file for the fuzz targets: 4 features, one hidden layer of 8, code 2,
// identity scaling. Each target adds its calibration and thresholds.
#pragma once

#include <random>

#include "aeserve/v1/model.pb.h"
#include "engine/params.h"
#include "engine/spec.h"

namespace aeserve::fuzz {

inline v1::ModelFile SmallModelFile() {
  v1::ModelSpec s;
  s.add_encoder_units(8);
  s.set_code_size(2);
  s.set_neighbors(0);
  auto spec = *engine::ResolveSpec(s, 4);
  std::mt19937_64 rng(1);
  engine::Params p = engine::InitParams(spec, rng);
  v1::ModelFile f;
  f.set_format_version(1);
  *f.mutable_spec() = spec;
  for (int j = 0; j < 4; ++j) {
    f.mutable_scaler()->add_offset(0);
    f.mutable_scaler()->add_scale(1);
  }
  engine::ToModelFile(p, f);
  return f;
}

}  // namespace aeserve::fuzz
