// The aeserve.v1.Scoring service on gRPC's callback API.
#include "scoring_service.h"

#include "scoring.h"
#include "status_util.h"

namespace aeserve::server {

using Clock = std::chrono::steady_clock;

template <typename Call>
void ScoringService::Done(Call* call, const char* rpc, const grpc::Status& st,
                          Clock::time_point start) {
  if (metrics_ != nullptr) {
    metrics_->RecordRequest(rpc, st.error_code(),
                            std::chrono::duration<double>(Clock::now() - start).count());
  }
  call->Reply(st);
}

// A request that did not parse was answered INVALID_ARGUMENT by the call itself; it is counted.
grpc::ServerUnaryReactor* ScoringService::Unparsed(grpc::ServerUnaryReactor* call,
                                                   const char* rpc) {
  if (metrics_ != nullptr) metrics_->RecordRequest(rpc, grpc::StatusCode::INVALID_ARGUMENT, 0);
  return call;
}

template <typename Call, typename Fn>
grpc::ServerUnaryReactor* ScoringService::OnExecutor(grpc::CallbackServerContext* ctx, Call* call,
                                                     const char* rpc, const std::string& model,
                                                     const std::string& entity, uint64_t version,
                                                     Fn fn) {
  const auto start = Clock::now();
  if (grpc::Status st = auth_->Check(ctx, Role::kScore); !st.ok()) {
    Done(call, rpc, st, start);
    return call;
  }
  auto handle = registry_->Get(model, entity, version);
  if (!handle.ok()) {
    Done(call, rpc, ToGrpc(handle.status()), start);
    return call;
  }
  const bool queued = executor_->TrySubmit([this, ctx, call, rpc, start, h = *std::move(handle),
                                            fn = std::move(fn)](Worker& worker) mutable {
    // Work for a call whose client gave up or whose deadline passed is skipped.
    if (ctx->IsCancelled()) {
      Done(call, rpc, grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled before scoring"),
           start);
      return;
    }
    const auto began = Clock::now();
    const grpc::Status st = ToGrpc(fn(h, worker));
    if (metrics_ != nullptr) {
      metrics_->RecordQueueAndCompute(rpc, std::chrono::duration<double>(began - start).count(),
                                      std::chrono::duration<double>(Clock::now() - began).count());
    }
    Done(call, rpc, st, start);
  });
  if (!queued) {
    if (metrics_ != nullptr) metrics_->RecordRejected("queue_full");
    Done(call, rpc,
         grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      "scoring queue is full; retry with backoff"),
         start);
  }
  return call;
}

