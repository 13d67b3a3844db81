// Scoring workers: a fixed set of threads, each with one oneDNN thread and its own execution
// contexts, fed by a bounded queue. gRPC reactions hand work here and never block on it.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "engine/model.h"

namespace aeserve::server {

// State a worker thread owns: execution contexts per model architecture (every model of one
// architecture shares them) and reusable result buffers.
class Worker {
 public:
  // The context of this worker for `model`'s architecture: one made with the architecture (or
  // new) on its first use here.
  engine::ScoringContext& ContextFor(const std::shared_ptr<const engine::Model>& model);
  engine::ScoreResult& result() { return result_; }

 private:
  struct Cached {
    std::weak_ptr<const engine::Architecture> arch;
    std::unique_ptr<engine::ScoringContext> context;
  };
  std::unordered_map<const engine::Architecture*, Cached> contexts_;
  engine::ScoreResult result_;
};

class Executor {
 public:
  using Task = std::function<void(Worker&)>;

  // `max_queue` bounds tasks submitted with TrySubmit; Submit (for streams, at most one task
  // each and bounded by --max_streams) is not refused.
  Executor(int threads, int max_queue);
  ~Executor();

  // False when the queue is full or the executor is stopping: answer RESOURCE_EXHAUSTED.
  bool TrySubmit(Task task);
  void Submit(Task task);
  // Runs `task` on the calling thread, with a worker state of its own, when a scoring thread is
  // idle and nothing is queued: a small batch then skips the hand-off to a worker thread and back
  // (bench/RESULTS.md, "Serving speed, round 3"). False (nothing ran) otherwise, or when stopping.
  bool TryRunHere(const Task& task);
  // Runs what is queued, then joins the workers. Callers inside TryRunHere are not waited for:
  // the server stops the executor only after gRPC has ended every call.
  void Stop();
  size_t queue_depth() const;

 private:
  void Loop();

  const size_t max_queue_;
  mutable absl::Mutex mu_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  size_t busy_ ABSL_GUARDED_BY(mu_) = 0;  // tasks running, on scoring threads or callers
  // Worker states of callers running tasks themselves (at most one per scoring thread).
  std::vector<std::unique_ptr<Worker>> spare_ ABSL_GUARDED_BY(mu_);
  size_t size_ = 0;  // scoring threads
  std::vector<std::thread> threads_;
};

}  // namespace aeserve::server
