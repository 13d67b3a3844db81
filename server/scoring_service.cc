// The aeserve.v1.Scoring service on gRPC's callback API.
#include "scoring_service.h"

#include "scoring.h"
#include "status_util.h"

namespace aeserve::server {

using Clock = std::chrono::steady_clock;

void ScoringService::Done(grpc::ServerUnaryReactor* reactor, const char* rpc,
                          const grpc::Status& st, Clock::time_point start) {
  if (metrics_ != nullptr) {
    metrics_->RecordRequest(rpc, st.error_code(),
                            std::chrono::duration<double>(Clock::now() - start).count());
  }
  reactor->Finish(st);
}

template <typename Fn>
grpc::ServerUnaryReactor* ScoringService::OnExecutor(grpc::CallbackServerContext* ctx,
                                                     const char* rpc, const std::string& model,
                                                     const std::string& entity, uint64_t version,
                                                     Fn fn) {
  const auto start = Clock::now();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = auth_->Check(ctx, Role::kScore); !st.ok()) {
    Done(reactor, rpc, st, start);
    return reactor;
  }
  auto handle = registry_->Get(model, entity, version);
  if (!handle.ok()) {
    Done(reactor, rpc, ToGrpc(handle.status()), start);
    return reactor;
  }
  const bool queued = executor_->TrySubmit(
      [this, ctx, reactor, rpc, start, h = *std::move(handle), fn = std::move(fn)](Worker& worker) mutable {
        // Work for a call whose client gave up or whose deadline passed is skipped.
        if (ctx->IsCancelled()) {
          Done(reactor, rpc, grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled before scoring"), start);
          return;
        }
        const auto began = Clock::now();
        const grpc::Status st = ToGrpc(fn(h, worker));
        if (metrics_ != nullptr) {
          metrics_->RecordQueueAndCompute(rpc, std::chrono::duration<double>(began - start).count(),
                                          std::chrono::duration<double>(Clock::now() - began).count());
        }
        Done(reactor, rpc, st, start);
      });
  if (!queued) {
    if (metrics_ != nullptr) metrics_->RecordRejected("queue_full");
    Done(reactor, rpc, grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                    "scoring queue is full; retry with backoff"), start);
  }
  return reactor;
}

grpc::ServerUnaryReactor* ScoringService::Score(grpc::CallbackServerContext* ctx,
                                                const v1::ScoreRequest* req,
                                                v1::ScoreResponse* resp) {
  return OnExecutor(ctx, "Score", req->model(), req->entity(), req->version(),
                    [this, req, resp](const ModelHandle& h, Worker& w) {
                      return ScoreSamples(h, req->samples(), req->options(),
                                          options_.max_batch_rows, w, resp, ScoreHooks{feed_, ""});
                    });
}

grpc::ServerBidiReactor<v1::StreamScoreRequest, v1::StreamScoreResponse>*
ScoringService::StreamScore(grpc::CallbackServerContext* ctx) {
  return new StreamReactor(options_, registry_, executor_, streams_, auth_->Check(ctx, Role::kScore),
                           metrics_, feed_);
}

grpc::ServerWriteReactor<v1::AnomalyEvent>* ScoringService::WatchAnomalies(
    grpc::CallbackServerContext* ctx, const v1::WatchAnomaliesRequest* req) {
  return new AnomalyWatcher(feed_, *req, 1024, auth_->Check(ctx, Role::kScore));
}

grpc::ServerUnaryReactor* ScoringService::Encode(grpc::CallbackServerContext* ctx,
                                                 const v1::EncodeRequest* req,
                                                 v1::EncodeResponse* resp) {
  return OnExecutor(ctx, "Encode", req->model(), "", req->version(),
                    [this, req, resp](const ModelHandle& h, Worker& w) {
                      return EncodeSamples(h, req->samples(), options_.max_batch_rows, w, resp);
                    });
}

grpc::ServerUnaryReactor* ScoringService::Reconstruct(grpc::CallbackServerContext* ctx,
                                                      const v1::ReconstructRequest* req,
                                                      v1::ReconstructResponse* resp) {
  return OnExecutor(ctx, "Reconstruct", req->model(), "", req->version(),
                    [this, req, resp](const ModelHandle& h, Worker& w) {
                      return ReconstructSamples(h, req->samples(), options_.max_batch_rows, w,
                                                resp);
                    });
}

grpc::ServerUnaryReactor* ScoringService::Generate(grpc::CallbackServerContext* ctx,
                                                   const v1::GenerateRequest* req,
                                                   v1::GenerateResponse* resp) {
  return OnExecutor(ctx, "Generate", req->model(), "", req->version(),
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
  if (info.ok() && req->include_calibration()) {
    auto h = registry_->Handle(*key, 0);
    if (h.ok()) *resp->mutable_calibration_errors() = h->model->file().calibration_errors();
  }
  reactor->Finish(ToGrpc(info.status()));
  return reactor;
}

}  // namespace aeserve::server
