// Test and benchmark data: normal rows on a low-dimensional manifold, anomalies off it.
#pragma once

#include <cmath>
#include <random>
#include <vector>

namespace aeserve::engine {

struct SyntheticData {
  std::vector<float> normal;     // rows x features
  std::vector<float> anomalies;  // rows x features
  size_t features = 0;
};

// Normal rows are x = A z + small noise with z of dimension `latent`, features on different
// scales and offsets; anomalies are normal rows with a few features replaced by values that break
// the correlations while staying inside each feature's marginal range.
inline SyntheticData MakeSynthetic(size_t normal_rows, size_t anomaly_rows, size_t features,
                                   size_t latent, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.f, 1.f);
  std::vector<float> a(features * latent), scale(features), offset(features);
  for (float& v : a) v = n01(rng);
  for (size_t j = 0; j < features; ++j) {
    scale[j] = std::exp(n01(rng));
    offset[j] = 10 * n01(rng);
  }
  auto row = [&](float* out) {
    std::vector<float> z(latent);
    for (float& v : z) v = n01(rng);
    for (size_t j = 0; j < features; ++j) {
      float s = 0;
      for (size_t k = 0; k < latent; ++k) s += a[j * latent + k] * z[k];
      out[j] =
          offset[j] + scale[j] * (s / std::sqrt(static_cast<float>(latent)) + 0.05f * n01(rng));
    }
  };
  SyntheticData d;
  d.features = features;
  d.normal.resize(normal_rows * features);
  for (size_t i = 0; i < normal_rows; ++i) row(d.normal.data() + i * features);
  d.anomalies.resize(anomaly_rows * features);
  std::uniform_int_distribution<size_t> pick(0, features - 1);
  for (size_t i = 0; i < anomaly_rows; ++i) {
    float* r = d.anomalies.data() + i * features;
    row(r);
    for (int k = 0; k < 3; ++k) {
      const size_t j = pick(rng);
      r[j] = offset[j] + scale[j] * 2.5f * n01(rng);
    }
  }
  return d;
}

// Area under the ROC curve: the probability that a random anomaly scores above a random normal.
inline double Auc(const std::vector<float>& normal, const std::vector<float>& anomalous) {
  double wins = 0;
  for (float a : anomalous) {
    for (float n : normal) wins += a > n ? 1.0 : (a == n ? 0.5 : 0.0);
  }
  return wins / (static_cast<double>(normal.size()) * anomalous.size());
}

}  // namespace aeserve::engine
