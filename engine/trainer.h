// Training an autoencoder from data: split, scale, Adam over mini-batches, early stopping,
// calibration of the threshold on the held-out rows. The result is a complete model file.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "aeserve/v1/model.pb.h"

namespace aeserve::engine {

// Training rows in original units, row-major. NaN is a missing value (ScoringPolicy): it adds no
// gradient; rows missing more features than the policy allows are left out.
struct TrainingData {
  absl::Span<const float> values;
  size_t rows = 0;
  size_t cols = 0;
  std::vector<std::string> feature_names;  // empty, or one per column
  // One per row, increasing: required by series models (spec.window), whose samples are windows
  // over these rows (window.h); ignored otherwise.
  absl::Span<const int64_t> timestamps_ms;
};

struct TrainingProgress {
  uint32_t epoch = 0;  // 1-based, the epoch just finished
  uint32_t epochs = 0;
  double train_loss = 0;
  double validation_loss = 0;  // NaN without a validation split
  double samples_per_second = 0;
  double seconds = 0;  // since training started
};

// Called after every epoch; returning false cancels training (Train returns CANCELLED).
using ProgressCallback = std::function<bool(const TrainingProgress&)>;

struct TrainRequest {
  v1::ModelSpec spec;
  v1::TrainingOptions options;
  v1::ThresholdConfig threshold;
  v1::ScoringPolicy policy;  // unset fields take their defaults; stored in the file
  std::string description;
  // Fine-tuning: start from this model's weights and keep its scaler (same spec required).
  const v1::ModelFile* start_from = nullptr;
  // Checked before every mini-batch: once true, Train returns CANCELLED within one batch (so a
  // shutdown never waits for a long epoch).
  const std::atomic<bool>* cancel = nullptr;
  // Calibrate with bf16 scoring when the policy names no precision (ModelOptions::bf16): the
  // threshold then comes from the errors the server will compute.
  bool bf16 = false;
};

absl::StatusOr<v1::ModelFile> Train(const TrainRequest& request, const TrainingData& data,
                                    const ProgressCallback& progress = {});

}  // namespace aeserve::engine
