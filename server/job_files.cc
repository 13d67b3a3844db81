// Training jobs as files in the shared model store.
#include "server/job_files.h"

#include <sys/stat.h>

#include <cctype>
#include <ctime>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/file_io.h"

namespace aeserve::server {
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kMaxJobFileBytes = 64 << 20;  // a job with 100,000 entities stays well below

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) return false;
  }
  return true;
}

}  // namespace

bool JobEnded(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

JobFiles::JobFiles(const std::string& model_dir) : dir_((fs::path(model_dir) / ".jobs").string()) {}

std::string JobFiles::Path(const std::string& id, const char* ext) const {
  return (fs::path(dir_) / (id + ext)).string();
}

absl::Status JobFiles::Write(const v1::TrainingJob& job) const {
  if (!ValidId(job.id())) return absl::InvalidArgumentError("job files: bad job id");
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return absl::InternalError(absl::StrCat("job files: ", dir_, ": ", ec.message()));
  return engine::WriteFileAtomically(Path(job.id(), ".pb"), job.SerializeAsString());
}

absl::StatusOr<v1::TrainingJob> JobFiles::ReadPath(const std::string& path) const {
  auto bytes = engine::ReadRegularFile(path, kMaxJobFileBytes);
  if (!bytes.ok()) return bytes.status();
  v1::TrainingJob job;
  if (!job.ParseFromString(*bytes)) {
    return absl::DataLossError(absl::StrCat("job file ", path, " does not parse"));
  }
  struct stat st {};
  if (!JobEnded(job.state()) && stat(path.c_str(), &st) == 0) {
    const double age = static_cast<double>(std::time(nullptr) - st.st_mtime);
    if (age > kStaleSeconds) {
      job.set_state(v1::JOB_STATE_FAILED);
      job.set_error(absl::StrCat("the replica running it (", job.replica(),
                                 ") has not updated it for ", static_cast<int64_t>(age),
                                 " s: it stopped"));
    }
  }
  return job;
}

absl::StatusOr<v1::TrainingJob> JobFiles::Read(const std::string& id) const {
  if (!ValidId(id)) return absl::NotFoundError(absl::StrCat("unknown training job '", id, "'"));
  auto job = ReadPath(Path(id, ".pb"));
  if (job.status().code() == absl::StatusCode::kNotFound) {
    return absl::NotFoundError(absl::StrCat("unknown training job '", id, "'"));
  }
  return job;
}

std::vector<v1::TrainingJob> JobFiles::List() const {
  std::vector<v1::TrainingJob> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() != ".pb") continue;
    auto job = ReadPath(it->path().string());
    if (job.ok()) out.push_back(*std::move(job));
  }
  return out;
}

absl::Status JobFiles::RequestCancel(const std::string& id) const {
  if (!ValidId(id)) return absl::NotFoundError(absl::StrCat("unknown training job '", id, "'"));
  return engine::WriteFileAtomically(Path(id, ".cancel"), "cancel\n");
}

bool JobFiles::CancelRequested(const std::string& id) const {
  std::error_code ec;
  return ValidId(id) && fs::exists(Path(id, ".cancel"), ec);
}

void JobFiles::RemoveDebris() const { engine::RemoveWriteTemps(dir_); }

void JobFiles::Remove(const std::string& id) const {
  if (!ValidId(id)) return;
  std::error_code ec;
  fs::remove(Path(id, ".pb"), ec);
  fs::remove(Path(id, ".cancel"), ec);
}

}  // namespace aeserve::server
