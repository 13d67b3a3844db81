// The aeserve.v1.Scoring service on gRPC's callback API.
#include "server/scoring_service.h"

#include "server/scoring.h"
#include "server/status_util.h"

namespace aeserve::server {

using Clock = std::chrono::steady_clock;

ScoringService::ScoringService(const Options& options, const ModelRegistry* registry,
                               Executor* executor, StreamTracker* streams, const Authorizer* auth,
                               ServerMetrics* metrics, AnomalyFeed* feed, Autopilot* autopilot,
                               const TrainingJobs* jobs, const Ingest* ingest)
    : options_(options),
      registry_(registry),
      view_(*registry, options.drift_threshold),
      executor_(executor),
      streams_(streams),
      auth_(auth),
      metrics_(metrics),
      feed_(feed),
      autopilot_(autopilot),
      jobs_(jobs),
      ingest_(ingest) {
  // WatchAnomalies reads its request itself, after the token check (raw_call.h).
  StreamServerSide<v1::WatchAnomaliesRequest>(
      "aeserve.v1.Scoring", 5, [this](grpc::CallbackServerContext* ctx) {
        return new AnomalyWatcher(feed_, AnomalyFeed::kWatcherBuffer,
                                  auth_->Check(ctx, Role::kScore));
      });
  if (!auth_->enabled()) return;
  // With tokens required, every unary method checks the token before its request is read
  // (raw_call.h, WithStreamedMethods). Indices: the methods' order in scoring.proto.
  auto gate = [this](grpc::CallbackServerContext* ctx) { return auth_->Check(ctx, Role::kScore); };
  constexpr const char* kService = "aeserve.v1.Scoring";
  StreamUnary<v1::ScoreRequest, v1::ScoreResponse>(
      kService, 0, gate, [this](auto* ctx, auto* call) { ScoreCall(ctx, call); });
  StreamUnary<v1::EncodeRequest, v1::EncodeResponse>(
      kService, 2, gate, [this](auto* ctx, auto* call) { EncodeCall(ctx, call); });
  StreamUnary<v1::ReconstructRequest, v1::ReconstructResponse>(
      kService, 3, gate, [this](auto* ctx, auto* call) { ReconstructCall(ctx, call); });
  StreamUnary<v1::GenerateRequest, v1::GenerateResponse>(
      kService, 4, gate, [this](auto* ctx, auto* call) { GenerateCall(ctx, call); });
  StreamUnary<v1::ListModelsRequest, v1::ListModelsResponse>(
      kService, 6, gate, [this](auto* ctx, auto* call) { ListModelsCall(ctx, call); });
  StreamUnary<v1::GetModelRequest, v1::ModelInfo>(
      kService, 7, gate, [this](auto* ctx, auto* call) { GetModelCall(ctx, call); });
}

// Every call's status is counted by RpcMetricsFactory (rpc_metrics.h); the time on the queue and
// on a worker here.
template <typename Call, typename Fn>
void ScoringService::OnExecutor(grpc::CallbackServerContext* ctx, Call* call, const char* rpc,
                                const std::string& model, const std::string& entity,
                                uint64_t version, Fn fn, size_t values) {
  const auto start = Clock::now();
  if (grpc::Status st = auth_->Check(ctx, Role::kScore); !st.ok()) {
    call->Reply(st);
    return;
  }
  auto handle = registry_->Get(model, entity, version);
  if (!handle.ok()) {
    call->Reply(ToGrpc(jobs_ != nullptr
                           ? jobs_->ExplainMissing(handle.status(), model, entity, version)
                           : handle.status()));
    return;
  }
  const bool here = values != SIZE_MAX && LightEnoughToScoreHere(options_.inline_max_madds, values,
                                                                 MaddsPerValue(*handle->model));
  Executor::Task task = [this, ctx, call, rpc, start, h = *std::move(handle),
                         fn = std::move(fn)](Worker& worker) mutable {
    // Work for a call whose client gave up or whose deadline passed is skipped.
    if (ctx->IsCancelled()) {
      call->Reply(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled before scoring"));
      return;
    }
    const auto began = Clock::now();
    const grpc::Status st = ToGrpc(fn(h, worker));
    if (metrics_ != nullptr) {
      metrics_->RecordQueueAndCompute(rpc, std::chrono::duration<double>(began - start).count(),
                                      std::chrono::duration<double>(Clock::now() - began).count());
    }
    call->Reply(st);
  };
  // A small request runs here when a scoring thread is idle (no hand-off); a busy server queues
  // it, so a flood still meets --max_queue.
  if (here && executor_->TryRunHere(task)) {
    if (metrics_ != nullptr) metrics_->RecordScoredHere(false);
    return;
  }
  if (!executor_->TrySubmit(std::move(task))) {
    if (metrics_ != nullptr) metrics_->RecordRejected("queue_full");
    call->Reply(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "scoring queue is full; retry with backoff"));
  }
}

grpc::ServerUnaryReactor* ScoringService::Score(grpc::CallbackServerContext* ctx, const Raw* body,
                                                Raw* out) {
  return Buffered<v1::ScoreRequest, v1::ScoreResponse>(
      ctx, body, out, [this](auto* c, auto* call) { ScoreCall(c, call); });
}

void ScoringService::ScoreCall(grpc::CallbackServerContext* ctx,
                               UnaryCall<v1::ScoreRequest, v1::ScoreResponse>* call) {
  const v1::ScoreRequest* req = &call->request();
  OnExecutor(
      ctx, call, "Score", req->model(), req->entity(), req->version(),
      [this, req, resp = call->response()](const ModelHandle& h, Worker& w) {
        return ScoreSamples(
            h, req->samples(), req->options(), options_.max_batch_rows, w, resp,
            ScoreHooks{.feed = feed_, .autopilot = autopilot_, .source_entity = req->entity()});
      },
      static_cast<size_t>(req->samples().values_size()));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ScoringService::StreamScore(
    grpc::CallbackServerContext* ctx) {
  return new StreamReactor(options_, registry_, executor_, streams_,
                           auth_->Check(ctx, Role::kScore), metrics_, feed_, autopilot_, jobs_);
}

grpc::ServerUnaryReactor* ScoringService::Encode(grpc::CallbackServerContext* ctx, const Raw* body,
                                                 Raw* out) {
  return Buffered<v1::EncodeRequest, v1::EncodeResponse>(
      ctx, body, out, [this](auto* c, auto* call) { EncodeCall(c, call); });
}

void ScoringService::EncodeCall(grpc::CallbackServerContext* ctx,
                                UnaryCall<v1::EncodeRequest, v1::EncodeResponse>* call) {
  const v1::EncodeRequest* req = &call->request();
  OnExecutor(ctx, call, "Encode", req->model(), "", req->version(),
             [this, req, resp = call->response()](const ModelHandle& h, Worker& w) {
               return EncodeSamples(h, req->samples(), options_.max_batch_rows, w, resp);
             });
}

grpc::ServerUnaryReactor* ScoringService::Reconstruct(grpc::CallbackServerContext* ctx,
                                                      const Raw* body, Raw* out) {
  return Buffered<v1::ReconstructRequest, v1::ReconstructResponse>(
      ctx, body, out, [this](auto* c, auto* call) { ReconstructCall(c, call); });
}

void ScoringService::ReconstructCall(
    grpc::CallbackServerContext* ctx,
    UnaryCall<v1::ReconstructRequest, v1::ReconstructResponse>* call) {
  const v1::ReconstructRequest* req = &call->request();
  OnExecutor(ctx, call, "Reconstruct", req->model(), "", req->version(),
             [this, req, resp = call->response()](const ModelHandle& h, Worker& w) {
               return ReconstructSamples(h, req->samples(), options_.max_batch_rows, w, resp);
             });
}

grpc::ServerUnaryReactor* ScoringService::Generate(grpc::CallbackServerContext* ctx,
                                                   const Raw* body, Raw* out) {
  return Buffered<v1::GenerateRequest, v1::GenerateResponse>(
      ctx, body, out, [this](auto* c, auto* call) { GenerateCall(c, call); });
}

void ScoringService::GenerateCall(grpc::CallbackServerContext* ctx,
                                  UnaryCall<v1::GenerateRequest, v1::GenerateResponse>* call) {
  const v1::GenerateRequest* req = &call->request();
  OnExecutor(ctx, call, "Generate", req->model(), "", req->version(),
             [this, req, resp = call->response()](const ModelHandle& h, Worker& w) {
               return GenerateSamples(h, req->count(), req->seed(), options_.max_batch_rows, w,
                                      resp);
             });
}

// (Catalogue calls are not counted, parsed or not.)
grpc::ServerUnaryReactor* ScoringService::ListModels(grpc::CallbackServerContext* ctx,
                                                     const Raw* body, Raw* out) {
  return Buffered<v1::ListModelsRequest, v1::ListModelsResponse>(
      ctx, body, out, [this](auto* c, auto* call) { ListModelsCall(c, call); });
}

void ScoringService::ListModelsCall(
    grpc::CallbackServerContext* ctx,
    UnaryCall<v1::ListModelsRequest, v1::ListModelsResponse>* call) {
  grpc::Status st = auth_->Check(ctx, Role::kScore);
  if (st.ok()) {
    for (auto& info : view_.List()) *call->response()->add_models() = std::move(info);
  }
  call->Reply(st);
}

grpc::ServerUnaryReactor* ScoringService::GetModel(grpc::CallbackServerContext* ctx,
                                                   const Raw* body, Raw* out) {
  return Buffered<v1::GetModelRequest, v1::ModelInfo>(
      ctx, body, out, [this](auto* c, auto* call) { GetModelCall(c, call); });
}

void ScoringService::GetModelCall(grpc::CallbackServerContext* ctx,
                                  UnaryCall<v1::GetModelRequest, v1::ModelInfo>* call) {
  const v1::GetModelRequest* req = &call->request();
  if (grpc::Status st = auth_->Check(ctx, Role::kScore); !st.ok()) {
    call->Reply(st);
    return;
  }
  auto key = MakeKey(req->model(), req->entity());
  if (!key.ok()) {
    call->Reply(ToGrpc(key.status()));
    return;
  }
  auto info = view_.Info(*key);
  v1::ModelInfo* resp = call->response();
  if (info.ok()) *resp = *std::move(info);
  v1::AutopilotStatus autopilot;  // only for a model with a retrain policy
  if (info.ok() && autopilot_ != nullptr && autopilot_->Status(*key, &autopilot)) {
    *resp->mutable_autopilot() = std::move(autopilot);
  }
  v1::IngestStatus ingest;  // only for a generic model with an ingest binding
  if (info.ok() && ingest_ != nullptr && key->entity.empty() &&
      ingest_->Status(key->model, &ingest)) {
    *resp->mutable_ingest() = std::move(ingest);
  }
  if (info.ok() && req->include_calibration()) {
    // From the active version's file, loaded or not (no cold load for a status call).
    registry_->Visit(*key, [&](const ModelEntry& e) {
      auto it = e.versions.find(e.active);
      if (it != e.versions.end() && it->second.file() != nullptr) {
        *resp->mutable_calibration_errors() = it->second.file()->calibration_errors();
      }
    });
  }
  call->Reply(ToGrpc(info.status()));
}

}  // namespace aeserve::server
