// Feature scaling fitted on training data: z-score, min-max, or none.
#pragma once

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "aeserve/v1/model.pb.h"

namespace aeserve::engine {

// Fits a scaler on `rows` x `cols` row-major data. Constant features get scale 1, so they map to
// 0 (z-score, min-max) and a later change shows up in original units. Non-finite values give
// INVALID_ARGUMENT.
absl::StatusOr<v1::Scaler> FitScaler(v1::Scaling method, absl::Span<const float> data,
                                     size_t rows, size_t cols);

}  // namespace aeserve::engine
