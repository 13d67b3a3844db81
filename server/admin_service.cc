// The aeserve.v1.ModelAdmin service.
#include "server/admin_service.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/spec.h"
#include "engine/threshold.h"
#include "server/raw_call.h"
#include "server/status_util.h"

namespace aeserve::server {
namespace {

void Describe(v1::Event* e, const ModelKey& key, uint64_t version, const std::string& action,
              const std::string& reason) {
  if (e == nullptr) return;
  e->set_model(key.model);
  e->set_entity(key.entity);
  e->set_version(version);
  e->set_action(action);
  e->set_reason(reason);
}

// Streams a job's state to one watcher: the latest state, never a backlog. The call is a stream for
// gRPC's core (StreamServerSide): its request is read only after `gate` (the token check) passed.
class WatchReactor : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  WatchReactor(TrainingJobs* jobs, const grpc::Status& gate) : jobs_(jobs) {
    absl::MutexLock lock(&mu_);
    if (!gate.ok()) {
      finished_ = true;
      Finish(gate);
      return;
    }
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override {
    v1::GetTrainingJobRequest req;
    grpc::Status st = ok ? ParseMessage(&request_, &req)
                         : grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                        "the call ended before its request message");
    if (!st.ok()) {
      absl::MutexLock lock(&mu_);
      if (finished_) return;  // cancelled while the request was on its way
      finished_ = true;
      Finish(st);
      return;
    }
    id_ = req.id();
    auto first = jobs_->Watch(
        id_, [this](const v1::TrainingJob& s) { Update(s); }, &token_);
    absl::MutexLock lock(&mu_);
    if (!first.ok()) {
      if (finished_) return;
      finished_ = true;
      Finish(ToGrpc(first.status()));
      return;
    }
    watching_ = true;
    if (!updated_) {  // an update that arrived meanwhile is newer than `first`
      latest_ = *first;
      pending_ = true;
    }
    Pump();
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) cancelled_ = true;
    Pump();
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    Pump();
  }
  void OnDone() override {
    if (watching_) jobs_->Unwatch(id_, token_);
    delete this;
  }

 private:
  void Update(const v1::TrainingJob& s) {
    absl::MutexLock lock(&mu_);
    updated_ = true;
    latest_ = s;
    pending_ = true;
    Pump();
  }
  void Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_) return;
    if (cancelled_) {
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
      return;
    }
    if (pending_) {
      pending_ = false;
      SerializeMessage(latest_, &sending_);
      writing_ = true;
      StartWrite(&sending_);
      return;
    }
    if (JobEnded(latest_.state())) {
      finished_ = true;
      Finish(grpc::Status::OK);
    }
  }
  TrainingJobs* jobs_;
  grpc::ByteBuffer request_;
  std::string id_;  // from the request, set before the job is watched
  uint64_t token_ = 0;
  bool watching_ = false;
  absl::Mutex mu_;
  v1::TrainingJob latest_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer sending_ ABSL_GUARDED_BY(mu_);
  bool pending_ ABSL_GUARDED_BY(mu_) = false;
  bool updated_ ABSL_GUARDED_BY(mu_) = false;  // an Update arrived (possibly sent already)
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

template <typename Request, typename Response>
UnaryHandler<Request, Response> AdminService::Lifecycle(LifecycleFn<Request, Response> fn) {
  return [this, fn = std::move(fn)](grpc::CallbackServerContext* ctx,
                                    UnaryCall<Request, Response>* call) {
    if (grpc::Status st = auth_->Check(ctx, Role::kAdmin); !st.ok()) {
      call->Reply(st);
      return;
    }
    v1::Event event;
    event.set_actor(auth_->Actor(ctx));
    if (!executor_->TrySubmit([this, call, event, fn](Worker&) mutable {
          absl::Status st = fn(call->request(), call->response(), &event);
          if (st.ok() && !event.action().empty()) {
            if (auto logged = audit_->Record(std::move(event)); !logged.ok()) {
              // The change is made; say so rather than pretend it failed.
              st = absl::DataLossError(absl::StrCat("done, but not recorded: ", logged.message()));
            }
          }
          call->Reply(ToGrpc(st));
        })) {
      call->Reply(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "admin queue is full"));
    }
  };
}