grpc::ServerUnaryReactor* ScoringService::Score(grpc::CallbackServerContext* ctx, const Raw* body,
                                                Raw* out) {
  auto* call = new UnaryCall<v1::ScoreRequest, v1::ScoreResponse>(body, out);
  if (!call->parsed()) return Unparsed(call, "Score");
  const v1::ScoreRequest* req = &call->request();
  return OnExecutor(ctx, call, "Score", req->model(), req->entity(), req->version(),
                    [this, req, resp = call->response()](const ModelHandle& h, Worker& w) {
                      return ScoreSamples(h, req->samples(), req->options(),
                                          options_.max_batch_rows, w, resp,
                                          ScoreHooks{.feed = feed_, .autopilot = autopilot_});
                    });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ScoringService::StreamScore(
    grpc::CallbackServerContext* ctx) {
  return new StreamReactor(options_, registry_, executor_, streams_,
                           auth_->Check(ctx, Role::kScore), metrics_, feed_, autopilot_);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ScoringService::WatchAnomalies(
    grpc::CallbackServerContext* ctx, const Raw* body) {
  v1::WatchAnomaliesRequest req;
  grpc::Status st = ParseRequest(*body, &req);
  if (st.ok()) st = auth_->Check(ctx, Role::kScore);
  return new AnomalyWatcher(feed_, req, 1024, st);
}

grpc::ServerUnaryReactor* ScoringService::Encode(grpc::CallbackServerContext* ctx, const Raw* body,
                                                 Raw* out) {
  auto* call = new UnaryCall<v1::EncodeRequest, v1::EncodeResponse>(body, out);
  if (!call->parsed()) return Unparsed(call, "Encode");
  const v1::EncodeRequest* req = &call->request();
  return OnExecutor(ctx, call, "Encode", req->model(), "", req->version(),
                    [this, req, resp = call->response()](const ModelHandle& h, Worker& w) {
                      return EncodeSamples(h, req->samples(), options_.max_batch_rows, w, resp);
                    });
}

grpc::ServerUnaryReactor* ScoringService::Reconstruct(grpc::CallbackServerContext* ctx,
                                                      const Raw* body, Raw* out) {
  auto* call = new UnaryCall<v1::ReconstructRequest, v1::ReconstructResponse>(body, out);
  if (!call->parsed()) return Unparsed(call, "Reconstruct");
  const v1::ReconstructRequest* req = &call->request();
  return OnExecutor(ctx, call, "Reconstruct", req->model(), "", req->version(),
                    [this, req, resp = call->response()](const ModelHandle& h, Worker& w) {
                      return ReconstructSamples(h, req->samples(), options_.max_batch_rows, w,
                                                resp);
                    });
}

grpc::ServerUnaryReactor* ScoringService::Generate(grpc::CallbackServerContext* ctx,
                                                   const Raw* body, Raw* out) {
  auto* call = new UnaryCall<v1::GenerateRequest, v1::GenerateResponse>(body, out);
  if (!call->parsed()) return Unparsed(call, "Generate");
  const v1::GenerateRequest* req = &call->request();
  return OnExecutor(ctx, call, "Generate", req->model(), "", req->version(),
                    [this, req, resp = call->response()](const ModelHandle& h, Worker& w) {
                      return GenerateSamples(h, req->count(), req->seed(), options_.max_batch_rows,
                                             w, resp);
                    });
}

grpc::ServerUnaryReactor* ScoringService::ListModels(grpc::CallbackServerContext* ctx,
                                                     const Raw* body, Raw* out) {
  auto* call = new UnaryCall<v1::ListModelsRequest, v1::ListModelsResponse>(body, out);
  if (!call->parsed()) return call;  // (catalogue calls are not counted)
  grpc::Status st = auth_->Check(ctx, Role::kScore);
  if (st.ok()) {
    for (auto& info : view_.List()) *call->response()->add_models() = std::move(info);
  }
  call->Reply(st);
  return call;
}

grpc::ServerUnaryReactor* ScoringService::GetModel(grpc::CallbackServerContext* ctx,
                                                   const Raw* body, Raw* out) {
  auto* call = new UnaryCall<v1::GetModelRequest, v1::ModelInfo>(body, out);
  if (!call->parsed()) return call;
  const v1::GetModelRequest* req = &call->request();
  if (grpc::Status st = auth_->Check(ctx, Role::kScore); !st.ok()) {
    call->Reply(st);
    return call;
  }
  auto key = MakeKey(req->model(), req->entity());
  if (!key.ok()) {
    call->Reply(ToGrpc(key.status()));
    return call;
  }
  auto info = view_.Info(*key);
  v1::ModelInfo* resp = call->response();
  if (info.ok()) *resp = *std::move(info);
  v1::AutopilotStatus autopilot;  // only for a model with a retrain policy
  if (info.ok() && autopilot_ != nullptr && autopilot_->Status(*key, &autopilot)) {
    *resp->mutable_autopilot() = std::move(autopilot);
  }
  if (info.ok() && req->include_calibration()) {
    auto h = registry_->Handle(*key, 0);
    if (h.ok()) *resp->mutable_calibration_errors() = h->model->file().calibration_errors();
  }
  call->Reply(ToGrpc(info.status()));
  return call;
}

}  // namespace aeserve::server
