// Scoring workers fed by a bounded queue.
#include "server/executor.h"

#include "engine/dnnl_util.h"

namespace aeserve::server {

engine::ScoringContext& Worker::ContextFor(const std::shared_ptr<const engine::Model>& model) {
  const std::shared_ptr<const engine::Architecture>& arch = model->architecture();
  auto it = contexts_.find(arch.get());
  if (it != contexts_.end() && !it->second.arch.expired()) return *it->second.context;
  if (contexts_.size() >= 16) {
    // Drop contexts of architectures no loaded model has any more.
    for (auto i = contexts_.begin(); i != contexts_.end();) {
      i = i->second.arch.expired() ? contexts_.erase(i) : std::next(i);
    }
  }
  Cached& c = contexts_[arch.get()];
  c.arch = arch;
  c.context = model->NewContext();
  return *c.context;
}

Executor::Executor(int threads, int max_queue)
    : max_queue_(static_cast<size_t>(max_queue)), size_(static_cast<size_t>(threads)) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

Executor::~Executor() { Stop(); }

bool Executor::TrySubmit(Task task) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || queue_.size() >= max_queue_) return false;
  queue_.push_back(std::move(task));
  return true;
}

void Executor::Submit(Task task) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(task));
}

bool Executor::TryRunHere(const Task& task) {
  std::unique_ptr<Worker> worker;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || !queue_.empty() || busy_ >= size_) return false;
    ++busy_;
    if (spare_.empty()) {
      worker = std::make_unique<Worker>();
    } else {
      worker = std::move(spare_.back());
      spare_.pop_back();
    }
  }
  {
    engine::ScopedThreads one(1);  // as on a scoring thread
    task(*worker);
  }
  absl::MutexLock lock(&mu_);
  --busy_;
  spare_.push_back(std::move(worker));
  return true;
}

size_t Executor::queue_depth() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

void Executor::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
  }
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

void Executor::Loop() {
  // One oneDNN (OpenMP) thread per worker: parallelism comes from serving many requests at once.
  engine::ScopedThreads one(1);
  Worker worker;
  bool ran = false;
  for (;;) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      if (ran) --busy_;
      // A task waits while callers scoring themselves (TryRunHere) take every slot: at most
      // as many tasks score at once as there are scoring threads.
      mu_.Await(absl::Condition(
          +[](Executor* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e->mu_) {
            return (!e->queue_.empty() && e->busy_ < e->size_) || e->stopping_;
          },
          this));
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
    }
    task(worker);
    ran = true;
  }
}

}  // namespace aeserve::server