grpc::ServerReadReactor<grpc::ByteBuffer>* AdminService::CreateTrainingJob(
    grpc::CallbackServerContext* ctx, Raw* out) {
  return uploads_->Start(ctx, out, auth_->Check(ctx, Role::kAdmin), auth_->Actor(ctx));
}

UnaryHandler<v1::GetTrainingJobRequest, v1::TrainingJob> AdminService::JobHandler(
    std::function<absl::StatusOr<v1::TrainingJob>(const std::string& id)> fn) {
  return [this, fn = std::move(fn)](grpc::CallbackServerContext* ctx,
                                    UnaryCall<v1::GetTrainingJobRequest, v1::TrainingJob>* call) {
    grpc::Status st = auth_->Check(ctx, Role::kAdmin);
    if (st.ok()) {
      absl::StatusOr<v1::TrainingJob> got = fn(call->request().id());
      if (got.ok()) *call->response() = *std::move(got);
      st = ToGrpc(got.status());
    }
    call->Reply(st);
  };
}

UnaryHandler<v1::GetTrainingJobRequest, v1::TrainingJob> AdminService::GetTrainingJobHandler() {
  return JobHandler([this](const std::string& id) { return jobs_->Get(id); });
}

UnaryHandler<v1::GetTrainingJobRequest, v1::TrainingJob> AdminService::CancelTrainingJobHandler() {
  return JobHandler([this](const std::string& id) { return jobs_->Cancel(id); });
}

UnaryHandler<v1::ListTrainingJobsRequest, v1::ListTrainingJobsResponse>
AdminService::ListTrainingJobsHandler() {
  return [this](grpc::CallbackServerContext* ctx,
                UnaryCall<v1::ListTrainingJobsRequest, v1::ListTrainingJobsResponse>* call) {
    grpc::Status st = auth_->Check(ctx, Role::kAdmin);
    if (st.ok()) {
      for (auto& j : jobs_->List(call->request().model()))
        *call->response()->add_jobs() = std::move(j);
    }
    call->Reply(st);
  };
}

// Each unary method: gRPC's buffered path (no tokens) and, with tokens, the streamed one that
// checks the token before the request is read (raw_call.h). Indices: the order in admin.proto.
AdminService::AdminService(const Options& options, ModelRegistry* registry, TrainingJobs* jobs,
                           Uploads* uploads, Executor* admin_executor, const Authorizer* auth,
                           const AuditLog* audit, Autopilot* autopilot, Ingest* ingest)
    : registry_(registry),
      view_(*registry, options.drift_threshold),
      jobs_(jobs),
      uploads_(uploads),
      executor_(admin_executor),
      auth_(auth),
      audit_(audit),
      autopilot_(autopilot),
      ingest_(ingest) {
  // WatchTrainingJob reads its request itself, after the token check (raw_call.h).
  StreamServerSide<v1::GetTrainingJobRequest>(
      "aeserve.v1.ModelAdmin", 1, [this](grpc::CallbackServerContext* ctx) {
        return new WatchReactor(jobs_, auth_->Check(ctx, Role::kAdmin));
      });
  if (!auth_->enabled()) return;
  auto gate = [this](grpc::CallbackServerContext* ctx) { return auth_->Check(ctx, Role::kAdmin); };
  constexpr const char* kService = "aeserve.v1.ModelAdmin";
  StreamUnary(kService, 2, gate, GetTrainingJobHandler());
  StreamUnary(kService, 3, gate, ListTrainingJobsHandler());
  StreamUnary(kService, 4, gate, CancelTrainingJobHandler());
  StreamUnary(kService, 5, gate, ActivateVersionHandler());
  StreamUnary(kService, 6, gate, DeleteVersionHandler());
  StreamUnary(kService, 7, gate, DeleteModelHandler());
  StreamUnary(kService, 8, gate, SetThresholdHandler());
  StreamUnary(kService, 9, gate, SetScoringPolicyHandler());
  StreamUnary(kService, 10, gate, ListEventsHandler());
  StreamUnary(kService, 11, gate, SetRetrainPolicyHandler());
  StreamUnary(kService, 12, gate, RetrainHandler());
  StreamUnary(kService, 13, gate, StartShadowHandler());
  StreamUnary(kService, 14, gate, SetIngestBindingHandler());
  StreamUnary(kService, 15, gate, RecordIngestHandler());
  StreamUnary(kService, 16, gate, TrainFromRecordingHandler());
}

