// The aeserve.v1.Scoring service on gRPC's callback API. Unary calls are handed to the executor
// (RESOURCE_EXHAUSTED when its queue is full); streams get a StreamReactor each.
#pragma once

#include <chrono>

#include "aeserve/v1/scoring.grpc.pb.h"
#include "server/anomaly_feed.h"
#include "server/auth.h"
#include "server/autopilot.h"
#include "server/executor.h"
#include "server/ingest.h"
#include "server/model_registry.h"
#include "server/model_view.h"
#include "server/options.h"
#include "server/raw_call.h"
#include "server/server_metrics.h"
#include "server/stream_reactor.h"
#include "server/training_jobs.h"

namespace aeserve::server {

// Every method raw (see raw_call.h): the service parses its requests itself.
using RawScoringService = v1::Scoring::WithRawCallbackMethod_Score<
    v1::Scoring::WithRawCallbackMethod_StreamScore<v1::Scoring::WithRawCallbackMethod_Encode<
        v1::Scoring::WithRawCallbackMethod_Reconstruct<v1::Scoring::WithRawCallbackMethod_Generate<
            v1::Scoring::WithRawCallbackMethod_ListModels<
                v1::Scoring::WithRawCallbackMethod_GetModel<
                    WithStreamedMethods<v1::Scoring::Service>>>>>>>>;

class ScoringService final : public RawScoringService {
 public:
  // `metrics` may be null (metrics off). With `auth` enabled the unary methods are streamed
  // (raw_call.h): the token is checked before a request is read.
  ScoringService(const Options& options, const ModelRegistry* registry, Executor* executor,
                 StreamTracker* streams, const Authorizer* auth, ServerMetrics* metrics,
                 AnomalyFeed* feed, Autopilot* autopilot = nullptr,
                 const TrainingJobs* jobs = nullptr, const Ingest* ingest = nullptr);

  using Raw = grpc::ByteBuffer;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx, const Raw* req,
                                  Raw* resp) override;
  grpc::ServerBidiReactor<Raw, Raw>* StreamScore(grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* ctx, const Raw* req,
                                   Raw* resp) override;
  grpc::ServerUnaryReactor* Reconstruct(grpc::CallbackServerContext* ctx, const Raw* req,
                                        Raw* resp) override;
  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* ctx, const Raw* req,
                                     Raw* resp) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx, const Raw* req,
                                       Raw* resp) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx, const Raw* req,
                                     Raw* resp) override;

 private:
  // The unary methods, on a parsed request (either path of raw_call.h); each replies.
  void ScoreCall(grpc::CallbackServerContext* ctx,
                 UnaryCall<v1::ScoreRequest, v1::ScoreResponse>* call);
  void EncodeCall(grpc::CallbackServerContext* ctx,
                  UnaryCall<v1::EncodeRequest, v1::EncodeResponse>* call);
  void ReconstructCall(grpc::CallbackServerContext* ctx,
                       UnaryCall<v1::ReconstructRequest, v1::ReconstructResponse>* call);
  void GenerateCall(grpc::CallbackServerContext* ctx,
                    UnaryCall<v1::GenerateRequest, v1::GenerateResponse>* call);
  void ListModelsCall(grpc::CallbackServerContext* ctx,
                      UnaryCall<v1::ListModelsRequest, v1::ListModelsResponse>* call);
  void GetModelCall(grpc::CallbackServerContext* ctx,
                    UnaryCall<v1::GetModelRequest, v1::ModelInfo>* call);
  // Looks up the model, then runs `fn(handle, worker)` on the executor and replies with its
  // status. `values`: the request's size, when it may run on this thread (--inline_max_madds).
  template <typename Call, typename Fn>
  void OnExecutor(grpc::CallbackServerContext* ctx, Call* call, const char* rpc,
                  const std::string& model, const std::string& entity, uint64_t version, Fn fn,
                  size_t values = SIZE_MAX);

  const Options& options_;
  const ModelRegistry* registry_;
  const ModelView view_;
  Executor* executor_;
  StreamTracker* streams_;
  const Authorizer* auth_;
  ServerMetrics* metrics_;
  AnomalyFeed* feed_;
  Autopilot* autopilot_;      // may be null
  const TrainingJobs* jobs_;  // may be null: explains a model that is still training
  const Ingest* ingest_;      // may be null
};

}  // namespace aeserve::server
