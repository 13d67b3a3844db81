// Windows over a time series, for training and for scoring.
#include "engine/window.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "engine/spec.h"

namespace aeserve::engine {
namespace {

constexpr int64_t kDayMs = 86'400'000;
constexpr uint32_t kMaxStride = 1'000'000;

// The phase in [0, 1) of `unix_ms` in a period of `period_ms`.
double Phase(int64_t unix_ms, int64_t period_ms) {
  int64_t r = unix_ms % period_ms;
  if (r < 0) r += period_ms;
  return static_cast<double>(r) / static_cast<double>(period_ms);
}

uint32_t MaxGap(const v1::Window& w, const v1::ScoringPolicy& p) {
  return p.has_max_gap_steps() ? p.max_gap_steps() : std::max(w.length(), 1u);
}

// What a short gap does: closed up, missing rows, or (GAP_FILL_MISSING when the policy lets a
// sample miss nothing, so a filled gap could only be refused, again at every batch) a restart.
WindowBuffer::ShortGap ShortGapOf(const v1::ScoringPolicy& p) {
  const v1::GapFill f = p.gap_fill() == v1::GAP_FILL_UNSPECIFIED ? kDefaultGapFill : p.gap_fill();
  if (f != v1::GAP_FILL_MISSING) return WindowBuffer::ShortGap::kJoin;
  const float fraction =
      p.has_max_missing_fraction() ? p.max_missing_fraction() : kDefaultMaxMissingFraction;
  return fraction > 0 ? WindowBuffer::ShortGap::kMissing : WindowBuffer::ShortGap::kRestart;
}

absl::Status CheckRange(int64_t t, size_t row) {
  if (t < -kMaxAbsTimestampMs || t > kMaxAbsTimestampMs) {
    return absl::InvalidArgumentError(
        absl::StrCat("row ", row, " has timestamp ", t, " ms, outside +-1e15 ms of 1970"));
  }
  return absl::OkStatus();
}

}  // namespace

bool IsSeries(const v1::ModelSpec& spec) {
  return spec.window().length() > 1 || spec.window().time_features_size() > 0;
}

absl::Status ResolveWindow(v1::Window* w) {
  auto invalid = [](auto... what) {
    return absl::InvalidArgumentError(absl::StrCat("model spec: window ", what...));
  };
  if (w->length() > kMaxWindowLength) {
    return invalid("length ", w->length(), " is over ", kMaxWindowLength);
  }
  if (w->length() == 0 && w->time_features_size() > 0) w->set_length(1);
  if (w->length() == 0) {
    if (w->stride() != 0 || w->interval_ms() != 0 || w->columns() != 0) {
      return invalid("stride, interval_ms and columns need a length");
    }
    return absl::OkStatus();
  }
  if (w->stride() == 0) w->set_stride(1);
  if (w->stride() > kMaxStride) return invalid("stride ", w->stride(), " is over ", kMaxStride);
  if (w->interval_ms() < 0 || w->interval_ms() > kMaxAbsTimestampMs) {
    return invalid("interval_ms ", w->interval_ms(), " is out of range");
  }
  if (w->columns() > kMaxWindowInputs) return invalid("columns ", w->columns(), " is over 65536");
  if (const uint64_t inputs = WindowInputs(*w, w->columns());
      w->columns() != 0 && inputs > kMaxWindowInputs) {
    return invalid("of ", w->length(), " x ", w->columns(), " columns has ", inputs,
                   " inputs, over 65536");
  }
  bool seen[3] = {false, false, false};
  for (int f : w->time_features()) {
    if (f != v1::TIME_FEATURE_HOUR_OF_DAY && f != v1::TIME_FEATURE_DAY_OF_WEEK) {
      return invalid("has an unknown time feature (", f, ")");
    }
    if (seen[f]) return invalid("lists time feature ", v1::TimeFeature_Name(f), " twice");
    seen[f] = true;
  }
  return absl::OkStatus();
}

absl::Status WindowForColumns(v1::Window* w, uint32_t columns) {
  if (w->columns() != 0 && w->columns() != columns) {
    return absl::InvalidArgumentError(absl::StrCat("model spec: window.columns is ", w->columns(),
                                                   " but the data has ", columns, " columns"));
  }
  w->set_columns(columns);
  return ResolveWindow(w);
}

absl::Status CheckSeriesValues(absl::Span<const float> values, uint32_t columns, bool nan_allowed,
                               absl::FunctionRef<std::string(size_t)> column_name) {
  for (size_t i = 0; i < values.size(); ++i) {
    const float v = values[i];
    if (!std::isinf(v) && !(std::isnan(v) && !nan_allowed)) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        std::isinf(v) ? "infinite value" : "missing value (NaN)", " at row ", i / columns,
        ", column ", column_name(i % columns),
        std::isinf(v) ? "" : ": this model's policy allows none (max_missing_fraction 0)"));
  }
  return absl::OkStatus();
}