grpc::ServerUnaryReactor* AdminService::GetTrainingJob(grpc::CallbackServerContext* ctx,
                                                       const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, GetTrainingJobHandler());
}
grpc::ServerUnaryReactor* AdminService::ListTrainingJobs(grpc::CallbackServerContext* ctx,
                                                         const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, ListTrainingJobsHandler());
}
grpc::ServerUnaryReactor* AdminService::CancelTrainingJob(grpc::CallbackServerContext* ctx,
                                                          const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, CancelTrainingJobHandler());
}
grpc::ServerUnaryReactor* AdminService::ActivateVersion(grpc::CallbackServerContext* ctx,
                                                        const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, ActivateVersionHandler());
}
grpc::ServerUnaryReactor* AdminService::DeleteVersion(grpc::CallbackServerContext* ctx,
                                                      const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, DeleteVersionHandler());
}
grpc::ServerUnaryReactor* AdminService::DeleteModel(grpc::CallbackServerContext* ctx,
                                                    const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, DeleteModelHandler());
}
grpc::ServerUnaryReactor* AdminService::SetThreshold(grpc::CallbackServerContext* ctx,
                                                     const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, SetThresholdHandler());
}
grpc::ServerUnaryReactor* AdminService::SetScoringPolicy(grpc::CallbackServerContext* ctx,
                                                         const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, SetScoringPolicyHandler());
}
grpc::ServerUnaryReactor* AdminService::ListEvents(grpc::CallbackServerContext* ctx,
                                                   const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, ListEventsHandler());
}
grpc::ServerUnaryReactor* AdminService::SetRetrainPolicy(grpc::CallbackServerContext* ctx,
                                                         const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, SetRetrainPolicyHandler());
}
grpc::ServerUnaryReactor* AdminService::Retrain(grpc::CallbackServerContext* ctx, const Raw* body,
                                                Raw* out) {
  return Buffered(ctx, body, out, RetrainHandler());
}
grpc::ServerUnaryReactor* AdminService::SetIngestBinding(grpc::CallbackServerContext* ctx,
                                                         const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, SetIngestBindingHandler());
}
grpc::ServerUnaryReactor* AdminService::RecordIngest(grpc::CallbackServerContext* ctx,
                                                     const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, RecordIngestHandler());
}
grpc::ServerUnaryReactor* AdminService::TrainFromRecording(grpc::CallbackServerContext* ctx,
                                                           const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, TrainFromRecordingHandler());
}
grpc::ServerUnaryReactor* AdminService::StartShadow(grpc::CallbackServerContext* ctx,
                                                    const Raw* body, Raw* out) {
  return Buffered(ctx, body, out, StartShadowHandler());
}

UnaryHandler<v1::ActivateVersionRequest, v1::ModelInfoBrief>
AdminService::ActivateVersionHandler() {
  return Lifecycle<v1::ActivateVersionRequest, v1::ModelInfoBrief>(
      [this](const v1::ActivateVersionRequest& req, v1::ModelInfoBrief* resp,
             v1::Event* audit) -> absl::Status {
        auto key = MakeKey(req.model(), req.entity());
        if (!key.ok()) return key.status();
        uint64_t was = 0;
        registry_->Visit(*key, [&](const ModelEntry& e) { was = e.active; });
        if (auto st = registry_->Activate(*key, req.version()); !st.ok()) return st;
        Describe(audit, *key, req.version(), "activate",
                 was == 0 ? "no version was active" : absl::StrCat("was version ", was));
        *resp = view_.Brief(*key, req.version());
        return absl::OkStatus();
      });
}

