// CreateTrainingJob uploads: declared size, shared budget, idle timeout, all-or-nothing jobs.
#include "server/uploads.h"

#include <algorithm>
#include <atomic>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/window.h"
#include "server/raw_call.h"
#include "server/status_util.h"

namespace aeserve::server {

using Clock = std::chrono::steady_clock;

class UploadReactor : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  UploadReactor(Uploads* uploads, grpc::CallbackServerContext* ctx, grpc::ByteBuffer* out,
                grpc::Status denied, std::string actor)
      : uploads_(uploads), ctx_(ctx), out_(out), actor_(std::move(actor)) {
    if (denied.ok()) {
      tracked_ = true;
      uploads_->Add(this);  // before taking mu_: Uploads::mu_ comes first
    }
    absl::MutexLock lock(&mu_);
    if (denied.ok()) {
      StartRead(&incoming_);
    } else {
      End(denied);
    }
  }

  void OnReadDone(bool ok) override {
    // Parsed before taking the lock (the sweeper takes it): only this callback touches the read
    // in flight, and the next read starts below. Successive reads may complete on different gRPC
    // threads; the counter's release store after the parse and acquire load before the next one
    // order the accesses to incoming_ (the hand-off inside libgrpc is invisible to TSan).
    v1::CreateTrainingJobRequest req;
    grpc::Status parsed;
    if (ok) {
      const uint64_t n = messages_.load(std::memory_order_acquire) + 1;
      parsed = ParseMessage(&incoming_, &req, absl::StrCat("upload message ", n));
      messages_.store(n, std::memory_order_release);
    }
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    last_ = Clock::now();
    if (!ok) return Complete();
    if (!parsed.ok()) {
      return End(grpc::Status(parsed.error_code(),
                              absl::StrCat(parsed.error_message(), "; no job was created")));
    }
    if (req.has_header()) {
      if (have_header_) return End(Invalid("the header is only allowed in the first message"));
      if (auto st = AcceptHeader(req.header()); !st.ok()) return End(ToGrpc(st));
    } else if (!have_header_) {
      return End(Invalid("the first message must carry the header"));
    }
    if (values_.size() + static_cast<size_t>(req.values_size()) > expected_values_) {
      return End(Invalid(absl::StrCat("the upload sends more than the ", header_.rows(),
                                      " rows its header announced; no job was created")));
    }
    if (timestamps_.size() + static_cast<size_t>(req.timestamps_ms_size()) > header_.rows()) {
      return End(Invalid(absl::StrCat("the upload sends more than one timestamp per row (",
                                      header_.rows(), " rows announced); no job was created")));
    }
    if (auto st = AcceptEntities(req); !st.ok()) return End(st);
    values_.insert(values_.end(), req.values().begin(), req.values().end());
    timestamps_.insert(timestamps_.end(), req.timestamps_ms().begin(), req.timestamps_ms().end());
    StartRead(&incoming_);
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (!finished_)
      End(grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled; no job was created"));
  }

  void OnDone() override {
    if (tracked_) uploads_->Remove(this);
    delete this;
  }

  // Called by the sweeper (under Uploads::mu_).
  void ExpireIfIdle(Clock::time_point now, double idle_seconds) {
    absl::MutexLock lock(&mu_);
    if (finished_ || std::chrono::duration<double>(now - last_).count() < idle_seconds) return;
    End(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                     absl::StrCat("no upload message for ", idle_seconds,
                                  " s (--upload_idle_seconds); no job was created")));
  }

