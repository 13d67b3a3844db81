// Training jobs: a bounded queue served by at most --max_training_jobs runner threads (so scoring
// keeps its cores), each job's state published to any number of watchers. A finished job writes
// a new version through the registry (atomic write, load, then activation).
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/admin.pb.h"
#include "engine/trainer.h"
#include "server/audit_log.h"
#include "server/byte_budget.h"
#include "server/job_files.h"
#include "server/model_registry.h"
#include "server/server_metrics.h"
#include "spdlog/logger.h"

namespace aeserve::server {

// Bulk entity training: the distinct entity names of an upload and, per row, the index of its
// entity's name.
struct EntityRows {
  std::vector<std::string> names;
  std::vector<uint32_t> of_row;
};

// Who started a job and why (shown in the job and recorded in the audit log).
struct JobOrigin {
  std::string actor = "anonymous";
  std::string trigger = "upload";
};

class TrainingJobs {
 public:
  using Watcher = std::function<void(const v1::TrainingJob&)>;
  // Fills a job's rows (and timestamps) when it starts running, for jobs whose data is on the
  // server (the autopilot's retained rows); an error fails the job.
  using Source = std::function<absl::Status(std::vector<float>*, std::vector<int64_t>*)>;
  // Called once with the job's final state, whatever ended it, from no lock of ours.
  using Done = std::function<void(const v1::TrainingJob&)>;

  // At most `max_finished` ended jobs are remembered (oldest forgotten first, then NOT_FOUND).
  // `audit` (optional) records every version a job writes.
  TrainingJobs(ModelRegistry* registry, int runners, int max_queued,
               std::shared_ptr<spdlog::logger> log, ServerMetrics* metrics = nullptr,
               int max_finished = 100, const AuditLog* audit = nullptr);
  // Jobs per state, for the aeserve_training_jobs gauge.
  std::map<v1::JobState, int> CountByState() const;
  ~TrainingJobs();

  // Checks the header (INVALID_ARGUMENT with the reason) and, with `data`, queues the job.
  absl::Status CheckHeader(const v1::TrainingJobHeader& header) const;
  // The spec the job will train with: the header's, or (fine-tuning without one) the base
  // version's. Call after CheckHeader.
  absl::StatusOr<v1::ModelSpec> EffectiveSpec(const v1::TrainingJobHeader& header) const;
  // `timestamps_ms`: none, or one per row (series models need them). `reservation` holds the
  // data's bytes in the training-data budget until the job has ended.
  absl::StatusOr<v1::TrainingJob> Submit(const v1::TrainingJobHeader& header,
                                         std::vector<float> data,
                                         std::vector<int64_t> timestamps_ms = {},
                                         ByteBudget::Reservation reservation = {},
                                         JobOrigin origin = {}, EntityRows entities = {});
  // A job whose rows `source` gathers when it starts (header.rows is then filled in).
  absl::StatusOr<v1::TrainingJob> SubmitFrom(const v1::TrainingJobHeader& header, Source source,
                                             JobOrigin origin, Done on_done);
  absl::StatusOr<v1::TrainingJob> Get(const std::string& id) const;
  std::vector<v1::TrainingJob> List(const std::string& model) const;
  absl::StatusOr<v1::TrainingJob> Cancel(const std::string& id);
  // Fewer rows than this are refused: one row (or a handful) cannot calibrate a threshold.
  static constexpr uint64_t kMinTrainingRows = 10;
  // Entities one bulk entity training job may train.
  static constexpr size_t kMaxEntitiesPerJob = 100000;
  static absl::Status EnoughRows(uint64_t rows);
  // `missing` (the registry's answer to a request for `version` of model/entity) told better
  // when it is NOT_FOUND for the active version (0) while a job is still training the model:
  // UNAVAILABLE naming the job, its state and epoch. Anything else as is: a missing pinned
  // version will not appear when a job ends.
  absl::Status ExplainMissing(const absl::Status& missing, const std::string& model,
                              const std::string& entity, uint64_t version) const;

  // Keeps the rows of an upload whose header says `retain` (the autopilot's history), when the
  // job starts; an error fails the job.
  using RetainHook = std::function<absl::Status(
      const v1::TrainingJobHeader&, const std::vector<float>&, const std::vector<int64_t>&)>;
  void SetRetainHook(RetainHook hook) { retain_ = std::move(hook); }

