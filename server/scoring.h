// The one place a batch of samples becomes a ScoreResponse (and an Encode/Reconstruct/Generate
// answer): request validation, engine call, columnar response. Used by unary and stream calls.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "aeserve/v1/scoring.pb.h"
#include "anomaly_feed.h"
#include "executor.h"
#include "model_registry.h"

namespace aeserve::server {

// Checks the shape of `samples` against the model: INVALID_ARGUMENT naming the problem, or
// RESOURCE_EXHAUSTED over `max_rows`. Values themselves (NaN/Inf) are checked by the engine.
absl::Status ValidateSamples(const engine::Model& model, const v1::Samples& samples,
                             uint32_t max_rows);

// Where a scored batch also goes: the anomaly feed, with the stream's id.
struct ScoreHooks {
  AnomalyFeed* feed = nullptr;
  std::string stream_id;
};

absl::Status ScoreSamples(const ModelHandle& handle, const v1::Samples& samples,
                          const v1::ScoreOptions& options, uint32_t max_rows, Worker& worker,
                          v1::ScoreResponse* response, const ScoreHooks& hooks = {});

absl::Status EncodeSamples(const ModelHandle& handle, const v1::Samples& samples,
                           uint32_t max_rows, Worker& worker, v1::EncodeResponse* response);
absl::Status ReconstructSamples(const ModelHandle& handle, const v1::Samples& samples,
                                uint32_t max_rows, Worker& worker,
                                v1::ReconstructResponse* response);
absl::Status GenerateSamples(const ModelHandle& handle, uint32_t count, uint64_t seed,
                             uint32_t max_rows, Worker& worker, v1::GenerateResponse* response);

}  // namespace aeserve::server