 private:
  static grpc::Status Invalid(const std::string& msg) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg);
  }

  absl::Status AcceptHeader(const v1::TrainingJobHeader& h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    have_header_ = true;
    header_ = h;
    if (auto st = uploads_->jobs_->CheckHeader(header_); !st.ok()) return st;
    if (header_.retain() && (uploads_->autopilot_ == nullptr ||
                             !uploads_->autopilot_->HasPolicy({h.model(), h.entity()}))) {
      return absl::FailedPreconditionError(
          absl::StrCat("retain: '", h.model(), h.entity().empty() ? "" : "/", h.entity(),
                       "' has no retrain policy to keep the rows under; set one first"));
    }
    if (h.rows() == 0) {
      return absl::InvalidArgumentError(
          "header.rows is required: the number of rows this upload sends (so that a cut upload "
          "is never trained)");
    }
    if (auto st = TrainingJobs::EnoughRows(h.rows()); !st.ok()) return st;
    const uint64_t max_values = uploads_->options_.max_training_values;
    if (h.rows() > max_values / h.num_features()) {
      return absl::ResourceExhaustedError(
          absl::StrCat(h.rows(), " rows x ", h.num_features(), " features is over the limit of ",
                       max_values, " values (--max_training_values)"));
    }
    expected_values_ = h.rows() * h.num_features();
    auto spec = uploads_->jobs_->EffectiveSpec(h);
    if (!spec.ok()) return spec.status();
    series_ = engine::IsSeries(*spec);
    // A series model trains on windows: each row appears in up to length / stride of them. They
    // count against the same limits as the uploaded values.
    uint64_t window_values = 0;
    if (series_) {
      v1::Window w = spec->window();
      w.set_columns(h.num_features());
      const uint64_t length = std::max(w.length(), 1u), stride = std::max(w.stride(), 1u);
      const uint64_t windows = h.rows() >= length ? (h.rows() - length) / stride + 1 : 0;
      const uint64_t inputs = engine::WindowInputs(w, h.num_features());
      if (windows > max_values / std::max<uint64_t>(inputs, 1)) {
        return absl::ResourceExhaustedError(
            absl::StrCat("the ", windows, " windows of ", inputs,
                         " inputs this series makes are over the limit "
                         "of ",
                         max_values,
                         " values (--max_training_values): send a shorter series or use a "
                         "larger window.stride"));
      }
      window_values = windows * inputs;
    }
    // Values, room for one timestamp per row (series models send them), and a series' windows.
    // Bulk entity training: an index per row, and the names (at most kMaxEntitiesPerJob of at
    // most 128 characters, with their index entries).
    const uint64_t entity_bytes =
        h.per_entity() ? h.rows() * sizeof(uint32_t) +
                             std::min<uint64_t>(h.rows(), TrainingJobs::kMaxEntitiesPerJob) * 256
                       : 0;
    const uint64_t bytes = (expected_values_ + window_values) * sizeof(float) +
                           h.rows() * sizeof(int64_t) + entity_bytes;
    reservation_ = uploads_->budget_->Reserve(bytes);
    if (reservation_.bytes() != bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("training data in memory is at its limit (uploads and queued jobs hold ",
                       uploads_->budget_->used(), " of ", uploads_->budget_->limit(),
                       " bytes, --max_upload_bytes; this upload needs ", bytes,
                       "): retry when a job has finished"));
    }
    values_.reserve(expected_values_);
    return absl::OkStatus();
  }

  // Bulk entity training: each row's entity, as an index into the distinct names (so that a
  // million rows of a few hosts hold a few names, not a million strings).
  grpc::Status AcceptEntities(const v1::CreateTrainingJobRequest& req)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (req.entities_size() == 0) return grpc::Status::OK;
    if (!header_.per_entity()) {
      return Invalid("entities sent without header.per_entity; no job was created");
    }
    if (entities_.of_row.size() + static_cast<size_t>(req.entities_size()) > header_.rows()) {
      return Invalid(absl::StrCat("the upload sends more than one entity per row (", header_.rows(),
                                  " rows announced); no job was created"));
    }
    for (const std::string& name : req.entities()) {
      auto [it, added] =
          entity_index_.try_emplace(name, static_cast<uint32_t>(entities_.names.size()));
      if (added) {
        if (auto st = ValidateName(name, "entity name", true); !st.ok()) {
          return Invalid(absl::StrCat("row ", entities_.of_row.size(), ": ", st.message(),
                                      "; no job was created"));
        }
        if (entities_.names.size() >= TrainingJobs::kMaxEntitiesPerJob) {
          return Invalid(absl::StrCat("more than ", TrainingJobs::kMaxEntitiesPerJob,
                                      " entities in one job; no job was created"));
        }
        entities_.names.push_back(name);
      }
      entities_.of_row.push_back(it->second);
    }
    return grpc::Status::OK;
  }

  // The client half-closed (or the stream ended another way): queue the job only if the upload
  // is whole.
  void Complete() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ctx_->IsCancelled()) {
      return End(grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled; no job was created"));
    }
    if (!have_header_) return End(Invalid("no header: the upload was empty"));
    const uint64_t rows = values_.size() / header_.num_features();
    if (values_.size() != expected_values_) {
      return End(Invalid(absl::StrCat(
          "the upload ended after ", rows, " of the ", header_.rows(),
          " rows its header announced (the client stopped early, or a message did not parse); "
          "no job was created")));
    }
    if (series_ && timestamps_.size() != rows) {
      return End(Invalid(absl::StrCat(
          "this model builds windows over time (spec.window): every row needs a timestamp (",
          timestamps_.size(), " timestamps for ", rows, " rows); no job was created")));
    }
    if (!timestamps_.empty() && timestamps_.size() != rows) {
      return End(
          Invalid(absl::StrCat("the upload sent ", timestamps_.size(), " timestamps for ", rows,
                               " rows: give none or one per row; no job was created")));
    }
    if (header_.per_entity() && entities_.of_row.size() != rows) {
      return End(Invalid(absl::StrCat("header.per_entity: every row needs its entity (",
                                      entities_.of_row.size(), " entities for ", rows,
                                      " rows); no job was created")));
    }
    auto job = uploads_->jobs_->Submit(header_, std::move(values_), std::move(timestamps_),
                                       std::move(reservation_), JobOrigin{actor_, "upload"},
                                       std::move(entities_));
    grpc::Status st = ToGrpc(job.status());
    if (job.ok()) st = SerializeMessage(*job, out_);
    End(st);
  }

  // Finishes the call once and frees what it holds.
  void End(const grpc::Status& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    std::vector<float>().swap(values_);
    std::vector<int64_t>().swap(timestamps_);
    entities_ = {};
    entity_index_ = {};
    reservation_.Release();
    Finish(st);
  }

  Uploads* const uploads_;
  grpc::CallbackServerContext* const ctx_;
  grpc::ByteBuffer* const out_;
  const std::string actor_;
  bool tracked_ = false;
  absl::Mutex mu_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  Clock::time_point last_ ABSL_GUARDED_BY(mu_) = Clock::now();
  grpc::ByteBuffer incoming_;  // the read in flight (one at a time)
  // Messages read; touched only by OnReadDone, one call at a time, but on whichever gRPC thread
  // completes the read (atomic so that the hand-off inside libgrpc, invisible to TSan, needs none).
  std::atomic<uint64_t> messages_{0};
  bool have_header_ ABSL_GUARDED_BY(mu_) = false;
  v1::TrainingJobHeader header_ ABSL_GUARDED_BY(mu_);
  uint64_t expected_values_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<float> values_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> timestamps_ ABSL_GUARDED_BY(mu_);
  EntityRows entities_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint32_t> entity_index_ ABSL_GUARDED_BY(mu_);
  bool series_ ABSL_GUARDED_BY(mu_) = false;  // the job trains a series model
  ByteBudget::Reservation reservation_ ABSL_GUARDED_BY(mu_);
};

