// Retained traffic of one model (or entity model): the rows it scored, kept in the model store as
// the history the autopilot retrains on. Rows collect in memory in an open segment; a segment
// that is full (kSegmentRows) or old (kSegmentSeconds) is closed and written by the autopilot's
// thread, never by a scoring call, as one file:
//   <key dir>/retained/<first ms>-<last ms>-<rows>-<replica>-<seq>.seg
//   = "AER1", CRC-32C of the payload (4 bytes, little-endian), RetainedSegment (protobuf)
// written atomically (temp file, fsync, rename). SIGKILL loses at most the open segment; a file
// whose checksum does not match is skipped (and counted). Replicas on one store write their own
// segments into the same directory; every replica reads them all. The bounds (newest N rows, at
// most T hours old) are enforced by dropping whole segments, oldest first.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "aeserve/v1/model.pb.h"

namespace aeserve::server {

// CRC-32C (Castagnoli), as used by the segment files: the CPU's crc32 instruction (SSE4.2) where
// it has one, else Crc32cBytewise.
uint32_t Crc32c(const void* data, size_t size);
// The same by a table, a byte at a time (~10x slower: at full streaming rates it took a third of
// the writer's time; bench/RESULTS.md, "Autopilot cost on streaming").
uint32_t Crc32cBytewise(const void* data, size_t size);

// Rows read back for a retrain: n rows of num_features values, in time order.
struct RetainedRows {
  uint32_t num_features = 0;
  std::vector<std::string> feature_names;
  std::vector<float> values;
  std::vector<int64_t> timestamps_ms;  // one per row, or empty when some row had none
  size_t rows() const { return num_features == 0 ? 0 : values.size() / num_features; }
  uint64_t corrupt_segments = 0;  // skipped: checksum or format
  uint64_t other_features = 0;    // segments of another feature set, skipped
};

struct RetentionTotals {
  uint64_t rows = 0;  // on disk and in memory
  uint64_t bytes = 0;
  uint32_t segments = 0;
  uint64_t dropped_rows = 0;  // by the flagged-rows policy or a full write queue
};

class Retention {
 public:
  static constexpr size_t kSegmentRows = 4096;
  static constexpr double kSegmentSeconds = 60;
  // Closed segments waiting to be written beyond this many bytes: newer rows are dropped (counted).
  static constexpr size_t kMaxPendingBytes = 64 << 20;
  // A segment holds at most this many bytes of values and timestamps: wide models' segments hold
  // fewer than kSegmentRows rows (a 65,536-feature model's, 63).
  static constexpr size_t kMaxSegmentBytes = 16 << 20;
  // Bytes one row of a `d`-column model takes in a segment: its values and its timestamp.
  static constexpr size_t RowBytes(uint32_t d) { return d * sizeof(float) + sizeof(int64_t); }
  // Rows per full segment of a `d`-column model: kSegmentRows, or fewer for wide models.
  static size_t SegmentRows(uint32_t d);

  // `dir`: <key dir>/retained; `replica`: this server's name (any characters; its letters and
  // digits tag the segment names).
  Retention(std::string dir, const std::string& replica);

  void SetBounds(uint64_t rows, double hours, v1::FlaggedRows flagged);

  // One scored batch: `n` rows of `d` values (NaN = missing) with `timestamps` (empty or n) and
  // per-row `flagged` and `alarmed` (empty = none); kept as the flagged-rows policy says.
  // `series`: the rows are time steps of one series, so a row whose timestamp is not after the
  // last one kept is one sent again (a stream warming its window up) and is not kept twice.
  // Cheap: copies into the open segment under a mutex. Returns the rows kept.
  size_t Append(uint32_t d, const google::protobuf::RepeatedPtrField<std::string>& names,
                absl::Span<const float> values, absl::Span<const int64_t> timestamps,
                absl::Span<const uint8_t> flagged, absl::Span<const uint8_t> alarmed,
                int64_t now_ms, bool series = false);

  // Closes the open segment when it is old enough (or when `force`), writes every closed segment,
  // drops the oldest beyond the bounds and refreshes the totals from the directory (which holds
  // other replicas' segments too). Called by the autopilot's thread.
  absl::Status Maintain(int64_t now_ms, bool force);
  RetentionTotals Totals() const;

  // Every retained row of `num_features` features, oldest first (by timestamp when every row has
  // one, else by when it was scored), at most the newest `max_rows`. Call Maintain(now, true)
  // first to include the open segment.
  // With `names`, segments whose (non-empty) feature names differ are skipped as other features.
  absl::StatusOr<RetainedRows> Read(uint32_t num_features, uint64_t max_rows,
                                    const std::vector<std::string>& names = {}) const;

  // Deletes every segment (the policy was removed).
  void DeleteAll();

 private:
  struct Open {
    v1::RetainedSegment seg;
    size_t rows = 0;
  };
  struct FileInfo {
    std::string path;
    int64_t first_ms = 0, last_ms = 0;
    uint64_t rows = 0, bytes = 0;
    uint64_t seq = 0;  // the writing replica's sequence number
  };
  std::vector<FileInfo> List() const;  // segment files, oldest first
  void CloseOpenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string dir_;
  const std::string replica_;
  mutable absl::Mutex mu_;
  uint64_t max_rows_ ABSL_GUARDED_BY(mu_) = 0;
  double max_hours_ ABSL_GUARDED_BY(mu_) = 0;
  v1::FlaggedRows flagged_ ABSL_GUARDED_BY(mu_) = v1::FLAGGED_ROWS_KEEP;
  Open open_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::RetainedSegment> pending_ ABSL_GUARDED_BY(mu_);
  size_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t seq_ ABSL_GUARDED_BY(mu_) = 0;
  RetentionTotals disk_ ABSL_GUARDED_BY(mu_);  // as of the last Maintain
  uint64_t writing_ ABSL_GUARDED_BY(mu_) = 0;  // rows a Maintain is writing (not in disk_ yet)
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_series_ms_ ABSL_GUARDED_BY(mu_) = INT64_MIN;  // newest series step kept
  std::vector<float> last_series_row_ ABSL_GUARDED_BY(mu_);
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // one Maintain at a time
};

}  // namespace aeserve::server
