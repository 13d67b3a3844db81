// Training jobs: queue, runners, state and watchers.
#include "server/training_jobs.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/spec.h"
#include "engine/threshold.h"
#include "engine/trainer.h"
#include "engine/window.h"
#include "server/columns.h"

namespace aeserve::server {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

TrainingJobs::TrainingJobs(ModelRegistry* registry, int runners, int max_queued,
                           std::shared_ptr<spdlog::logger> log, ServerMetrics* metrics,
                           int max_finished, const AuditLog* audit)
    : registry_(registry),
      metrics_(metrics),
      audit_(audit),
      max_queued_(static_cast<size_t>(max_queued)),
      max_finished_(static_cast<size_t>(std::max(1, max_finished))),
      log_(std::move(log)) {
  for (int i = 0; i < runners; ++i) runners_.emplace_back([this] { Loop(); });
}

TrainingJobs::~TrainingJobs() { Stop(); }

bool TrainingJobs::Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

absl::Status TrainingJobs::CheckHeader(const v1::TrainingJobHeader& h) const {
  auto key = MakeKey(h.model(), h.entity());
  if (!key.ok()) return key.status();
  if (h.num_features() == 0) return absl::InvalidArgumentError("header: num_features must be > 0");
  if (h.feature_names_size() != 0 && h.feature_names_size() != static_cast<int>(h.num_features())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header: ", h.feature_names_size(), " feature names for ", h.num_features(), " features"));
  }
  if (auto st = CheckUniqueNames(h.feature_names()); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("header: ", st.message()));
  }
  if (auto p = engine::ResolvePolicy(h.policy()); !p.ok()) return p.status();
  if (h.fine_tune() || h.base_version() != 0) {
    auto base = registry_->Handle(*key, h.base_version());
    if (!base.ok()) return base.status();
    const v1::ModelSpec& bs = base->model->spec();
    const uint32_t columns = engine::IsSeries(bs) ? bs.window().columns() : bs.num_features();
    if (columns != h.num_features()) {
      return absl::InvalidArgumentError(absl::StrCat("fine-tuning: the base version has ", columns,
                                                     " features, the data ", h.num_features()));
    }
  } else {
    // A series model's inputs are windows over the uploaded columns.
    v1::ModelSpec spec = h.spec();
    uint32_t inputs = h.num_features();
    if (engine::IsSeries(spec)) {
      v1::Window* w = spec.mutable_window();
      if (auto st = engine::WindowForColumns(w, h.num_features()); !st.ok()) return st;
      inputs = static_cast<uint32_t>(engine::WindowInputs(*w, h.num_features()));
      if (h.rows() != 0 && h.rows() < w->length()) {
        return absl::InvalidArgumentError(absl::StrCat("model spec: a window of ", w->length(),
                                                       " steps is longer than the series of ",
                                                       h.rows(), " rows this upload sends"));
      }
    }
    if (auto r = engine::ResolveSpec(spec, inputs); !r.ok()) return r.status();
  }
  if (auto o = engine::ResolveTrainingOptions(h.options()); !o.ok()) return o.status();
  if (auto t = engine::ResolveThresholdConfig(h.threshold()); !t.ok()) return t.status();
  if (h.critical_threshold().method() != v1::THRESHOLD_METHOD_UNSPECIFIED) {
    if (auto st = engine::CheckCriticalConfig(h.critical_threshold(), h.threshold()); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("critical_threshold: ", st.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::ModelSpec> TrainingJobs::EffectiveSpec(const v1::TrainingJobHeader& h) const {
  if (h.has_spec() || (!h.fine_tune() && h.base_version() == 0)) return h.spec();
  auto key = MakeKey(h.model(), h.entity());
  if (!key.ok()) return key.status();
  auto base = registry_->Handle(*key, h.base_version());
  if (!base.ok()) return base.status();
  return base->model->spec();
}

absl::StatusOr<v1::TrainingJob> TrainingJobs::Submit(const v1::TrainingJobHeader& header,
                                                     std::vector<float> data,
                                                     std::vector<int64_t> timestamps_ms,
                                                     ByteBudget::Reservation reservation,
                                                     JobOrigin origin) {
  if (auto st = CheckHeader(header); !st.ok()) return st;
  if (data.empty()) return absl::InvalidArgumentError("no training data");
  if (data.size() % header.num_features() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("training data: ", data.size(),
                                                   " values is not a multiple of num_features ",
                                                   header.num_features()));
  }
  const size_t rows = data.size() / header.num_features();
  if (auto st = EnoughRows(rows); !st.ok()) return st;
  if (!timestamps_ms.empty() && timestamps_ms.size() != rows) {
    return absl::InvalidArgumentError(absl::StrCat("training data: ", timestamps_ms.size(),
                                                   " timestamps for ", rows,
                                                   " rows: give none or one per row"));
  }
  auto job = std::make_shared<Job>();
  job->header = header;
  job->data = std::move(data);
  job->timestamps_ms = std::move(timestamps_ms);
  job->reservation = std::move(reservation);
  return Enqueue(std::move(job), origin);
}

absl::StatusOr<v1::TrainingJob> TrainingJobs::SubmitFrom(const v1::TrainingJobHeader& header,
                                                         Source source, JobOrigin origin,
                                                         Done on_done) {
  if (auto st = CheckHeader(header); !st.ok()) return st;
  auto job = std::make_shared<Job>();
  job->header = header;
  job->source = std::move(source);
  job->on_done = std::move(on_done);
  return Enqueue(std::move(job), origin);
}

absl::StatusOr<v1::TrainingJob> TrainingJobs::Enqueue(std::shared_ptr<Job> job,
                                                      const JobOrigin& origin) {
  const v1::TrainingJobHeader& header = job->header;
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("server shutting down");
  if (queue_.size() >= max_queued_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("training queue is full (", max_queued_, " jobs waiting)"));
  }
  v1::TrainingJob& s = job->state;
  s.set_id(absl::StrCat("job-", NowMs(), "-", next_id_++));
  s.set_model(header.model());
  s.set_entity(header.entity());
  s.set_state(v1::JOB_STATE_QUEUED);
  s.set_actor(origin.actor);
  s.set_trigger(origin.trigger);
  s.set_num_features(header.num_features());
  s.set_rows(job->data.size() / header.num_features());
  // The header was checked (CheckHeader), so the options resolve.
  s.set_epochs(
      engine::ResolveTrainingOptions(header.options()).value_or(v1::TrainingOptions()).epochs());
  s.set_created_unix_ms(NowMs());
  jobs_[s.id()] = job;
  queue_.push_back(job);
  log_->info("training job {} queued for model '{}{}{}': {} rows x {} features", s.id(),
             header.model(), header.entity().empty() ? "" : "/", header.entity(), s.rows(),
             header.num_features());
  return s;
}

absl::StatusOr<v1::TrainingJob> TrainingJobs::Get(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end())
    return absl::NotFoundError(absl::StrCat("unknown training job '", id, "'"));
  return it->second->state;
}

std::map<v1::JobState, int> TrainingJobs::CountByState() const {
  absl::MutexLock lock(&mu_);
  std::map<v1::JobState, int> out;
  for (const auto& [id, job] : jobs_) ++out[job->state.state()];
  return out;
}

std::vector<v1::TrainingJob> TrainingJobs::List(const std::string& model) const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::TrainingJob> out;
  for (const auto& [id, job] : jobs_) {
    if (model.empty() || job->state.model() == model) {
      v1::TrainingJob s = job->state;
      s.clear_history();
      out.push_back(std::move(s));
    }
  }
  return out;
}

