// Training jobs: queue, runners, state and watchers.
#include "server/training_jobs.h"

#include <chrono>
#include <set>

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

// What the header asks the trainer for; cancelled with the job.
engine::TrainRequest TrainingJobs::RequestOf(Job& job) const {
  const v1::TrainingJobHeader& h = job.header;
  engine::TrainRequest req;
  req.spec = h.spec();
  req.options = h.options();
  req.threshold = h.threshold();
  req.policy = h.policy();
  req.description = h.description();
  req.cancel = &job.cancel;
  req.bf16 = registry_->model_options().bf16;
  return req;
}

TrainingJobs::TrainingJobs(ModelRegistry* registry, int runners, int max_queued,
                           std::shared_ptr<spdlog::logger> log, ServerMetrics* metrics,
                           int max_finished, const AuditLog* audit)
    : registry_(registry),
      metrics_(metrics),
      audit_(audit),
      max_queued_(static_cast<size_t>(max_queued)),
      runners_count_(runners),
      max_finished_(static_cast<size_t>(std::max(1, max_finished))),
      log_(std::move(log)),
      files_(registry->store().dir()) {
  files_.RemoveDebris();
  for (int i = 0; i < runners; ++i) runners_.emplace_back([this] { Loop(); });
}

TrainingJobs::~TrainingJobs() { Stop(); }

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
  if (h.per_entity() &&
      (!h.entity().empty() || h.fine_tune() || h.base_version() != 0 || h.retain())) {
    return absl::InvalidArgumentError(
        "header.per_entity: each row names its entity, so header.entity must be empty; "
        "fine-tuning and retain are not available for bulk entity training");
  }
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
                                                     JobOrigin origin, EntityRows entities) {
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
  if (header.per_entity() != !entities.of_row.empty() ||
      (header.per_entity() && entities.of_row.size() != rows)) {
    return absl::InvalidArgumentError(
        absl::StrCat("training data: ", entities.of_row.size(), " entities for ", rows,
                     " rows: header.per_entity needs one per row, and without it there are none"));
  }
  for (uint32_t e : entities.of_row) {
    if (e >= entities.names.size()) return absl::InternalError("entity index out of range");
  }
  auto job = std::make_shared<Job>();
  job->header = header;
  job->data = std::move(data);
  job->timestamps_ms = std::move(timestamps_ms);
  job->reservation = std::move(reservation);
  job->entities = std::move(entities);
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
  // Unique across replicas on one store: the replica's name hashed into the id.
  s.set_id(absl::StrFormat("job-%d-%d-%04x", NowMs(), next_id_++,
                           std::hash<std::string>{}(ReplicaName()) & 0xffff));
  s.set_replica(ReplicaName());
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
  if (header.per_entity()) {
    std::vector<uint64_t> rows(job->entities.names.size(), 0);
    for (uint32_t e : job->entities.of_row) ++rows[e];
    for (size_t i = 0; i < rows.size(); ++i) {
      v1::EntityTraining* e = s.add_entities();
      e->set_entity(job->entities.names[i]);
      e->set_state(v1::JOB_STATE_QUEUED);
      e->set_rows(rows[i]);
    }
  }
  jobs_[s.id()] = job;
  queue_.push_back(job);
  WriteFile(*job, 0);  // every replica on the store can answer for it from now on
  log_->info("training job {} queued for model '{}{}{}': {} rows x {} features", s.id(),
             header.model(), header.entity().empty() ? "" : "/", header.entity(), s.rows(),
             header.num_features());
  return s;
}

absl::StatusOr<v1::TrainingJob> TrainingJobs::Get(const std::string& id) const {
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it != jobs_.end()) return it->second->state;
  }
  return files_.Read(id);  // another replica's job, as its file says
}

std::map<v1::JobState, int> TrainingJobs::CountByState() const {
  absl::MutexLock lock(&mu_);
  std::map<v1::JobState, int> out;
  for (const auto& [id, job] : jobs_) ++out[job->state.state()];
  return out;
}

std::vector<v1::TrainingJob> TrainingJobs::List(const std::string& model) const {
  // Listed without epoch history and entities (GetTrainingJob and WatchTrainingJob have them).
  auto brief = [](v1::TrainingJob s) {
    s.clear_history();
    s.clear_entities();
    return s;
  };
  std::vector<v1::TrainingJob> out;
  std::set<std::string> here;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, job] : jobs_) here.insert(id);
  }
  // Other replicas' jobs, from their files in the store (read outside the lock).
  for (v1::TrainingJob& s : files_.List()) {
    if (here.count(s.id()) || (!model.empty() && s.model() != model)) continue;
    out.push_back(brief(std::move(s)));
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [id, job] : jobs_) {
    if (model.empty() || job->state.model() == model) out.push_back(brief(job->state));
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
  if (it == jobs_.end()) {
    // Another replica's job: ask it (it cancels at its next store poll).
    auto remote = files_.Read(id);
    if (!remote.ok()) return remote.status();
    if (JobEnded(remote->state())) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", id, " has already ended: ", v1::JobState_Name(remote->state())));
    }
    if (auto st = files_.RequestCancel(id); !st.ok()) return st;
    return *remote;
  }
  const std::shared_ptr<Job> held = it->second;  // Close may forget it
  Job& job = *held;
  if (JobEnded(job.state.state())) {
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
    const v1::TrainingJob state = job.state;
    std::function<void()> done = Close(job);
    lock.Release();
    done();
    return state;
  }
  return job.state;
}

