// The aeserve.v1.Scoring service on gRPC's callback API.
#include "scoring_service.h"

#include "scoring.h"
#include "status_util.h"

namespace aeserve::server {

template <typename Fn>
grpc::ServerUnaryReactor* ScoringService::OnExecutor(grpc::CallbackServerContext* ctx,
                                                     const std::string& model,
                                                     const std::string& entity, uint64_t version,
                                                     Fn fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = auth_->Check(ctx, Role::kScore); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  auto handle = registry_->Get(model, entity, version);
  if (!handle.ok()) {
    reactor->Finish(ToGrpc(handle.status()));
    return reactor;
  }
  const bool queued = executor_->TrySubmit(
      [ctx, reactor, h = *std::move(handle), fn = std::move(fn)](Worker& worker) mutable {
        // Work for a call whose client gave up or whose deadline passed is skipped.
        if (ctx->IsCancelled()) {
          reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled before scoring"));
          return;
        }
        reactor->Finish(ToGrpc(fn(h, worker)));
      });
  if (!queued) {
    reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 "scoring queue is full; retry with backoff"));
  }
  return reactor;
}

grpc::ServerUnaryReactor* ScoringService::Score(grpc::CallbackServerContext* ctx,
                                                const v1::ScoreRequest* req,
                                                v1::ScoreResponse* resp) {
  return OnExecutor(ctx, req->model(), req->entity(), req->version(),
                    [this, req, resp](const ModelHandle& h, Worker& w) {
                      return ScoreSamples(h, req->samples(), req->options(),
                                          options_.max_batch_rows, w, resp);
                    });
}

grpc::ServerBidiReactor<v1::StreamScoreRequest, v1::StreamScoreResponse>*
ScoringService::StreamScore(grpc::CallbackServerContext* ctx) {
  return new StreamReactor(options_, registry_, executor_, streams_, auth_->Check(ctx, Role::kScore));
}

grpc::ServerUnaryReactor* ScoringService::Encode(grpc::CallbackServerContext* ctx,
                                                 const v1::EncodeRequest* req,
                                                 v1::EncodeResponse* resp) {
  return OnExecutor(ctx, req->model(), "", req->version(),
                    [this, req, resp](const ModelHandle& h, Worker& w) {
                      return EncodeSamples(h, req->samples(), options_.max_batch_rows, w, resp);
                    });
}

grpc::ServerUnaryReactor* ScoringService::Reconstruct(grpc::CallbackServerContext* ctx,
                                                      const v1::ReconstructRequest* req,
                                                      v1::ReconstructResponse* resp) {
  return OnExecutor(ctx, req->model(), "", req->version(),
                    [this, req, resp](const ModelHandle& h, Worker& w) {
                      return ReconstructSamples(h, req->samples(), options_.max_batch_rows, w,
                                                resp);
                    });
}

grpc::ServerUnaryReactor* ScoringService::Generate(grpc::CallbackServerContext* ctx,
                                                   const v1::GenerateRequest* req,
                                                   v1::GenerateResponse* resp) {
  return OnExecutor(ctx, req->model(), "", req->version(),
                    [this, req, resp](const ModelHandle& h, Worker& w) {
                      return GenerateSamples(h, req->count(), req->seed(),
                                             options_.max_batch_rows, w, resp);
                    });
}

grpc::ServerUnaryReactor* ScoringService::ListModels(grpc::CallbackServerContext* ctx,
                                                     const v1::ListModelsRequest*,
                                                     v1::ListModelsResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  grpc::Status st = auth_->Check(ctx, Role::kScore);
  if (st.ok()) {
    for (auto& info : registry_->List()) *resp->add_models() = std::move(info);
  }
  reactor->Finish(st);
  return reactor;
}

grpc::ServerUnaryReactor* ScoringService::GetModel(grpc::CallbackServerContext* ctx,
                                                   const v1::GetModelRequest* req,
                                                   v1::ModelInfo* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = auth_->Check(ctx, Role::kScore); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  auto key = MakeKey(req->model(), req->entity());
  if (!key.ok()) {
    reactor->Finish(ToGrpc(key.status()));
    return reactor;
  }
  auto info = registry_->Info(*key);
  if (info.ok()) *resp = *std::move(info);
  reactor->Finish(ToGrpc(info.status()));
  return reactor;
}

}  // namespace aeserve::server