absl::Status TrainingJobs::EnoughRows(uint64_t rows) {
  if (rows >= kMinTrainingRows) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "training data: ", rows, rows == 1 ? " row" : " rows", "; at least ", kMinTrainingRows,
      " are needed to learn from and to calibrate a threshold on (hundreds or more are better)"));
}

absl::Status TrainingJobs::ExplainMissing(const absl::Status& missing, const std::string& model,
                                          const std::string& entity, uint64_t version) const {
  if (!absl::IsNotFound(missing) || version != 0) return missing;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, job] : jobs_) {
    const v1::TrainingJob& s = job->state;
    if (s.model() != model || (s.entity() != entity && !s.entity().empty()) ||
        (s.state() != v1::JOB_STATE_QUEUED && s.state() != v1::JOB_STATE_RUNNING)) {
      continue;
    }
    const std::string what = entity.empty() ? absl::StrCat("model '", model, "'")
                                            : absl::StrCat("model '", model, "/", entity, "'");
    return absl::UnavailableError(
        absl::StrCat(what, " has no version yet: training job ", id, " is ",
                     s.state() == v1::JOB_STATE_QUEUED
                         ? std::string("queued")
                         : absl::StrCat("running (epoch ", s.epoch(), " of ", s.epochs(), ")"),
                     "; it serves once the job succeeds (aectl jobs --model ", model, ")"));
  }
  return missing;
}

