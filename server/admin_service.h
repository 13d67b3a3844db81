// The aeserve.v1.ModelAdmin service: training jobs over RPC and the model lifecycle. Store writes
// run on a one-thread admin executor, never in a gRPC reaction.
#pragma once

#include "aeserve/v1/admin.grpc.pb.h"
#include "server/audit_log.h"
#include "server/auth.h"
#include "server/autopilot.h"
#include "server/executor.h"
#include "server/ingest.h"
#include "server/model_registry.h"
#include "server/model_view.h"
#include "server/options.h"
#include "server/raw_call.h"
#include "server/training_jobs.h"
#include "server/uploads.h"

namespace aeserve::server {

// `Base` inside each of `Methods` (gRPC's generated WithRawCallbackMethod_* wrappers).
template <typename Base, template <typename> class... Methods>
struct Wrapped {
  using type = Base;
};
template <typename Base, template <typename> class M, template <typename> class... Rest>
struct Wrapped<Base, M, Rest...> {
  using type = M<typename Wrapped<Base, Rest...>::type>;
};

// Every method raw (see raw_call.h): the service parses its requests itself.
using RawAdminService = Wrapped<WithStreamedMethods<v1::ModelAdmin::Service>,
                                v1::ModelAdmin::WithRawCallbackMethod_CreateTrainingJob,
                                v1::ModelAdmin::WithRawCallbackMethod_GetTrainingJob,
                                v1::ModelAdmin::WithRawCallbackMethod_ListTrainingJobs,
                                v1::ModelAdmin::WithRawCallbackMethod_CancelTrainingJob,
                                v1::ModelAdmin::WithRawCallbackMethod_ActivateVersion,
                                v1::ModelAdmin::WithRawCallbackMethod_DeleteVersion,
                                v1::ModelAdmin::WithRawCallbackMethod_DeleteModel,
                                v1::ModelAdmin::WithRawCallbackMethod_SetThreshold,
                                v1::ModelAdmin::WithRawCallbackMethod_SetScoringPolicy,
                                v1::ModelAdmin::WithRawCallbackMethod_ListEvents,
                                v1::ModelAdmin::WithRawCallbackMethod_SetRetrainPolicy,
                                v1::ModelAdmin::WithRawCallbackMethod_Retrain,
                                v1::ModelAdmin::WithRawCallbackMethod_StartShadow,
                                v1::ModelAdmin::WithRawCallbackMethod_SetIngestBinding,
                                v1::ModelAdmin::WithRawCallbackMethod_RecordIngest,
                                v1::ModelAdmin::WithRawCallbackMethod_TrainFromRecording>::type;

class AdminService final : public RawAdminService {
 public:
  // With `auth` enabled the unary methods are streamed (raw_call.h): the token is checked before
  // a request is read.
  AdminService(const Options& options, ModelRegistry* registry, TrainingJobs* jobs,
               Uploads* uploads, Executor* admin_executor, const Authorizer* auth,
               const AuditLog* audit, Autopilot* autopilot, Ingest* ingest);

