// Server-side windows for time series (ModelSpec.window): a series model's sample is the last
// `length` time steps of a series plus the time features of the newest step. WindowBuffer turns a
// series, one row per time step, into those samples — for training (TrainingWindows) and for
// scoring (a stream keeps one buffer across its batches).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "aeserve/v1/model.pb.h"

namespace aeserve::engine {

inline constexpr uint32_t kMaxWindowLength = 1024;
// Timestamps beyond +-1e15 ms (about 31,700 years from 1970) are refused: differences of any two
// then fit in 64 bits.
inline constexpr int64_t kMaxAbsTimestampMs = 1'000'000'000'000'000;

// True when the spec makes samples from a series (a window of 2 or more steps, or time features).
bool IsSeries(const v1::ModelSpec& spec);
inline constexpr uint64_t kMaxWindowInputs = 1 << 16;  // as ModelSpec.num_features

// Fills stride's default and checks the window (INVALID_ARGUMENT naming the field), with the
// columns set also its input count (at most kMaxWindowInputs).
absl::Status ResolveWindow(v1::Window* window);
// The window of a series with `columns` columns per step: window.columns must be unset or equal;
// set and resolved.
absl::Status WindowForColumns(v1::Window* window, uint32_t columns);
// A series' raw values (`columns` per row) before they enter windows, where a problem can still
// name the row and column sent (each row appears in many windows): INVALID_ARGUMENT for an
// infinite value, or a NaN unless `nan_allowed`.
absl::Status CheckSeriesValues(absl::Span<const float> values, uint32_t columns, bool nan_allowed,
                               absl::FunctionRef<std::string(size_t)> column_name);
// Model inputs of a series model with `columns` values per step (64-bit: a hand-made file may ask
// for more than fits in 32).
uint64_t WindowInputs(const v1::Window& window, uint32_t columns);
// Each column at each step (oldest first, 'cpu[t-2]', 'cpu[t-1]', 'cpu[t]'), then the time
// features; empty without column names.
std::vector<std::string> WindowInputNames(const v1::Window& window,
                                          absl::Span<const std::string> columns);
// Writes the sin/cos pairs of the window's time features for `unix_ms` (UTC) to `out`.
void TimeFeatures(const v1::Window& window, int64_t unix_ms, float* out);
// The median of the positive steps between timestamps in order (equal ones, such as the repeated
// hour of a daylight-saving change, are consecutive steps); INVALID_ARGUMENT naming the first row
// whose timestamp goes backwards, or when there are fewer than two distinct ones.
absl::StatusOr<int64_t> MedianStep(absl::Span<const int64_t> timestamps_ms);

// The last steps of one series. `window` is resolved with its interval set; max_gap_steps and
// gap_fill from the model's ScoringPolicy (unset: the window length, kDefaultGapFill; missed steps
// are never filled as missing when the policy allows no missing value — the window restarts).
// `columns` are the names of a step's columns (may be empty). Copyable: a caller can keep a copy
// to put back when a batch is refused after its rows were pushed.
class WindowBuffer {
 public:
  using Names = google::protobuf::RepeatedPtrField<std::string>;
  enum class ShortGap { kJoin, kMissing, kRestart };
  WindowBuffer(const v1::Window& window, const v1::ScoringPolicy& policy,
               const Names& columns = Names());

  // INVALID_ARGUMENT unless there is one timestamp per row, each within +-kMaxAbsTimestampMs, and
  // none goes backwards, within the batch or from the last step pushed (equal ones are consecutive
  // steps). Nothing changes on error.
  absl::Status CheckTimes(absl::Span<const int64_t> timestamps_ms, size_t rows) const;
  // Adds one step (`columns` values, NaN = missing) at `unix_ms` (not before the last one). A gap
  // of up to max_gap_steps missed steps is closed up (GAP_FILL_JOIN) or pushed as missing rows
  // first (GAP_FILL_MISSING); a longer one empties the window. When the window is full, writes the
  // sample (WindowInputs values) to `out` and returns true; false = warming up.
  bool Push(const float* row, int64_t unix_ms, float* out);
  // Whether the steps kept can go on into a model with this window and step columns (same length,
  // interval and columns, by name when named): a stream's window survives a hot swap to such a
  // version.
  bool Fits(const v1::Window& window, const Names& columns = Names()) const;
  // Another model's interval and gap policy, keeping the steps.
  void Retarget(const v1::Window& window, const v1::ScoringPolicy& policy);
  uint32_t inputs() const { return inputs_; }

 private:
  void Add(const float* row);  // nullptr = a missing row

  uint32_t length_, columns_, inputs_;
  int64_t interval_ms_;
  std::vector<std::string> names_;  // of a step's columns; empty = unnamed
  uint8_t hour_ = 0, weekday_ = 0;  // 1 + position of each time feature's pair, 0 = absent
  uint64_t max_gap_;
  ShortGap short_gap_;
  std::vector<float> ring_;  // length_ rows of columns_, each twice (see Add)
  uint32_t next_ = 0, filled_ = 0;
  bool started_ = false;
  int64_t last_ms_ = 0;
};

// Training samples from a series: every `stride`-th full window, in order.
absl::StatusOr<std::vector<float>> TrainingWindows(const v1::Window& window,
                                                   const v1::ScoringPolicy& policy,
                                                   absl::Span<const float> values, size_t rows,
                                                   absl::Span<const int64_t> timestamps_ms,
                                                   size_t* samples);

}  // namespace aeserve::engine