absl::StatusOr<v1::TrainingJob> TrainingJobs::Cancel(const std::string& id) {
  absl::ReleasableMutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end())
    return absl::NotFoundError(absl::StrCat("unknown training job '", id, "'"));
  Job& job = *it->second;
  if (Terminal(job.state.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " has already ended: ", v1::JobState_Name(job.state.state())));
  }
  job.cancel = true;
  if (job.state.state() == v1::JOB_STATE_QUEUED) {
    for (auto q = queue_.begin(); q != queue_.end(); ++q) {
      if (q->get() == &job) {
        queue_.erase(q);
        break;
      }
    }
    job.state.set_state(v1::JOB_STATE_CANCELLED);
    job.state.set_finished_unix_ms(NowMs());
    std::vector<float>().swap(job.data);
    job.reservation.Release();
    Publish(job);
    v1::TrainingJob state = job.state;
    Done done = std::move(job.on_done);
    Finished(id);  // may erase the job
    lock.Release();
    if (done) done(state);
    return state;
  }
  return job.state;
}

absl::StatusOr<v1::TrainingJob> TrainingJobs::Watch(const std::string& id, Watcher watcher,
                                                    uint64_t* token) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end())
    return absl::NotFoundError(absl::StrCat("unknown training job '", id, "'"));
  *token = next_token_++;
  if (!Terminal(it->second->state.state())) it->second->watchers[*token] = std::move(watcher);
  return it->second->state;
}

void TrainingJobs::Unwatch(const std::string& id, uint64_t token) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it != jobs_.end()) it->second->watchers.erase(token);
}

void TrainingJobs::Publish(Job& job) {
  for (auto& [token, w] : job.watchers) w(job.state);
  if (Terminal(job.state.state())) job.watchers.clear();
}

void TrainingJobs::Stop() {
  std::vector<std::pair<Done, v1::TrainingJob>> ended;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [id, job] : jobs_) job->cancel = true;
    // Queued jobs will never run: end them now (their watchers learn it, their data is freed).
    while (!queue_.empty()) {
      std::shared_ptr<Job> job = queue_.front();
      queue_.pop_front();
      job->state.set_state(v1::JOB_STATE_CANCELLED);
      job->state.set_error("server shutting down");
      job->state.set_finished_unix_ms(NowMs());
      std::vector<float>().swap(job->data);
      std::vector<int64_t>().swap(job->timestamps_ms);
      job->reservation.Release();
      Publish(*job);
      if (job->on_done) ended.emplace_back(std::move(job->on_done), job->state);
      Finished(job->state.id());
    }
  }
  for (auto& [done, state] : ended) done(state);
  for (auto& t : runners_) {
    if (t.joinable()) t.join();
  }
  runners_.clear();
}

void TrainingJobs::Loop() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](TrainingJobs* t)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu_) { return !t->queue_.empty() || t->stopping_; },
          this));
      if (stopping_) return;
      job = queue_.front();
      queue_.pop_front();
      job->state.set_state(v1::JOB_STATE_RUNNING);
      job->state.set_started_unix_ms(NowMs());
      Publish(*job);
    }
    Run(*job);
  }
}