UnaryHandler<v1::DeleteVersionRequest, v1::ModelInfoBrief> AdminService::DeleteVersionHandler() {
  return Lifecycle<v1::DeleteVersionRequest, v1::ModelInfoBrief>(
      [this](const v1::DeleteVersionRequest& req, v1::ModelInfoBrief* resp,
             v1::Event* audit) -> absl::Status {
        auto key = MakeKey(req.model(), req.entity());
        if (!key.ok()) return key.status();
        if (auto st = registry_->DeleteVersion(*key, req.version(), req.force()); !st.ok()) {
          return st;
        }
        Describe(audit, *key, req.version(), "delete-version", req.force() ? "forced" : "");
        *resp = view_.Brief(*key, 0);
        return absl::OkStatus();
      });
}

UnaryHandler<v1::DeleteModelRequest, v1::DeleteModelResponse> AdminService::DeleteModelHandler() {
  return Lifecycle<v1::DeleteModelRequest, v1::DeleteModelResponse>(
      [this](const v1::DeleteModelRequest& req, v1::DeleteModelResponse*,
             v1::Event* audit) -> absl::Status {
        auto key = MakeKey(req.model(), req.entity());
        if (!key.ok()) return key.status();
        if (auto st = registry_->DeleteModel(*key, req.force()); !st.ok()) return st;
        Describe(audit, *key, 0, "delete-model", req.force() ? "forced" : "");
        return absl::OkStatus();
      });
}

UnaryHandler<v1::SetThresholdRequest, v1::ModelInfoBrief> AdminService::SetThresholdHandler() {
  return Lifecycle<v1::SetThresholdRequest, v1::ModelInfoBrief>(
      [this](const v1::SetThresholdRequest& req, v1::ModelInfoBrief* resp,
             v1::Event* audit) -> absl::Status {
        auto key = MakeKey(req.model(), req.entity());
        if (!key.ok()) return key.status();
        auto edit = [&](v1::ModelFile& file) {
          return engine::EditThresholds(file, req.threshold(), req.critical_threshold(),
                                        req.clear_critical(), absl::ToUnixMillis(absl::Now()));
        };
        if (auto st = registry_->EditVersion(*key, req.version(), edit); !st.ok()) return st;
        *resp = view_.Brief(*key, req.version());
        Describe(audit, *key,
                 resp->active_version() != 0 && req.version() == 0 ? resp->active_version()
                                                                   : req.version(),
                 "set-threshold",
                 absl::StrCat("anomaly level ", resp->threshold_value(),
                              resp->critical_threshold_value() > 0
                                  ? absl::StrCat(", critical ", resp->critical_threshold_value())
                                  : ""));
        return absl::OkStatus();
      });
}

UnaryHandler<v1::SetScoringPolicyRequest, v1::ModelInfoBrief>
AdminService::SetScoringPolicyHandler() {
  return Lifecycle<v1::SetScoringPolicyRequest, v1::ModelInfoBrief>(
      [this](const v1::SetScoringPolicyRequest& req, v1::ModelInfoBrief* resp,
             v1::Event* audit) -> absl::Status {
        auto key = MakeKey(req.model(), req.entity());
        if (!key.ok()) return key.status();
        auto edit = [&](v1::ModelFile& file) -> absl::Status {
          auto policy = engine::MergePolicy(file.policy(), req.policy());
          if (!policy.ok()) return policy.status();
          *file.mutable_policy() = *policy;
          return absl::OkStatus();
        };
        if (auto st = registry_->EditVersion(*key, req.version(), edit); !st.ok()) return st;
        *resp = view_.Brief(*key, req.version());
        Describe(audit, *key, req.version() == 0 ? resp->active_version() : req.version(),
                 "set-scoring-policy", req.policy().ShortDebugString());
        return absl::OkStatus();
      });
}

UnaryHandler<v1::ListEventsRequest, v1::ListEventsResponse> AdminService::ListEventsHandler() {
  return Lifecycle<v1::ListEventsRequest, v1::ListEventsResponse>(
      [this](const v1::ListEventsRequest& req, v1::ListEventsResponse* resp,
             v1::Event*) -> absl::Status {
        if (!req.model().empty()) {
          if (auto st = ValidateName(req.model()); !st.ok()) return st;
        }
        if (!req.entity().empty()) {
          if (req.model().empty()) {
            return absl::InvalidArgumentError("entity needs a model");
          }
          if (auto st = ValidateName(req.entity(), "entity name", /*colon=*/true); !st.ok()) {
            return st;
          }
        }
        auto events = audit_->List(req);
        if (!events.ok()) return events.status();
        *resp = *std::move(events);
        return absl::OkStatus();
      });
}