  // Calls `watcher` with every new state of the job, from a runner thread, under the jobs lock:
  // it must only copy and hand off. Returns the current state; `*token` identifies the watcher.
  absl::StatusOr<v1::TrainingJob> Watch(const std::string& id, Watcher watcher, uint64_t* token);
  void Unwatch(const std::string& id, uint64_t token);

  // Cancels everything and joins the runners.
  void Stop();

  // Replicas on one store (job_files.h): acts on cancel requests other replicas wrote for jobs
  // running here, rewrites the files of running jobs as a heartbeat, and tells watchers of other
  // replicas' jobs what their files say now. Called on every store poll.
  void SyncWithStore();

 private:
  struct Job {
    v1::TrainingJob state;
    v1::TrainingJobHeader header;
    std::vector<float> data;
    std::vector<int64_t> timestamps_ms;   // none, or one per row
    ByteBudget::Reservation reservation;  // data's bytes in the training-data budget
    std::atomic<bool> cancel{false};
    std::map<uint64_t, Watcher> watchers;
    Source source;  // data gathered at the start (else `data` was uploaded)
    Done on_done;
    EntityRows entities;                            // header.per_entity: the entity of each row
    std::chrono::steady_clock::time_point written;  // when its file was last written
    v1::JobState written_state = v1::JOB_STATE_UNSPECIFIED;
  };
  // Watchers of a job another replica runs (answered from its file on each store poll).
  struct RemoteWatch {
    std::string last;  // the file's state as last sent, serialized
    std::map<uint64_t, Watcher> watchers;
  };
  // Writes the job's file when its state changed, or after `min_seconds` since the last write.
  void WriteFile(Job& job, double min_seconds) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::TrainingJob> Enqueue(std::shared_ptr<Job> job, const JobOrigin& origin);
  void Loop();
  void Run(Job& job);
  engine::TrainRequest RequestOf(Job& job) const;
  // header.per_entity: one model per entity; helper threads train more at once while cores are
  // free (TakeCore).
  void RunPerEntity(Job& job);
  // Training uses at most runners_count_ cores: one per running job, one per bulk-training helper
  // at work. A runner starting a job waits for a core (helpers give theirs back after each
  // entity, and take none while a runner waits); a helper waits while `wanted()` holds and
  // returns false once it no longer does.
  void TakeRunnerCore();
  bool TakeHelperCore(absl::FunctionRef<bool()> wanted);
  void GiveCore();
  // Trains entity `i` of the job on `rows` (indices into the job's rows).
  void TrainEntity(Job& job, size_t i, const std::vector<uint32_t>& rows);
  // A trained file, stamped with the job: a new version of `key`, recorded in the audit log with
  // `summary` (rows, epochs, loss) as the reason.
  absl::StatusOr<uint64_t> Commit(Job& job, const ModelKey& key, v1::ModelFile file,
                                  uint64_t base_version, const std::string& summary);
  // The job ended (its state is set): frees its data, publishes, forgets old jobs. Returns what
  // to call once mu_ is released (on_done with the final state).
  std::function<void()> Close(Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish(Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records that job `id` ended; forgets the oldest ended jobs beyond max_finished_.
  void Finished(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ModelRegistry* registry_;
  ServerMetrics* metrics_;
  const AuditLog* audit_;
  RetainHook retain_;  // set before any job runs
  const size_t max_queued_;
  const int runners_count_;
  absl::Mutex cores_mu_;
  int cores_busy_ ABSL_GUARDED_BY(cores_mu_) = 0;
  int runners_waiting_ ABSL_GUARDED_BY(cores_mu_) = 0;
  const size_t max_finished_;
  std::shared_ptr<spdlog::logger> log_;
  mutable absl::Mutex mu_;
  std::deque<std::shared_ptr<Job>> queue_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> finished_ ABSL_GUARDED_BY(mu_);  // ended jobs, oldest first
  const JobFiles files_;
  std::map<std::string, RemoteWatch> remote_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_token_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> runners_;
};

}  // namespace aeserve::server
