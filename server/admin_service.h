// The aeserve.v1.ModelAdmin service: training jobs over RPC and the model lifecycle. Store writes
// run on a one-thread admin executor, never in a gRPC reaction.
#pragma once

#include "aeserve/v1/admin.grpc.pb.h"
#include "audit_log.h"
#include "auth.h"
#include "autopilot.h"
#include "executor.h"
#include "model_registry.h"
#include "model_view.h"
#include "options.h"
#include "raw_call.h"
#include "training_jobs.h"
#include "uploads.h"

namespace aeserve::server {

// Every method raw (see raw_call.h): the service parses its requests itself.
using RawAdminService = v1::ModelAdmin::WithRawCallbackMethod_CreateTrainingJob<
    v1::ModelAdmin::WithRawCallbackMethod_WatchTrainingJob<
        v1::ModelAdmin::WithRawCallbackMethod_GetTrainingJob<
            v1::ModelAdmin::WithRawCallbackMethod_ListTrainingJobs<
                v1::ModelAdmin::WithRawCallbackMethod_CancelTrainingJob<
                    v1::ModelAdmin::WithRawCallbackMethod_ActivateVersion<
                        v1::ModelAdmin::WithRawCallbackMethod_DeleteVersion<
                            v1::ModelAdmin::WithRawCallbackMethod_DeleteModel<
                                v1::ModelAdmin::WithRawCallbackMethod_SetThreshold<
                                    v1::ModelAdmin::WithRawCallbackMethod_SetScoringPolicy<
                                        v1::ModelAdmin::WithRawCallbackMethod_ListEvents<
                                            v1::ModelAdmin::WithRawCallbackMethod_SetRetrainPolicy<
                                                v1::ModelAdmin::WithRawCallbackMethod_Retrain<
                                                    v1::ModelAdmin::
                                                        WithRawCallbackMethod_StartShadow<
                                                            v1::ModelAdmin::Service>>>>>>>>>>>>>>;

class AdminService final : public RawAdminService {
 public:
  AdminService(const Options& options, ModelRegistry* registry, TrainingJobs* jobs,
               Uploads* uploads, Executor* admin_executor, const Authorizer* auth,
               const AuditLog* audit, Autopilot* autopilot)
      : options_(options),
        registry_(registry),
        view_(*registry, options.drift_threshold),
        jobs_(jobs),
        uploads_(uploads),
        executor_(admin_executor),
        auth_(auth),
        audit_(audit),
        autopilot_(autopilot) {}

  using Raw = grpc::ByteBuffer;
  grpc::ServerReadReactor<Raw>* CreateTrainingJob(grpc::CallbackServerContext* ctx,
                                                  Raw* job) override;
  grpc::ServerWriteReactor<Raw>* WatchTrainingJob(grpc::CallbackServerContext* ctx,
                                                  const Raw* req) override;
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

 private:
  // Authorises, then runs `fn(request, response, audit)` (which returns absl::Status) on the admin
  // executor and replies; `audit` is an event with the caller as actor, recorded in the audit log
  // when fn succeeds and has set its action.
  template <typename Call, typename Fn>
  grpc::ServerUnaryReactor* Lifecycle(grpc::CallbackServerContext* ctx, Call* call, Fn fn);
  // Get and Cancel: authorises, then answers with `fn(job id)` (a StatusOr<TrainingJob>).
  template <typename Fn>
  grpc::ServerUnaryReactor* JobCall(grpc::CallbackServerContext* ctx, const Raw* body, Raw* out,
                                    Fn fn);

  const Options& options_;
  ModelRegistry* registry_;
  const ModelView view_;
  TrainingJobs* jobs_;
  Uploads* uploads_;
  Executor* executor_;
  const Authorizer* auth_;
  const AuditLog* audit_;
  Autopilot* autopilot_;
};

}  // namespace aeserve::server
