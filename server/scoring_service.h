// The aeserve.v1.Scoring service on gRPC's callback API. Unary calls are handed to the executor
// (RESOURCE_EXHAUSTED when its queue is full); streams get a StreamReactor each.
#pragma once

#include <chrono>

#include "aeserve/v1/scoring.grpc.pb.h"
#include "anomaly_feed.h"
#include "auth.h"
#include "server_metrics.h"
#include "executor.h"
#include "model_registry.h"
#include "options.h"
#include "stream_reactor.h"

namespace aeserve::server {

class ScoringService final : public v1::Scoring::CallbackService {
 public:
  // `metrics` may be null (metrics off).
  ScoringService(const Options& options, const ModelRegistry* registry, Executor* executor,
                 StreamTracker* streams, const Authorizer* auth, ServerMetrics* metrics,
                 AnomalyFeed* feed)
      : options_(options), registry_(registry), executor_(executor), streams_(streams), auth_(auth),
        metrics_(metrics), feed_(feed) {}

  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx, const v1::ScoreRequest* req,
                                  v1::ScoreResponse* resp) override;
  grpc::ServerBidiReactor<v1::StreamScoreRequest, v1::StreamScoreResponse>* StreamScore(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* ctx, const v1::EncodeRequest* req,
                                   v1::EncodeResponse* resp) override;
  grpc::ServerUnaryReactor* Reconstruct(grpc::CallbackServerContext* ctx,
                                        const v1::ReconstructRequest* req,
                                        v1::ReconstructResponse* resp) override;
  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* ctx,
                                     const v1::GenerateRequest* req,
                                     v1::GenerateResponse* resp) override;
  grpc::ServerWriteReactor<v1::AnomalyEvent>* WatchAnomalies(
      grpc::CallbackServerContext* ctx, const v1::WatchAnomaliesRequest* req) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest* req,
                                       v1::ListModelsResponse* resp) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const v1::GetModelRequest* req, v1::ModelInfo* resp) override;

 private:
  // Looks up the model, then runs `fn(handle, worker)` on the executor and finishes the call
  // with its status.
  template <typename Fn>
  grpc::ServerUnaryReactor* OnExecutor(grpc::CallbackServerContext* ctx, const char* rpc,
                                       const std::string& model, const std::string& entity,
                                       uint64_t version, Fn fn);
  // Finishes a call and counts it.
  void Done(grpc::ServerUnaryReactor* reactor, const char* rpc, const grpc::Status& st,
            std::chrono::steady_clock::time_point start);

  const Options& options_;
  const ModelRegistry* registry_;
  Executor* executor_;
  StreamTracker* streams_;
  const Authorizer* auth_;
  ServerMetrics* metrics_;
  AnomalyFeed* feed_;
};

}  // namespace aeserve::server