UnaryHandler<v1::SetRetrainPolicyRequest, v1::AutopilotStatus>
AdminService::SetRetrainPolicyHandler() {
  return Lifecycle<v1::SetRetrainPolicyRequest, v1::AutopilotStatus>(
      [this](const v1::SetRetrainPolicyRequest& req, v1::AutopilotStatus* resp,
             v1::Event* audit) -> absl::Status {
        auto key = MakeKey(req.model(), req.entity());
        if (!key.ok()) return key.status();
        auto status = autopilot_->SetPolicy(*key, req.policy(), req.clear(), audit->actor());
        if (!status.ok()) return status.status();
        *resp = *std::move(status);
        return absl::OkStatus();  // recorded by the autopilot, with the resolved policy
      });
}

UnaryHandler<v1::RetrainRequest, v1::TrainingJob> AdminService::RetrainHandler() {
  return Lifecycle<v1::RetrainRequest, v1::TrainingJob>([this](const v1::RetrainRequest& req,
                                                               v1::TrainingJob* resp,
                                                               v1::Event* audit) -> absl::Status {
    auto key = MakeKey(req.model(), req.entity());
    if (!key.ok()) return key.status();
    auto job = autopilot_->Retrain(*key, audit->actor());
    if (!job.ok()) return job.status();
    *resp = *std::move(job);
    return absl::OkStatus();
  });
}

UnaryHandler<v1::StartShadowRequest, v1::AutopilotStatus> AdminService::StartShadowHandler() {
  return Lifecycle<v1::StartShadowRequest, v1::AutopilotStatus>(
      [this](const v1::StartShadowRequest& req, v1::AutopilotStatus* resp,
             v1::Event* audit) -> absl::Status {
        auto key = MakeKey(req.model(), req.entity());
        if (!key.ok()) return key.status();
        auto status = autopilot_->StartShadow(*key, req.version(), audit->actor());
        if (!status.ok()) return status.status();
        *resp = *std::move(status);
        return absl::OkStatus();
      });
}

UnaryHandler<v1::SetIngestBindingRequest, v1::IngestStatus>
AdminService::SetIngestBindingHandler() {
  return Lifecycle<v1::SetIngestBindingRequest, v1::IngestStatus>(
      [this](const v1::SetIngestBindingRequest& req, v1::IngestStatus* resp,
             v1::Event* audit) -> absl::Status {
        auto status = ingest_->SetBinding(req.model(), req.binding(), req.clear());
        if (!status.ok()) return status.status();
        *resp = *std::move(status);
        audit->set_model(req.model());
        audit->set_action("set-ingest-binding");
        audit->set_reason(req.clear() ? "binding removed" : resp->binding().ShortDebugString());
        return absl::OkStatus();
      });
}

UnaryHandler<v1::RecordIngestRequest, v1::IngestStatus> AdminService::RecordIngestHandler() {
  return Lifecycle<v1::RecordIngestRequest, v1::IngestStatus>(
      [this](const v1::RecordIngestRequest& req, v1::IngestStatus* resp,
             v1::Event* audit) -> absl::Status {
        auto status = ingest_->Record(req.model(), req.seconds(), req.max_rows(), req.stop());
        if (!status.ok()) return status.status();
        *resp = *std::move(status);
        audit->set_model(req.model());
        audit->set_action("record-ingest");
        audit->set_reason(req.stop() ? "recording stopped" : resp->recording().ShortDebugString());
        return absl::OkStatus();
      });
}

UnaryHandler<v1::TrainingJobHeader, v1::TrainingJob> AdminService::TrainFromRecordingHandler() {
  return Lifecycle<v1::TrainingJobHeader, v1::TrainingJob>(
      [this](const v1::TrainingJobHeader& req, v1::TrainingJob* resp,
             v1::Event* audit) -> absl::Status {
        auto job = ingest_->TrainFromRecording(req, audit->actor());
        if (!job.ok()) return job.status();
        *resp = *std::move(job);
        return absl::OkStatus();  // the version it writes is recorded by the job
      });
}

}  // namespace aeserve::server