absl::StatusOr<v1::TrainingJob> TrainingJobs::Watch(const std::string& id, Watcher watcher,
                                                    uint64_t* token) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    // Another replica's job: followed through its file on each store poll.
    auto remote = files_.Read(id);
    if (!remote.ok()) return remote.status();
    *token = next_token_++;
    if (!JobEnded(remote->state())) {
      RemoteWatch& r = remote_[id];
      r.last = remote->SerializeAsString();
      r.watchers[*token] = std::move(watcher);
    }
    return *remote;
  }
  *token = next_token_++;
  if (!JobEnded(it->second->state.state())) it->second->watchers[*token] = std::move(watcher);
  return it->second->state;
}

void TrainingJobs::Unwatch(const std::string& id, uint64_t token) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it != jobs_.end()) it->second->watchers.erase(token);
  auto r = remote_.find(id);
  if (r != remote_.end()) {
    r->second.watchers.erase(token);
    if (r->second.watchers.empty()) remote_.erase(r);
  }
}

void TrainingJobs::Publish(Job& job) {
  for (auto& [token, w] : job.watchers) w(job.state);
  if (JobEnded(job.state.state())) job.watchers.clear();
  WriteFile(job, 1.0);
}

void TrainingJobs::WriteFile(Job& job, double min_seconds) {
  const auto now = std::chrono::steady_clock::now();
  if (job.state.state() == job.written_state &&
      std::chrono::duration<double>(now - job.written).count() < min_seconds) {
    return;
  }
  if (auto st = files_.Write(job.state); !st.ok()) {
    log_->warn("training job {}: its file in the store: {}", job.state.id(),
               std::string(st.message()));
  }
  job.written = now;
  job.written_state = job.state.state();
}

void TrainingJobs::SyncWithStore() {
  std::vector<std::string> cancel;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, job] : jobs_) {
      if (JobEnded(job->state.state())) continue;
      WriteFile(*job, 10.0);  // a heartbeat: other replicas see the job is alive
      if (files_.CancelRequested(id)) cancel.push_back(id);
    }
    for (auto it = remote_.begin(); it != remote_.end();) {
      auto state = files_.Read(it->first);
      if (!state.ok()) {
        ++it;
        continue;
      }
      std::string now = state->SerializeAsString();
      if (now != it->second.last) {
        for (auto& [token, w] : it->second.watchers) w(*state);
        it->second.last = std::move(now);
      }
      it = JobEnded(state->state()) ? remote_.erase(it) : std::next(it);
    }
  }
  for (const std::string& id : cancel) {
    log_->info("training job {}: cancelled by another replica", id);
    (void)Cancel(id);
  }
}

void TrainingJobs::Stop() {
  std::vector<std::function<void()>> ended;
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
      ended.push_back(Close(*job));
    }
  }
  for (auto& done : ended) done();
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
    TakeRunnerCore();
    Run(*job);
    GiveCore();
  }
}

void TrainingJobs::TakeRunnerCore() {
  absl::MutexLock lock(&cores_mu_);
  ++runners_waiting_;
  auto free = [this]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(cores_mu_) { return cores_busy_ < runners_count_; };
  cores_mu_.Await(absl::Condition(&free));
  --runners_waiting_;
  ++cores_busy_;
}