uint64_t WindowInputs(const v1::Window& w, uint32_t columns) {
  return uint64_t{std::max(w.length(), 1u)} * columns +
         2 * static_cast<uint64_t>(w.time_features_size());
}

std::vector<std::string> WindowInputNames(const v1::Window& w,
                                          absl::Span<const std::string> columns) {
  std::vector<std::string> names;
  if (columns.empty()) return names;
  const uint32_t length = std::max(w.length(), 1u);
  for (uint32_t s = 0; s < length; ++s) {
    const uint32_t back = length - 1 - s;
    for (const std::string& c : columns) {
      names.push_back(back == 0 ? absl::StrCat(c, "[t]") : absl::StrCat(c, "[t-", back, "]"));
    }
  }
  for (int f : w.time_features()) {
    const char* base = f == v1::TIME_FEATURE_HOUR_OF_DAY ? "hour" : "weekday";
    names.push_back(absl::StrCat(base, "_sin"));
    names.push_back(absl::StrCat(base, "_cos"));
  }
  return names;
}

// The sin/cos pair of one time feature.
void TimeFeature(v1::TimeFeature f, int64_t unix_ms, float* out) {
  // Day of week: the Unix epoch was a Thursday; Monday 00:00 UTC is phase 0.
  const double phase = f == v1::TIME_FEATURE_HOUR_OF_DAY ? Phase(unix_ms, kDayMs)
                                                         : Phase(unix_ms + 3 * kDayMs, 7 * kDayMs);
  const float angle = static_cast<float>(2 * std::numbers::pi * phase);
  out[0] = std::sin(angle);
  out[1] = std::cos(angle);
}

void TimeFeatures(const v1::Window& w, int64_t unix_ms, float* out) {
  for (int f : w.time_features()) {
    TimeFeature(static_cast<v1::TimeFeature>(f), unix_ms, out);
    out += 2;
  }
}

absl::StatusOr<int64_t> MedianStep(absl::Span<const int64_t> ts) {
  if (ts.size() < 2) {
    return absl::InvalidArgumentError("a series needs at least two timestamps to find its step");
  }
  std::vector<int64_t> steps;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (auto st = CheckRange(ts[i], i); !st.ok()) return st;
  }
  for (size_t i = 1; i < ts.size(); ++i) {
    if (ts[i] < ts[i - 1]) {
      return absl::InvalidArgumentError(absl::StrCat("timestamps go backwards: row ", i, " (",
                                                     ts[i], " ms) is before row ", i - 1, " (",
                                                     ts[i - 1], " ms)"));
    }
    if (ts[i] > ts[i - 1]) steps.push_back(ts[i] - ts[i - 1]);
  }
  if (steps.empty()) return absl::InvalidArgumentError("every timestamp of the series is the same");
  std::nth_element(steps.begin(), steps.begin() + steps.size() / 2, steps.end());
  return steps[steps.size() / 2];
}

WindowBuffer::WindowBuffer(const v1::Window& w, const v1::ScoringPolicy& p, const Names& columns)
    : length_(std::max(w.length(), 1u)),
      columns_(w.columns()),
      inputs_(static_cast<uint32_t>(WindowInputs(w, w.columns()))),
      interval_ms_(w.interval_ms()),
      names_(columns.begin(), columns.end()),
      max_gap_(MaxGap(w, p)),
      short_gap_(ShortGapOf(p)),
      ring_(2 * static_cast<size_t>(length_) * columns_) {
  Retarget(w, p);
}

absl::Status WindowBuffer::CheckTimes(absl::Span<const int64_t> ts, size_t rows) const {
  if (ts.size() != rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "this model builds windows over time (window of ", length_, " steps",
        hour_ + weekday_ > 0 ? ", time features" : "", "): every row needs a timestamp (",
        ts.size(), " timestamps for ", rows, " rows)"));
  }
  for (size_t i = 0; i < ts.size(); ++i) {
    if (auto st = CheckRange(ts[i], i); !st.ok()) return st;
    const bool has_prev = i > 0 || started_;
    const int64_t prev = i > 0 ? ts[i - 1] : last_ms_;
    if (has_prev && ts[i] < prev) {
      return absl::InvalidArgumentError(absl::StrCat(
          "timestamps go backwards: row ", i, " has ", ts[i], " ms, before ",
          i > 0 ? absl::StrCat("row ", i - 1, "'s ") : std::string("the stream's last step at "),
          prev, " ms"));
    }
  }
  return absl::OkStatus();
}

