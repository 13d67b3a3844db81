// The one place a batch of samples becomes a ScoreResponse (and an Encode/Reconstruct/Generate
// answer): request validation, engine call, columnar response. Used by unary and stream calls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "aeserve/v1/scoring.pb.h"
#include "engine/window.h"
#include "server/anomaly_feed.h"
#include "server/autopilot.h"
#include "server/executor.h"
#include "server/model_registry.h"

namespace aeserve::server {

// The batch's values as rows of the model's features in its order (a series model's columns of
// one time step): checks the shape of
// `samples` (INVALID_ARGUMENT naming the problem, RESOURCE_EXHAUSTED over `max_rows`) and, when
// the columns are named, matches them to the model's features (columns.h), rearranging into
// `buffer` (absent features NaN, refused when more than the model's policy allows). Values
// themselves (NaN = missing, Inf) are checked by the engine.
absl::StatusOr<absl::Span<const float>> ModelValues(const engine::Model& model,
                                                    const v1::Samples& samples, uint32_t max_rows,
                                                    std::vector<float>* buffer,
                                                    const v1::StreamConfig* stream = nullptr);

// Multiply-adds per value a request sends to `model`: a sample's madds over the values of one row
// of its features (a series model: of one time step's columns). Weighs a request (values x this)
// before choosing where it runs.
double MaddsPerValue(const engine::Model& model);
// Whether `values` values at `madds_per_value` each (0 = not known yet) are light enough to score
// on the gRPC thread that received them: at most `max_madds` (--inline_max_madds; 0 = never).
bool LightEnoughToScoreHere(uint64_t max_madds, size_t values, double madds_per_value);

// What else a scored batch involves: the anomaly feed, and for stream batches the stream's
// config (its id for events; its column names for batches that carry none).
struct ScoreHooks {
  AnomalyFeed* feed = nullptr;
  const v1::StreamConfig* stream = nullptr;
  // Series models: the stream's window, carried from batch to batch (made, or made again when the
  // model's window no longer fits it). nullptr = a unary call: its rows are a series of their own.
  std::unique_ptr<engine::WindowBuffer>* window = nullptr;
  // Retention, retrain triggers and shadow windows (null: none).
  Autopilot* autopilot = nullptr;
  // The entity the rows come from (for events), also when the generic model scores them.
  std::string source_entity;
  // Or one per row, when a batch holds the rows of several entities (ingest).
  const std::vector<std::string>* source_entities = nullptr;
  // Stream calls: sets the response's alarms and incidents (before retention sees them).
  std::function<void(v1::ScoreResponse*)> debounce = nullptr;
};

absl::Status ScoreSamples(const ModelHandle& handle, const v1::Samples& samples,
                          const v1::ScoreOptions& options, uint32_t max_rows, Worker& worker,
                          v1::ScoreResponse* response, const ScoreHooks& hooks = {});

absl::Status EncodeSamples(const ModelHandle& handle, const v1::Samples& samples, uint32_t max_rows,
                           Worker& worker, v1::EncodeResponse* response);
absl::Status ReconstructSamples(const ModelHandle& handle, const v1::Samples& samples,
                                uint32_t max_rows, Worker& worker,
                                v1::ReconstructResponse* response);
absl::Status GenerateSamples(const ModelHandle& handle, uint32_t count, uint64_t seed,
                             uint32_t max_rows, Worker& worker, v1::GenerateResponse* response);

}  // namespace aeserve::server