bool TrainingJobs::TakeHelperCore(absl::FunctionRef<bool()> wanted) {
  absl::MutexLock lock(&cores_mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(cores_mu_) {
    return !wanted() || cores_busy_ + runners_waiting_ < runners_count_;
  };
  cores_mu_.Await(absl::Condition(&ready));
  if (!wanted()) return false;
  ++cores_busy_;
  return true;
}

void TrainingJobs::GiveCore() {
  absl::MutexLock lock(&cores_mu_);
  --cores_busy_;
}

void TrainingJobs::Run(Job& job) {
  if (job.header.per_entity()) return RunPerEntity(job);
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
  engine::TrainRequest req = RequestOf(job);
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
  if (file.ok() && job.cancel) file = absl::CancelledError("cancelled");
  std::string summary;
  {
    absl::MutexLock lock(&mu_);
    const v1::TrainingJob& s = job.state;
    summary = absl::StrFormat("%d rows, %d epochs, validation loss %.6g", s.rows(), s.epoch(),
                              s.validation_loss());
  }
  const absl::StatusOr<uint64_t> version =
      file.ok() ? Commit(job, key, *std::move(file), req.start_from != nullptr ? base->version : 0,
                         summary)
                : absl::StatusOr<uint64_t>(file.status());
  absl::ReleasableMutexLock lock(&mu_);
  v1::TrainingJob& s = job.state;
  s.set_finished_unix_ms(NowMs());
  s.set_eta_seconds(0);
  if (version.ok()) {
    s.set_state(v1::JOB_STATE_SUCCEEDED);
    s.set_version(*version);
    s.set_activated(!h.no_activate() || *version == 1);
    log_->info("training job {} succeeded: model '{}' version {}{}", s.id(), key.str(), *version,
               s.activated() ? " (active)" : " (staged)");
  } else {
    const absl::Status& st = version.status();
    const bool cancelled = st.code() == absl::StatusCode::kCancelled || job.cancel;
    s.set_state(cancelled ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_FAILED);
    s.set_error(std::string(st.message()));
    log_->warn("training job {} {}: {}", s.id(), cancelled ? "cancelled" : "failed",
               std::string(st.message()));
  }
  std::function<void()> after = Close(job);
  lock.Release();
  after();
}

absl::StatusOr<uint64_t> TrainingJobs::Commit(Job& job, const ModelKey& key, v1::ModelFile file,
                                              uint64_t base_version, const std::string& summary) {
  const v1::TrainingJobHeader& h = job.header;
  std::string id, actor, trigger;
  {
    absl::MutexLock lock(&mu_);
    id = job.state.id();
    actor = job.state.actor();
    trigger = job.state.trigger();
  }
  file.mutable_metadata()->set_training_job(id);
  if (base_version != 0) file.mutable_metadata()->set_base_version(base_version);
  if (auto st = engine::SetThresholds(file, {}, h.critical_threshold(), false); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("critical_threshold: ", st.message()));
  }
  if (job.cancel) return absl::CancelledError("cancelled");
  absl::StatusOr<uint64_t> version = registry_->AddVersion(key, file, !h.no_activate());
  // A new version is in the audit log before anyone can see the job succeeded.
  if (version.ok() && audit_ != nullptr) {
    v1::Event e;
    e.set_model(key.model);
    e.set_entity(key.entity);
    e.set_version(*version);
    e.set_action("train");
    e.set_actor(actor);
    e.set_job_id(id);
    e.set_reason(absl::StrCat(trigger, ": ", summary, "; ",
                              !h.no_activate() || *version == 1 ? "activated" : "staged"));
    if (auto st = audit_->Record(std::move(e)); !st.ok()) {
      log_->error("{}", std::string(st.message()));
    }
  }
  return version;
}

std::function<void()> TrainingJobs::Close(Job& job) {
  v1::TrainingJob& s = job.state;
  std::vector<float>().swap(job.data);
  std::vector<int64_t>().swap(job.timestamps_ms);
  job.entities = {};
  job.reservation.Release();
  if (metrics_ != nullptr) {
    metrics_->RecordTrainingResult(s.state() == v1::JOB_STATE_SUCCEEDED   ? "succeeded"
                                   : s.state() == v1::JOB_STATE_CANCELLED ? "cancelled"
                                                                          : "failed");
  }
  Publish(job);
  Finished(s.id());
  if (!job.on_done) return [] {};
  return [done = std::move(job.on_done), final_state = s] { done(final_state); };
}