  using Raw = grpc::ByteBuffer;
  grpc::ServerReadReactor<Raw>* CreateTrainingJob(grpc::CallbackServerContext* ctx,
                                                  Raw* job) override;
  grpc::ServerUnaryReactor* GetTrainingJob(grpc::CallbackServerContext* ctx, const Raw* req,
                                           Raw* resp) override;
  grpc::ServerUnaryReactor* ListTrainingJobs(grpc::CallbackServerContext* ctx, const Raw* req,
                                             Raw* resp) override;
  grpc::ServerUnaryReactor* CancelTrainingJob(grpc::CallbackServerContext* ctx, const Raw* req,
                                              Raw* resp) override;
  grpc::ServerUnaryReactor* ActivateVersion(grpc::CallbackServerContext* ctx, const Raw* req,
                                            Raw* resp) override;
  grpc::ServerUnaryReactor* DeleteVersion(grpc::CallbackServerContext* ctx, const Raw* req,
                                          Raw* resp) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* ctx, const Raw* req,
                                        Raw* resp) override;
  grpc::ServerUnaryReactor* SetThreshold(grpc::CallbackServerContext* ctx, const Raw* req,
                                         Raw* resp) override;
  grpc::ServerUnaryReactor* SetScoringPolicy(grpc::CallbackServerContext* ctx, const Raw* req,
                                             Raw* resp) override;
  grpc::ServerUnaryReactor* ListEvents(grpc::CallbackServerContext* ctx, const Raw* req,
                                       Raw* resp) override;
  grpc::ServerUnaryReactor* SetRetrainPolicy(grpc::CallbackServerContext* ctx, const Raw* req,
                                             Raw* resp) override;
  grpc::ServerUnaryReactor* Retrain(grpc::CallbackServerContext* ctx, const Raw* req,
                                    Raw* resp) override;
  grpc::ServerUnaryReactor* StartShadow(grpc::CallbackServerContext* ctx, const Raw* req,
                                        Raw* resp) override;
  grpc::ServerUnaryReactor* SetIngestBinding(grpc::CallbackServerContext* ctx, const Raw* req,
                                             Raw* resp) override;
  grpc::ServerUnaryReactor* RecordIngest(grpc::CallbackServerContext* ctx, const Raw* req,
                                         Raw* resp) override;
  grpc::ServerUnaryReactor* TrainFromRecording(grpc::CallbackServerContext* ctx, const Raw* req,
                                               Raw* resp) override;

 private:
  template <typename Request, typename Response>
  using LifecycleFn = std::function<absl::Status(const Request&, Response*, v1::Event*)>;
  // The handler that authorises, then runs `fn(request, response, audit)` on the admin executor
  // and replies; `audit` is an event with the caller as actor, recorded in the audit log when fn
  // succeeds and has set its action.
  template <typename Request, typename Response>
  UnaryHandler<Request, Response> Lifecycle(LifecycleFn<Request, Response> fn);
  // Get and Cancel: authorises, then answers with `fn(job id)`.
  UnaryHandler<v1::GetTrainingJobRequest, v1::TrainingJob> JobHandler(
      std::function<absl::StatusOr<v1::TrainingJob>(const std::string& id)> fn);
  // One handler per unary method (either path of raw_call.h).
  UnaryHandler<v1::GetTrainingJobRequest, v1::TrainingJob> GetTrainingJobHandler();
  UnaryHandler<v1::ListTrainingJobsRequest, v1::ListTrainingJobsResponse> ListTrainingJobsHandler();
  UnaryHandler<v1::GetTrainingJobRequest, v1::TrainingJob> CancelTrainingJobHandler();
  UnaryHandler<v1::ActivateVersionRequest, v1::ModelInfoBrief> ActivateVersionHandler();
  UnaryHandler<v1::DeleteVersionRequest, v1::ModelInfoBrief> DeleteVersionHandler();
  UnaryHandler<v1::DeleteModelRequest, v1::DeleteModelResponse> DeleteModelHandler();
  UnaryHandler<v1::SetThresholdRequest, v1::ModelInfoBrief> SetThresholdHandler();
  UnaryHandler<v1::SetScoringPolicyRequest, v1::ModelInfoBrief> SetScoringPolicyHandler();
  UnaryHandler<v1::ListEventsRequest, v1::ListEventsResponse> ListEventsHandler();
  UnaryHandler<v1::SetRetrainPolicyRequest, v1::AutopilotStatus> SetRetrainPolicyHandler();
  UnaryHandler<v1::RetrainRequest, v1::TrainingJob> RetrainHandler();
  UnaryHandler<v1::StartShadowRequest, v1::AutopilotStatus> StartShadowHandler();
  UnaryHandler<v1::SetIngestBindingRequest, v1::IngestStatus> SetIngestBindingHandler();
  UnaryHandler<v1::RecordIngestRequest, v1::IngestStatus> RecordIngestHandler();
  UnaryHandler<v1::TrainingJobHeader, v1::TrainingJob> TrainFromRecordingHandler();

  ModelRegistry* registry_;
  const ModelView view_;
  TrainingJobs* jobs_;
  Uploads* uploads_;
  Executor* executor_;
  const Authorizer* auth_;
  const AuditLog* audit_;
  Autopilot* autopilot_;
  Ingest* ingest_;
};

}  // namespace aeserve::server
