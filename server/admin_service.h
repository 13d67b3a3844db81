// The aeserve.v1.ModelAdmin service: training jobs over RPC and the model lifecycle. Store writes
// run on a one-thread admin executor, never in a gRPC reaction.
#pragma once

#include "aeserve/v1/admin.grpc.pb.h"
#include "auth.h"
#include "executor.h"
#include "model_registry.h"
#include "options.h"
#include "training_jobs.h"
#include "uploads.h"

namespace aeserve::server {

class AdminService final : public v1::ModelAdmin::CallbackService {
 public:
  AdminService(const Options& options, ModelRegistry* registry, TrainingJobs* jobs, Uploads* uploads,
               Executor* admin_executor, const Authorizer* auth)
      : options_(options), registry_(registry), jobs_(jobs), uploads_(uploads),
        executor_(admin_executor), auth_(auth) {}

  grpc::ServerReadReactor<v1::CreateTrainingJobRequest>* CreateTrainingJob(
      grpc::CallbackServerContext* ctx, v1::TrainingJob* job) override;
  grpc::ServerWriteReactor<v1::TrainingJob>* WatchTrainingJob(
      grpc::CallbackServerContext* ctx, const v1::GetTrainingJobRequest* req) override;
  grpc::ServerUnaryReactor* GetTrainingJob(grpc::CallbackServerContext* ctx,
                                           const v1::GetTrainingJobRequest* req,
                                           v1::TrainingJob* job) override;
  grpc::ServerUnaryReactor* ListTrainingJobs(grpc::CallbackServerContext* ctx,
                                             const v1::ListTrainingJobsRequest* req,
                                             v1::ListTrainingJobsResponse* resp) override;
  grpc::ServerUnaryReactor* CancelTrainingJob(grpc::CallbackServerContext* ctx,
                                              const v1::GetTrainingJobRequest* req,
                                              v1::TrainingJob* job) override;
  grpc::ServerUnaryReactor* ActivateVersion(grpc::CallbackServerContext* ctx,
                                            const v1::ActivateVersionRequest* req,
                                            v1::ModelInfoBrief* resp) override;
  grpc::ServerUnaryReactor* DeleteVersion(grpc::CallbackServerContext* ctx,
                                          const v1::DeleteVersionRequest* req,
                                          v1::ModelInfoBrief* resp) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* ctx,
                                        const v1::DeleteModelRequest* req,
                                        v1::DeleteModelResponse* resp) override;
  grpc::ServerUnaryReactor* SetThreshold(grpc::CallbackServerContext* ctx,
                                         const v1::SetThresholdRequest* req,
                                         v1::ModelInfoBrief* resp) override;

 private:
  // Authorises, then runs `fn` (which returns absl::Status) on the admin executor.
  template <typename Fn>
  grpc::ServerUnaryReactor* Lifecycle(grpc::CallbackServerContext* ctx, Fn fn);

  const Options& options_;
  ModelRegistry* registry_;
  TrainingJobs* jobs_;
  Uploads* uploads_;
  Executor* executor_;
  const Authorizer* auth_;
};

}  // namespace aeserve::server
