// StreamScore: one reactor per stream. Reads ahead at most stream_max_pending batches and keeps
// at most stream_max_unsent answers for a slow reader; past either bound it stops reading, so
// gRPC flow control pushes back on the client and memory stays bounded. Batches are scored one
// at a time per stream, in order, on the executor; reactions only move state and never block.
#pragma once

#include <chrono>
#include <deque>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "anomaly_feed.h"
#include "executor.h"
#include "server_metrics.h"
#include "model_registry.h"
#include "options.h"

namespace aeserve::server {

class StreamReactor;

// The open streams, so that shutdown can close each with a status.
// Lock order: StreamTracker::mu_ before StreamReactor::mu_.
class StreamTracker {
 public:
  // False when --max_streams are open already.
  bool Add(StreamReactor* r, int max_streams);
  void Remove(StreamReactor* r);
  // Tells every open stream to finish after the batches it has read (UNAVAILABLE).
  void ShutdownAll();
  size_t size() const;

 private:
  mutable absl::Mutex mu_;
  std::set<StreamReactor*> streams_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
};

class StreamReactor : public grpc::ServerBidiReactor<v1::StreamScoreRequest, v1::StreamScoreResponse> {
 public:
  // A non-OK `denied` (authorisation) ends the stream at once with that status.
  StreamReactor(const Options& options, const ModelRegistry* registry, Executor* executor,
                StreamTracker* tracker, grpc::Status denied, ServerMetrics* metrics,
                AnomalyFeed* feed);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;
  void Shutdown();

 private:
  void Process(Worker& worker);
  void ScoreOne(const v1::StreamScoreRequest& req, Worker& worker,
                std::vector<v1::StreamScoreResponse>* out);
  void Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Debounce(v1::ScoreResponse* r);
  void Account(const v1::ScoreResponse& r);
  void MaybeStats(uint64_t sequence, std::vector<v1::StreamScoreResponse>* out);

  const Options& options_;
  const ModelRegistry* registry_;
  Executor* executor_;
  StreamTracker* tracker_;
  ServerMetrics* metrics_;
  AnomalyFeed* feed_;
  bool tracked_ = false;
  std::chrono::steady_clock::time_point submitted_;  // when the batch being scored was queued
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();

  absl::Mutex mu_;
  v1::StreamScoreRequest incoming_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::StreamScoreRequest> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::StreamScoreResponse> unsent_ ABSL_GUARDED_BY(mu_);
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool processing_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;

  // Touched only by the one Process task of this stream at a time.
  bool configured_ = false;
  v1::StreamConfig config_;
  std::vector<uint8_t> window_;  // debounce ring of the last debounce_n flags
  size_t window_pos_ = 0, window_count_ = 0;
  uint64_t stats_batches_ = 0, stats_samples_ = 0, stats_anomalies_ = 0;
  uint64_t total_samples_ = 0, total_anomalies_ = 0;
  std::vector<float> stats_errors_;
  std::chrono::steady_clock::time_point stats_start_ = std::chrono::steady_clock::now();
};

}  // namespace aeserve::server
