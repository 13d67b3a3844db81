// Test helpers for the API: upload a training job, watch it to the end, ask whether a model serves.
#pragma once

#include <vector>

#include "aeserve/v1/admin.grpc.pb.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace aeserve::testing {

// Uploads `values` in chunks of `chunk_rows` rows after `header`; returns the call status.
// header.rows, when unset, is the number of whole rows in `values`.
inline grpc::Status CreateJob(v1::ModelAdmin::Stub* stub, v1::TrainingJobHeader header,
                              const std::vector<float>& values, v1::TrainingJob* job,
                              const std::string& token = "", size_t chunk_rows = 500,
                              const std::vector<std::string>& entities = {}) {
  if (header.rows() == 0 && header.num_features() > 0)
    header.set_rows(values.size() / header.num_features());
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto writer = stub->CreateTrainingJob(&ctx, job);
  const size_t d = header.num_features();
  const size_t chunk = chunk_rows * d;
  for (size_t start = 0; start < values.size() || start == 0; start += chunk) {
    v1::CreateTrainingJobRequest req;
    if (start == 0) *req.mutable_header() = header;
    const size_t end = std::min(values.size(), start + chunk);
    req.mutable_values()->Add(values.begin() + start, values.begin() + end);
    if (!entities.empty()) {  // bulk entity training: each row's entity
      const size_t first = start / d, last = std::min(entities.size(), end / d);
      for (size_t r = first; r < last; ++r) req.add_entities(entities[r]);
    }
    if (!writer->Write(req)) break;
    if (values.empty()) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

// Every state the watch stream delivers, until the job ends.
inline std::vector<v1::TrainingJob> WatchToEnd(v1::ModelAdmin::Stub* stub, const std::string& id,
                                               const std::string& token = "") {
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  v1::GetTrainingJobRequest req;
  req.set_id(id);
  auto reader = stub->WatchTrainingJob(&ctx, req);
  std::vector<v1::TrainingJob> states;
  v1::TrainingJob s;
  while (reader->Read(&s)) states.push_back(s);
  grpc::Status st = reader->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  return states;
}

// True once `model`'s active version serves (a model is listed as LOADING before); for WaitFor.
inline bool ModelReady(v1::Scoring::Stub* stub, const std::string& model) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::GetModelRequest req;
  req.set_model(model);
  v1::ModelInfo info;
  return stub->GetModel(&ctx, req, &info).ok() && info.state() == v1::MODEL_STATE_READY;
}

}  // namespace aeserve::testing
