// Training jobs as files in the shared model store, so that every replica answers for every job:
//   <model_dir>/.jobs/<id>.pb      the job's latest state, written by the replica running it (on
//                                  each change of state, at most once a second for progress, and
//                                  at least every 10 s while it runs, as a heartbeat)
//   <model_dir>/.jobs/<id>.cancel  a cancel request from any replica; the one running the job acts
//                                  on it at its next store poll
// A job file of a QUEUED or RUNNING job not rewritten for kStaleSeconds is read as FAILED: the
// replica running it stopped (killed, or its node lost).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "aeserve/v1/admin.pb.h"

namespace aeserve::server {

// SUCCEEDED, FAILED or CANCELLED: the job will not change any more.
bool JobEnded(v1::JobState s);

class JobFiles {
 public:
  static constexpr double kStaleSeconds = 60;

  explicit JobFiles(const std::string& model_dir);

  absl::Status Write(const v1::TrainingJob& job) const;
  // NOT_FOUND when no replica has (or still remembers) the job.
  absl::StatusOr<v1::TrainingJob> Read(const std::string& id) const;
  // Every job file, of every replica (unreadable ones skipped).
  std::vector<v1::TrainingJob> List() const;
  absl::Status RequestCancel(const std::string& id) const;
  bool CancelRequested(const std::string& id) const;
  // The job's files (state and cancel request), when its replica forgets it.
  void Remove(const std::string& id) const;
  // Temp files left by a writer killed mid-write (at start-up; another replica's write in
  // progress then fails and is retried with its next update).
  void RemoveDebris() const;

 private:
  std::string Path(const std::string& id, const char* ext) const;
  absl::StatusOr<v1::TrainingJob> ReadPath(const std::string& path) const;

  std::string dir_;
};

}  // namespace aeserve::server
