// Feature scaling fitted on training data: z-score, min-max, or none.
#pragma once

#include <cstddef>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "aeserve/v1/model.pb.h"

namespace aeserve::engine {

// Fits a scaler on `rows` x `cols` row-major data, and each feature's mean. NaN is a missing
// value and is left out; +-Inf, or a feature no row observes, gives INVALID_ARGUMENT. Constant
// features get scale 1, so they map to 0 (z-score, min-max) and a later change shows up in
// original units.
absl::StatusOr<v1::Scaler> FitScaler(v1::Scaling method, absl::Span<const float> data, size_t rows,
                                     size_t cols);

// What a missing value becomes in scaled space: the feature's training mean, scaled (files
// without Scaler.mean: the offset for z-score, the middle of the range for min-max).
std::vector<float> ScaledFill(const v1::Scaler& scaler);

}  // namespace aeserve::engine
