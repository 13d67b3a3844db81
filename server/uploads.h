// CreateTrainingJob uploads. A job is queued only when the client half-closes an upload that
// delivered exactly the rows its header announced; a cancelled, cut, idle or malformed upload
// creates nothing. Every upload reserves its declared size from one budget shared with queued and
// running jobs (--max_upload_bytes), so training data in memory is bounded however many clients
// upload at once; an upload idle for --upload_idle_seconds is ended.
#pragma once

#include <chrono>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/admin.grpc.pb.h"
#include "server/autopilot.h"
#include "server/byte_budget.h"
#include "server/options.h"
#include "server/training_jobs.h"

namespace aeserve::server {

class UploadReactor;

class Uploads {
 public:
  // Starts the idle sweeper (none when --upload_idle_seconds is 0).
  // `autopilot` (may be null) keeps uploads marked `retain`.
  Uploads(const Options& options, TrainingJobs* jobs, ByteBudget* budget,
          Autopilot* autopilot = nullptr);
  ~Uploads();  // stops the sweeper

  // One CreateTrainingJob call; a non-OK `denied` finishes it at once. `actor` is who asked
  // (recorded with the job and in the audit log).
  grpc::ServerReadReactor<grpc::ByteBuffer>* Start(grpc::CallbackServerContext* ctx,
                                                   grpc::ByteBuffer* out, grpc::Status denied,
                                                   std::string actor);
  size_t open() const;

 private:
  friend class UploadReactor;
  void Add(UploadReactor* r);
  void Remove(UploadReactor* r);
  void Sweep();

  const Options& options_;
  TrainingJobs* const jobs_;
  ByteBudget* const budget_;
  Autopilot* const autopilot_;
  // Lock order: Uploads::mu_ before UploadReactor::mu_.
  mutable absl::Mutex mu_;
  std::set<UploadReactor*> open_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread sweeper_;
};

}  // namespace aeserve::server
