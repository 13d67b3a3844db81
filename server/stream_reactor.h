// StreamScore: one reactor per stream. Reads ahead at most stream_max_pending batches and keeps
// at most stream_max_unsent answers for a slow reader; past either bound it stops reading, so
// gRPC flow control pushes back on the client and memory stays bounded. The bytes every stream
// holds (batches read, answers not yet sent) also count against one budget across all streams
// (--max_stream_buffer_bytes): over it, streams stop reading until some are released. Batches are
// scored one at a time per stream, in order, on the executor; reactions only move state and never
// block. A message that does not parse, and an answer over the message limit, become error items
// in their place; the stream goes on.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "engine/window.h"
#include "server/anomaly_feed.h"
#include "server/autopilot.h"
#include "server/byte_budget.h"
#include "server/executor.h"
#include "server/incidents.h"
#include "server/model_registry.h"
#include "server/options.h"
#include "server/server_metrics.h"
#include "server/stream_stats.h"
#include "server/training_jobs.h"

namespace aeserve::server {

class StreamReactor;

// The open streams, so that shutdown can close each with a status, and their shared byte budget.
// Lock order: StreamTracker::mu_ before StreamReactor::mu_.
class StreamTracker {
 public:
  explicit StreamTracker(uint64_t max_bytes = uint64_t{1} << 30,
                         std::chrono::duration<double> incident_resume = std::chrono::seconds(300))
      : budget_(max_bytes), incidents_(incident_resume) {}
  // False when --max_streams are open already.
  bool Add(StreamReactor* r, int max_streams);
  void Remove(StreamReactor* r);
  // Tells every open stream to finish after the batches it has read (UNAVAILABLE).
  void ShutdownAll();
  size_t size() const;
  ByteBudget& budget() { return budget_; }
  // What named streams leave behind for a reconnect: their alarm and open incident.
  IncidentBook& incidents() { return incidents_; }
  // Gives `bytes` back to the budget; when streams wait for room and there is some now, wakes
  // them through `executor` (never from the caller's locks).
  void Release(uint64_t bytes, Executor* executor);
  void WaitForRoom() { waiting_.store(true); }

 private:
  void WakeWaiting();
  ByteBudget budget_;
  IncidentBook incidents_;
  std::atomic<bool> waiting_{false};
  mutable absl::Mutex mu_;
  std::set<StreamReactor*> streams_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
};

class StreamReactor : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // A non-OK `denied` (authorisation) ends the stream at once with that status.
  StreamReactor(const Options& options, const ModelRegistry* registry, Executor* executor,
                StreamTracker* tracker, grpc::Status denied, ServerMetrics* metrics,
                AnomalyFeed* feed, Autopilot* autopilot, const TrainingJobs* jobs = nullptr);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;
  void Shutdown();
  // Called by the tracker when the byte budget has room again.
  void Wake();

 private:
  struct Pending {
    v1::StreamScoreRequest request;
    grpc::Status parse_error;  // the message did not parse: answered with an error item
    uint64_t bytes = 0;
    std::chrono::steady_clock::time_point received;  // for aeserve_request_duration_seconds
  };
  struct Unsent {
    grpc::ByteBuffer message;
    uint64_t bytes = 0;
  };
  void Process(Worker& worker);
  void ScoreOne(const v1::StreamScoreRequest& req, Worker& worker,
                std::vector<v1::StreamScoreResponse>* out);
  // Serializes an answer; one over --max_message_bytes becomes an error item for its batch.
  Unsent Encode(const v1::StreamScoreResponse& r);
  void Hold(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Free(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves the stream on. With `here`, a small batch ready to score is left to the caller instead
  // of being queued: true means the caller must call RunProcess (after releasing mu_).
  bool Pump(bool here = false) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Scores the next batch on this thread if a scoring thread is idle, else queues it. `this` may
  // be gone when it returns.
  void RunProcess() ABSL_LOCKS_EXCLUDED(mu_);
  void Debounce(const ModelHandle& h, v1::ScoreResponse* r);
  std::string IncidentKey() const;

  const Options& options_;
  const ModelRegistry* registry_;
  Executor* executor_;
  StreamTracker* tracker_;
  ServerMetrics* metrics_;
  AnomalyFeed* feed_;
  Autopilot* autopilot_;
  const TrainingJobs* jobs_;  // may be null
  bool tracked_ = false;
  std::chrono::steady_clock::time_point submitted_;  // when the batch being scored was queued

  absl::Mutex mu_;
  // The read in flight and the count of messages read: touched only by StartRead's caller (under
  // mu_, while reading_ is false) and by OnReadDone (before it clears reading_).
  grpc::ByteBuffer incoming_;
  std::atomic<uint64_t> messages_read_{0};  // see OnReadDone
  std::deque<Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<Unsent> unsent_ ABSL_GUARDED_BY(mu_);
  uint64_t held_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // this stream's share of the budget
  bool waiting_for_room_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool processing_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  // The stream's model's multiply-adds per value, as of the last batch scored (0 = none yet):
  // whether Pump may leave the next batch to the gRPC thread (--inline_max_madds).
  double madds_per_value_ ABSL_GUARDED_BY(mu_) = 0;

  // Touched only by the one Process task of this stream at a time.
  bool configured_ = false;
  double scored_madds_per_value_ = 0;  // copied to madds_per_value_ after each batch
  v1::StreamConfig config_;
  std::unique_ptr<IncidentTracker> incidents_;    // with debounce: alarms and incidents
  std::unique_ptr<engine::WindowBuffer> window_;  // series models: the stream's last steps
  StreamStats stats_;                             // the periodic summary
};

}  // namespace aeserve::server
