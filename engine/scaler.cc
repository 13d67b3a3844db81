// Feature scaling fitted on training data: z-score, min-max, or none.
#include "scaler.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"

namespace aeserve::engine {

absl::StatusOr<v1::Scaler> FitScaler(v1::Scaling method, absl::Span<const float> data,
                                     size_t rows, size_t cols) {
  if (rows == 0 || cols == 0 || data.size() != rows * cols) {
    return absl::InvalidArgumentError("scaler: data must be a non-empty rows x cols matrix");
  }
  v1::Scaler scaler;
  scaler.set_method(method);
  std::vector<double> offset(cols, 0.0), scale(cols, 1.0);
  if (method == v1::SCALING_STANDARD) {
    // Two passes in double: the mean first, then the variance about it (no cancellation).
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) offset[c] += data[r * cols + c];
    }
    for (double& m : offset) m /= static_cast<double>(rows);
    std::vector<double> var(cols, 0.0);
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) {
        const double d = data[r * cols + c] - offset[c];
        var[c] += d * d;
      }
    }
    for (size_t c = 0; c < cols; ++c) {
      const double sd = std::sqrt(var[c] / static_cast<double>(rows));
      scale[c] = sd > 1e-12 * std::max(1.0, std::abs(offset[c])) ? sd : 1.0;
    }
  } else if (method == v1::SCALING_MINMAX) {
    std::vector<double> lo(cols, INFINITY), hi(cols, -INFINITY);
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) {
        lo[c] = std::min<double>(lo[c], data[r * cols + c]);
        hi[c] = std::max<double>(hi[c], data[r * cols + c]);
      }
    }
    for (size_t c = 0; c < cols; ++c) {
      offset[c] = lo[c];
      const double range = hi[c] - lo[c];
      scale[c] = range > 1e-12 * std::max(1.0, std::abs(lo[c])) ? range : 1.0;
    }
  } else if (method != v1::SCALING_NONE) {
    return absl::InvalidArgumentError("scaler: unknown scaling method");
  }
  for (size_t c = 0; c < cols; ++c) {
    if (!std::isfinite(offset[c]) || !std::isfinite(scale[c])) {
      return absl::InvalidArgumentError(
          absl::StrCat("scaler: feature ", c, " has non-finite values"));
    }
    scaler.add_offset(static_cast<float>(offset[c]));
    scaler.add_scale(static_cast<float>(scale[c]));
  }
  return scaler;
}

}  // namespace aeserve::engine
