// Feature scaling fitted on training data: z-score, min-max, or none.
#include "engine/scaler.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"

namespace aeserve::engine {

absl::StatusOr<v1::Scaler> FitScaler(v1::Scaling method, absl::Span<const float> data, size_t rows,
                                     size_t cols) {
  if (rows == 0 || cols == 0 || data.size() != rows * cols) {
    return absl::InvalidArgumentError("scaler: data must be a non-empty rows x cols matrix");
  }
  if (method != v1::SCALING_STANDARD && method != v1::SCALING_MINMAX &&
      method != v1::SCALING_NONE) {
    return absl::InvalidArgumentError("scaler: unknown scaling method");
  }
  // Observed values only (NaN = missing). Two passes in double: the mean first, then the
  // variance about it (no cancellation).
  std::vector<double> mean(cols, 0.0), var(cols, 0.0), lo(cols, INFINITY), hi(cols, -INFINITY);
  std::vector<size_t> seen(cols, 0);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      const float v = data[r * cols + c];
      if (std::isnan(v)) continue;
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(
            absl::StrCat("scaler: infinite value at row ", r, ", feature ", c));
      }
      mean[c] += v;
      lo[c] = std::min<double>(lo[c], v);
      hi[c] = std::max<double>(hi[c], v);
      ++seen[c];
    }
  }
  for (size_t c = 0; c < cols; ++c) {
    if (seen[c] == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("scaler: feature ", c, " has no observed value (every row misses it)"));
    }
    mean[c] /= static_cast<double>(seen[c]);
  }
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      const float v = data[r * cols + c];
      if (!std::isnan(v)) var[c] += (v - mean[c]) * (v - mean[c]);
    }
  }
  v1::Scaler scaler;
  scaler.set_method(method);
  for (size_t c = 0; c < cols; ++c) {
    double offset = 0, scale = 1;
    if (method == v1::SCALING_STANDARD) {
      const double sd = std::sqrt(var[c] / static_cast<double>(seen[c]));
      offset = mean[c];
      scale = sd > 1e-12 * std::max(1.0, std::abs(mean[c])) ? sd : 1.0;
    } else if (method == v1::SCALING_MINMAX) {
      const double range = hi[c] - lo[c];
      offset = lo[c];
      scale = range > 1e-12 * std::max(1.0, std::abs(lo[c])) ? range : 1.0;
    }
    if (!std::isfinite(offset) || !std::isfinite(scale) || !std::isfinite(mean[c])) {
      return absl::InvalidArgumentError(absl::StrCat("scaler: feature ", c, " overflows"));
    }
    scaler.add_offset(static_cast<float>(offset));
    scaler.add_scale(static_cast<float>(scale));
    scaler.add_mean(static_cast<float>(mean[c]));
  }
  return scaler;
}

std::vector<float> ScaledFill(const v1::Scaler& s) {
  const int d = s.offset_size();
  std::vector<float> fill(static_cast<size_t>(d), 0.f);
  for (int j = 0; j < d; ++j) {
    double mean;
    if (s.mean_size() == d) {
      mean = s.mean(j);
    } else if (s.method() == v1::SCALING_MINMAX) {
      mean = s.offset(j) + 0.5 * s.scale(j);  // files from before Scaler.mean: mid-range
    } else {
      mean = s.offset(j);  // z-score: the offset is the mean (no scaling: 0)
    }
    fill[static_cast<size_t>(j)] = static_cast<float>((mean - s.offset(j)) / s.scale(j));
  }
  return fill;
}

}  // namespace aeserve::engine