void TrainingJobs::RunPerEntity(Job& job) {
  const size_t n = job.entities.names.size();
  // Each entity's rows, in upload order.
  std::vector<std::vector<uint32_t>> rows(n);
  for (size_t r = 0; r < job.entities.of_row.size(); ++r) {
    rows[job.entities.of_row[r]].push_back(static_cast<uint32_t>(r));
  }
  std::atomic<size_t> next{0};
  auto more = [&] { return next.load() < n && !job.cancel; };
  auto work = [&] {
    for (size_t i = next++; i < n && !job.cancel; i = next++) TrainEntity(job, i, rows[i]);
  };
  // Helpers train an entity at a time, each on a core no other job is using (they wait for one).
  auto help = [&] {
    while (TakeHelperCore(more)) {
      if (const size_t i = next++; i < n) TrainEntity(job, i, rows[i]);
      GiveCore();
    }
  };
  std::vector<std::thread> helpers;
  const size_t threads = std::min<size_t>(n, static_cast<size_t>(std::max(1, runners_count_)));
  for (size_t t = 1; t < threads; ++t) helpers.emplace_back(help);
  work();                                // on this job's own core
  { absl::MutexLock wake(&cores_mu_); }  // helpers waiting for a core see there is no more work
  for (auto& t : helpers) t.join();

  absl::ReleasableMutexLock lock(&mu_);
  v1::TrainingJob& s = job.state;
  s.set_finished_unix_ms(NowMs());
  s.set_eta_seconds(0);
  int succeeded = 0, failed = 0;
  std::string first_failure;
  for (v1::EntityTraining& e : *s.mutable_entities()) {
    if (e.state() == v1::JOB_STATE_QUEUED || e.state() == v1::JOB_STATE_RUNNING) {
      e.set_state(v1::JOB_STATE_CANCELLED);  // never started, or stopped by the cancel
      e.set_error("cancelled");
    }
    if (e.state() == v1::JOB_STATE_SUCCEEDED) ++succeeded;
    if (e.state() == v1::JOB_STATE_FAILED) {
      if (failed++ == 0) first_failure = absl::StrCat(e.entity(), ": ", e.error());
    }
  }
  if (job.cancel) {
    s.set_state(v1::JOB_STATE_CANCELLED);
    s.set_error(absl::StrCat("cancelled after ", succeeded, " of ", n, " entities"));
  } else if (succeeded == 0) {
    s.set_state(v1::JOB_STATE_FAILED);
    s.set_error(absl::StrCat("every entity failed; the first: ", first_failure));
  } else {
    s.set_state(v1::JOB_STATE_SUCCEEDED);
    if (failed > 0) {
      s.set_error(absl::StrCat(failed, " of ", n, " entities failed; the first: ", first_failure));
    }
  }
  log_->info("training job {} for '{}': {} of {} entity models trained{}", s.id(), s.model(),
             succeeded, n, failed > 0 ? absl::StrCat(", ", failed, " failed") : "");
  std::function<void()> after = Close(job);
  lock.Release();
  after();
}

void TrainingJobs::TrainEntity(Job& job, size_t i, const std::vector<uint32_t>& rows) {
  const v1::TrainingJobHeader& h = job.header;
  const ModelKey key{h.model(), job.entities.names[i]};
  const size_t d = h.num_features();
  {
    absl::MutexLock lock(&mu_);
    job.state.mutable_entities(static_cast<int>(i))->set_state(v1::JOB_STATE_RUNNING);
    Publish(job);
  }
  std::vector<float> data(rows.size() * d);
  std::vector<int64_t> ts;
  for (size_t k = 0; k < rows.size(); ++k) {
    std::copy_n(job.data.data() + size_t{rows[k]} * d, d, data.data() + k * d);
    if (!job.timestamps_ms.empty()) ts.push_back(job.timestamps_ms[rows[k]]);
  }
  engine::TrainRequest req = RequestOf(job);
  std::vector<std::string> names(h.feature_names().begin(), h.feature_names().end());
  const absl::Status enough = EnoughRows(rows.size());
  absl::StatusOr<v1::ModelFile> file =
      !enough.ok()
          ? absl::StatusOr<v1::ModelFile>(enough)
          : engine::Train(req, engine::TrainingData{data, rows.size(), d, names, ts},
                          [&](const engine::TrainingProgress& p) {
                            absl::MutexLock lock(&mu_);
                            v1::EntityTraining* e = job.state.mutable_entities(static_cast<int>(i));
                            e->set_epoch(p.epoch);
                            e->set_epochs(p.epochs);
                            e->set_validation_loss(p.validation_loss);
                            Publish(job);
                            return !job.cancel.load();
                          });
  std::string summary;
  if (file.ok()) {
    absl::MutexLock lock(&mu_);
    const v1::EntityTraining& e = job.state.entities(static_cast<int>(i));
    summary = absl::StrFormat("%d rows, %d epochs, validation loss %.6g (bulk entity training)",
                              e.rows(), e.epoch(), e.validation_loss());
  }
  const absl::StatusOr<uint64_t> version = file.ok()
                                               ? Commit(job, key, *std::move(file), 0, summary)
                                               : absl::StatusOr<uint64_t>(file.status());
  absl::MutexLock lock(&mu_);
  v1::EntityTraining* e = job.state.mutable_entities(static_cast<int>(i));
  if (version.ok()) {
    e->set_state(v1::JOB_STATE_SUCCEEDED);
    e->set_version(*version);
    e->set_activated(!h.no_activate() || *version == 1);
  } else {
    const bool cancelled = version.status().code() == absl::StatusCode::kCancelled || job.cancel;
    e->set_state(cancelled ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_FAILED);
    e->set_error(std::string(version.status().message()));
  }
  Publish(job);
}

void TrainingJobs::Finished(const std::string& id) {
  finished_.push_back(id);
  while (finished_.size() > max_finished_) {
    files_.Remove(finished_.front());
    jobs_.erase(finished_.front());  // watchers hold their own copy of the state
    finished_.pop_front();
  }
}

}  // namespace aeserve::server