void TrainingJobs::Run(Job& job) {
  const v1::TrainingJobHeader& h = job.header;
  const ModelKey key{h.model(), h.entity()};
  absl::Status sourced = absl::OkStatus();
  if (h.retain() && retain_) {
    sourced = retain_(h, job.data, job.timestamps_ms);
    if (!sourced.ok())
      sourced = absl::Status(sourced.code(), absl::StrCat("retain: ", sourced.message()));
  }
  if (job.source) {
    sourced = job.source(&job.data, &job.timestamps_ms);
    if (sourced.ok()) {
      absl::MutexLock lock(&mu_);
      const uint64_t rows = job.data.size() / std::max<uint32_t>(1, h.num_features());
      job.header.set_rows(rows);
      job.state.set_rows(rows);
      Publish(job);
      sourced = EnoughRows(rows);
    }
  }
  engine::TrainRequest req;
  req.spec = h.spec();
  req.options = h.options();
  req.threshold = h.threshold();
  req.policy = h.policy();
  req.description = h.description();
  req.cancel = &job.cancel;
  absl::StatusOr<ModelHandle> base = ModelHandle{};
  v1::ModelFile base_file;  // the base version with its weights, for fine-tuning
  if (!sourced.ok()) {
    base = sourced;
  } else if (h.fine_tune() || h.base_version() != 0) {
    base = registry_->Handle(key, h.base_version());
    if (base.ok()) {
      base_file = base->model->FullFile();
      req.start_from = &base_file;
      if (!h.has_spec()) req.spec = base->model->spec();
      req.policy = base->model->file().policy();  // the base's, with the header's changes
      req.policy.MergeFrom(h.policy());
    }
  }
  std::vector<std::string> names(h.feature_names().begin(), h.feature_names().end());
  const size_t d = h.num_features();
  engine::TrainingData data{job.data, job.data.size() / d, d, names, job.timestamps_ms};
  absl::StatusOr<v1::ModelFile> file =
      !base.ok() ? absl::StatusOr<v1::ModelFile>(base.status())
                 : engine::Train(req, data, [&](const engine::TrainingProgress& p) {
                     absl::MutexLock lock(&mu_);
                     v1::TrainingJob& s = job.state;
                     s.set_epoch(p.epoch);
                     s.set_epochs(p.epochs);
                     s.set_train_loss(p.train_loss);
                     s.set_validation_loss(p.validation_loss);
                     s.set_samples_per_second(p.samples_per_second);
                     s.set_elapsed_seconds(p.seconds);
                     s.set_eta_seconds(p.seconds / p.epoch * (p.epochs - p.epoch));
                     v1::EpochRecord* r = s.add_history();
                     r->set_epoch(p.epoch);
                     r->set_train_loss(p.train_loss);
                     r->set_validation_loss(p.validation_loss);
                     r->set_samples_per_second(p.samples_per_second);
                     Publish(job);
                     if (metrics_ != nullptr) {
                       metrics_->RecordTrainingProgress(key.model, p.epoch, p.train_loss,
                                                        p.validation_loss);
                     }
                     return !job.cancel.load();
                   });
  absl::StatusOr<uint64_t> version;
  if (file.ok()) {
    file->mutable_metadata()->set_training_job(job.state.id());
    if (req.start_from != nullptr) file->mutable_metadata()->set_base_version(base->version);
    if (auto st = engine::SetThresholds(*file, {}, h.critical_threshold(), false); !st.ok()) {
      file = absl::InvalidArgumentError(absl::StrCat("critical_threshold: ", st.message()));
    }
  }
  if (file.ok() && job.cancel) file = absl::CancelledError("cancelled");
  if (file.ok()) version = registry_->AddVersion(key, *file, !h.no_activate());
  // A new version is in the audit log before anyone can see the job succeeded.
  const bool succeeded = file.ok() && version.ok();
  if (succeeded && audit_ != nullptr) {
    v1::Event e;
    e.set_model(key.model);
    e.set_entity(key.entity);
    e.set_version(*version);
    e.set_action("train");
    {
      absl::MutexLock lock(&mu_);
      const v1::TrainingJob& s = job.state;
      e.set_actor(s.actor());
      e.set_job_id(s.id());
      e.set_reason(absl::StrFormat("%s: %d rows, %d epochs, validation loss %.6g; %s", s.trigger(),
                                   s.rows(), s.epoch(), s.validation_loss(),
                                   !h.no_activate() || *version == 1 ? "activated" : "staged"));
    }
    if (auto st = audit_->Record(std::move(e)); !st.ok()) {
      log_->error("{}", std::string(st.message()));
    }
  }
  absl::ReleasableMutexLock lock(&mu_);
  v1::TrainingJob& s = job.state;
  s.set_finished_unix_ms(NowMs());
  s.set_eta_seconds(0);
  if (succeeded) {
    s.set_state(v1::JOB_STATE_SUCCEEDED);
    s.set_version(*version);
    s.set_activated(!h.no_activate() || *version == 1);
    log_->info("training job {} succeeded: model '{}' version {}{}", s.id(), key.str(), *version,
               s.activated() ? " (active)" : " (staged)");
  } else {
    const absl::Status st = file.ok() ? version.status() : file.status();
    const bool cancelled = st.code() == absl::StatusCode::kCancelled || job.cancel;
    s.set_state(cancelled ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_FAILED);
    s.set_error(std::string(st.message()));
    log_->warn("training job {} {}: {}", s.id(), cancelled ? "cancelled" : "failed",
               std::string(st.message()));
  }
  std::vector<float>().swap(job.data);
  job.reservation.Release();
  if (metrics_ != nullptr) {
    metrics_->RecordTrainingResult(s.state() == v1::JOB_STATE_SUCCEEDED   ? "succeeded"
                                   : s.state() == v1::JOB_STATE_CANCELLED ? "cancelled"
                                                                          : "failed");
  }
  Publish(job);
  const v1::TrainingJob final_state = s;
  Done done = std::move(job.on_done);
  Finished(s.id());
  lock.Release();
  if (done) done(final_state);
}

void TrainingJobs::Finished(const std::string& id) {
  finished_.push_back(id);
  while (finished_.size() > max_finished_) {
    jobs_.erase(finished_.front());  // watchers hold their own copy of the state
    finished_.pop_front();
  }
}

}  // namespace aeserve::server