void WindowBuffer::Add(const float* row) {
  // Each row is kept twice, at next_ and next_ + length_: the window is then one contiguous run.
  float* dst = ring_.data() + static_cast<size_t>(next_) * columns_;
  float* mirror = dst + static_cast<size_t>(length_) * columns_;
  if (row != nullptr) {
    std::copy_n(row, columns_, dst);
    std::copy_n(row, columns_, mirror);
  } else {
    std::fill_n(dst, columns_, std::numeric_limits<float>::quiet_NaN());
    std::fill_n(mirror, columns_, std::numeric_limits<float>::quiet_NaN());
  }
  next_ = (next_ + 1) % length_;
  filled_ = std::min(filled_ + 1, length_);
}

bool WindowBuffer::Push(const float* row, int64_t unix_ms, float* out) {
  if (started_) {
    const int64_t interval = std::max<int64_t>(interval_ms_, 1);
    const double steps = std::round(static_cast<double>(unix_ms - last_ms_) / interval);
    const double missed = std::max(steps - 1, 0.0);
    if (missed > static_cast<double>(max_gap_) ||
        (missed > 0 && short_gap_ == ShortGap::kRestart)) {
      filled_ = 0;  // a long gap: the window starts again
    } else if (short_gap_ == ShortGap::kMissing) {
      for (uint64_t m = 0; m < std::min<uint64_t>(static_cast<uint64_t>(missed), length_); ++m) {
        Add(nullptr);
      }
    }
  }
  started_ = true;
  last_ms_ = unix_ms;
  Add(row);
  if (filled_ < length_) return false;
  // Oldest first: the oldest sits at next_, the newest at next_ + length_ - 1 (its mirror).
  std::copy_n(ring_.data() + static_cast<size_t>(next_) * columns_,
              static_cast<size_t>(length_) * columns_, out);
  float* time = out + static_cast<size_t>(length_) * columns_;
  if (hour_) TimeFeature(v1::TIME_FEATURE_HOUR_OF_DAY, unix_ms, time + 2 * (hour_ - 1));
  if (weekday_) TimeFeature(v1::TIME_FEATURE_DAY_OF_WEEK, unix_ms, time + 2 * (weekday_ - 1));
  return true;
}

bool WindowBuffer::Fits(const v1::Window& w, const Names& columns) const {
  return std::max(w.length(), 1u) == length_ && w.columns() == columns_ &&
         w.interval_ms() == interval_ms_ &&
         std::equal(columns.begin(), columns.end(), names_.begin(), names_.end());
}

void WindowBuffer::Retarget(const v1::Window& w, const v1::ScoringPolicy& p) {
  interval_ms_ = w.interval_ms();
  hour_ = weekday_ = 0;
  for (int i = 0; i < w.time_features_size(); ++i) {
    (w.time_features(i) == v1::TIME_FEATURE_HOUR_OF_DAY ? hour_ : weekday_) =
        static_cast<uint8_t>(i + 1);
  }
  inputs_ = static_cast<uint32_t>(WindowInputs(w, columns_));
  max_gap_ = MaxGap(w, p);
  short_gap_ = ShortGapOf(p);
}

absl::StatusOr<std::vector<float>> TrainingWindows(const v1::Window& w,
                                                   const v1::ScoringPolicy& policy,
                                                   absl::Span<const float> values, size_t rows,
                                                   absl::Span<const int64_t> ts, size_t* samples) {
  WindowBuffer buffer(w, policy);
  if (auto st = buffer.CheckTimes(ts, rows); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("training data: ", st.message()));
  }
  const uint32_t stride = std::max(w.stride(), 1u);
  std::vector<float> out, sample(buffer.inputs());
  size_t full = 0;
  *samples = 0;
  for (size_t r = 0; r < rows; ++r) {
    if (!buffer.Push(values.data() + r * w.columns(), ts[r], sample.data())) continue;
    if (full++ % stride != 0) continue;
    out.insert(out.end(), sample.begin(), sample.end());
    ++*samples;
  }
  if (*samples == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "training data: the series of ", rows, " rows gives no full window of ",
        std::max(w.length(), 1u), " steps",
        rows >= std::max(w.length(), 1u) ? " (its gaps are longer than max_gap_steps)" : ""));
  }
  return out;
}

}  // namespace aeserve::engine
