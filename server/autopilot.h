// The autopilot: per model (or entity model), opt-in by a retrain policy stored with the model
// (<key dir>/AUTOPILOT), it keeps the traffic the model scores (retention.h), starts a retrain on
// it when a trigger fires (drift, growth, schedule, or by hand), and puts the result in shadow
// beside the active version — scored off the response path, on its own thread, from a bounded
// queue — and promotes or rejects it by the policy's rule. Every decision goes to the audit log
// with the numbers that made it. The store is the shared state: a replica follows policies other
// replicas set, reads their retained segments, and a retrain is claimed in <key dir>/RETRAIN under
// the store lock, so at most one runs per model wherever it started.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "aeserve/v1/admin.pb.h"
#include "server/audit_log.h"
#include "server/model_registry.h"
#include "server/retention.h"
#include "server/training_jobs.h"
#include "spdlog/logger.h"

namespace aeserve::server {

class Shadow;

class Autopilot {
 public:
  // `tick_seconds`: how often policies are re-read from the store, segments written and triggers
  // and shadow windows checked.
  // A retrain reads at most `max_training_values` values (--max_training_values).
  Autopilot(ModelRegistry* registry, TrainingJobs* jobs, const AuditLog* audit,
            std::shared_ptr<spdlog::logger> log, double tick_seconds,
            uint64_t max_training_values = 256u << 20);
  ~Autopilot();  // Stop()
  void Start();  // reads every policy in the store, then starts the threads
  void Stop();   // writes what is retained and stops the threads

  // --- the scoring path (cheap when no policy exists) ---
  // False while no model has a policy: the scoring path then skips everything below.
  bool Enabled() const { return policies_.load(std::memory_order_relaxed) > 0; }
  // A batch `h` scored, for a shadow window running beside it (if any): the engine inputs
  // (windows for series models) and `h`'s per-sample scores and flags. Never blocks; a full
  // queue drops the batch (counted).
  void ShadowBatch(const ModelHandle& h, absl::Span<const float> inputs,
                   absl::Span<const float> scores, absl::Span<const uint8_t> anomalous,
                   double compute_seconds);
  // Rows a model scored (model order, raw units), for retention and the triggers. `alarmed`:
  // the stream's alarm per row (empty for unary calls). `scores`: per row (NaN = none).
  void Scored(const ModelHandle& h, absl::Span<const float> rows,
              absl::Span<const int64_t> timestamps, absl::Span<const float> scores,
              absl::Span<const uint8_t> flagged, absl::Span<const uint8_t> alarmed);

  // --- admin ---
  absl::StatusOr<v1::AutopilotStatus> SetPolicy(const ModelKey& key, const v1::RetrainPolicy& p,
                                                bool clear, const std::string& actor);
  absl::StatusOr<v1::TrainingJob> Retrain(const ModelKey& key, const std::string& actor);
  absl::StatusOr<v1::AutopilotStatus> StartShadow(const ModelKey& key, uint64_t version,
                                                  const std::string& actor);
  // Uploaded rows to keep as history (TrainingJobHeader.retain); FAILED_PRECONDITION without a
  // policy.
  absl::Status RetainUpload(const v1::TrainingJobHeader& header, const std::vector<float>& values,
                            const std::vector<int64_t>& timestamps);
  bool HasPolicy(const ModelKey& key) const { return Find(key) != nullptr; }
  // For GetModel; false when the model has no policy.
  bool Status(const ModelKey& key, v1::AutopilotStatus* out) const;
  // Every model with a policy, for /metrics.
  std::vector<std::pair<ModelKey, v1::AutopilotStatus>> AllStatus() const;

  // Policy checks and defaults (INVALID_ARGUMENT naming the field).
  static absl::StatusOr<v1::RetrainPolicy> Resolve(const v1::RetrainPolicy& p);

  // Runs one tick now (tests; the thread runs them every tick_seconds).
  void Tick();
  // Waits up to `timeout_seconds` until no batch waits for or is being scored by a shadow
  // candidate; false when some still do (benchmarks drain the shadow between runs).
  bool WaitForShadowIdle(double timeout_seconds);

 private:
  struct State;
  std::shared_ptr<State> Find(const ModelKey& key) const;
  // Re-reads policies from the store (new, changed, removed).
  void Reload();
  // Makes `p` (resolved; its file has `stamp`) the key's policy, creating its state if new.
  void Apply(const ModelKey& key, const v1::RetrainPolicy& p, uint64_t stamp);
  // Starts a retrain when no other runs and the interval allows; the reason goes to the audit
  // log. `manual` skips the interval.
  absl::StatusOr<v1::TrainingJob> StartRetrain(const ModelKey& key, std::shared_ptr<State> s,
                                               const std::string& trigger,
                                               const std::string& reason, const std::string& actor,
                                               bool manual);
  void RetrainDone(const ModelKey& key, const v1::TrainingJob& job, const std::string& actor);
  // Call with s.shadow_mu held.
  absl::Status BeginShadow(const ModelKey& key, State& s, uint64_t version,
                           const std::string& actor, bool decide);
  void CheckTriggers(const ModelKey& key, std::shared_ptr<State> s, int64_t now_ms);
  void CheckShadow(const ModelKey& key, State& s, int64_t now_ms);
  void Record(const ModelKey& key, uint64_t version, const std::string& action,
              const std::string& actor, const std::string& reason, const std::string& job = "");
  void ShadowLoop();

  ModelRegistry* const registry_;
  TrainingJobs* const jobs_;
  const AuditLog* const audit_;
  const std::shared_ptr<spdlog::logger> log_;
  const double tick_seconds_;
  const uint64_t max_training_values_;
  const std::string replica_;

  mutable absl::Mutex mu_;
  std::map<ModelKey, std::shared_ptr<State>> states_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> policies_{0};

  // The shadow queue: batches waiting for their candidate.
  struct ShadowWork;
  absl::Mutex queue_mu_;
  std::deque<ShadowWork> queue_ ABSL_GUARDED_BY(queue_mu_);
  size_t queue_bytes_ ABSL_GUARDED_BY(queue_mu_) = 0;
  size_t queue_reserved_ ABSL_GUARDED_BY(queue_mu_) = 0;  // batches being copied in
  bool shadow_busy_ ABSL_GUARDED_BY(queue_mu_) = false;   // a batch being scored
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;

  absl::Mutex tick_mu_;  // one Tick at a time
  absl::Mutex stop_mu_;
  bool stop_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread ticker_, shadow_thread_;
};

}  // namespace aeserve::server