Uploads::Uploads(const Options& options, TrainingJobs* jobs, ByteBudget* budget,
                 Autopilot* autopilot)
    : options_(options), jobs_(jobs), budget_(budget), autopilot_(autopilot) {
  if (options_.upload_idle_seconds > 0) sweeper_ = std::thread([this] { Sweep(); });
}

Uploads::~Uploads() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (sweeper_.joinable()) sweeper_.join();
}

grpc::ServerReadReactor<grpc::ByteBuffer>* Uploads::Start(grpc::CallbackServerContext* ctx,
                                                          grpc::ByteBuffer* out,
                                                          grpc::Status denied, std::string actor) {
  return new UploadReactor(this, ctx, out, std::move(denied), std::move(actor));
}

size_t Uploads::open() const {
  absl::MutexLock lock(&mu_);
  return open_.size();
}

void Uploads::Add(UploadReactor* r) {
  absl::MutexLock lock(&mu_);
  open_.insert(r);
}

void Uploads::Remove(UploadReactor* r) {
  absl::MutexLock lock(&mu_);
  open_.erase(r);
}

void Uploads::Sweep() {
  const double idle = options_.upload_idle_seconds;
  const absl::Duration period = absl::Seconds(std::min(1.0, idle / 4));
  absl::MutexLock lock(&mu_);
  auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
  while (!mu_.AwaitWithTimeout(absl::Condition(&stop), period)) {
    const auto now = Clock::now();
    for (UploadReactor* r : open_) r->ExpireIfIdle(now, idle);
  }
}

}  // namespace aeserve::server
