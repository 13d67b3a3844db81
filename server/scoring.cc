// Request validation, engine calls, and columnar responses.
#include "server/scoring.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>

#include "absl/strings/str_cat.h"
#include "server/columns.h"

namespace aeserve::server {
namespace {

template <typename T, typename Field>
void CopyInto(const std::vector<T>& src, Field* dst) {
  dst->Resize(static_cast<int>(src.size()), T{});
  if (!src.empty()) std::memcpy(dst->mutable_data(), src.data(), src.size() * sizeof(T));
}

absl::Span<const float> Values(const v1::Samples& s) {
  return absl::Span<const float>(s.values().data(), static_cast<size_t>(s.values_size()));
}

// A series model's samples: one window per row whose window is full, in row order.
struct Windows {
  std::vector<float> inputs;           // samples x the model's inputs (may be longer)
  std::vector<int32_t> sample_of_row;  // -1 = warming up
  size_t samples = 0;
  bool warming() const { return samples < sample_of_row.size(); }
};

// The most values the windows of one batch may hold (64 MB): each row of a series model becomes a
// sample of length x columns values.
constexpr size_t kMaxWindowValues = size_t{1} << 24;
// A worker keeps its windows buffer up to this size between batches (16 MB).
constexpr size_t kKeptWindowValues = size_t{1} << 22;

// Pushes the rows (`columns` values each, in the model's order) through `*buffer`, making it anew
// when there is none or the model's window does not fit the one it holds. Refuses the batch,
// the window unchanged, without a timestamp per row or when they go backwards, for an infinite
// value or a NaN the policy does not allow (naming the row and column sent), or when its windows
// would hold over kMaxWindowValues values (RESOURCE_EXHAUSTED).
absl::Status MakeWindows(const engine::Model& model, absl::Span<const float> x,
                         const v1::Samples& s, std::unique_ptr<engine::WindowBuffer>* buffer,
                         Windows* out) {
  const v1::Window& w = model.spec().window();
  const auto& columns = model.file().series_columns();
  if (*buffer == nullptr || !(*buffer)->Fits(w, columns)) {
    *buffer = std::make_unique<engine::WindowBuffer>(w, model.file().policy(), columns);
  } else {
    (*buffer)->Retarget(w, model.file().policy());
  }
  const size_t rows = x.size() / w.columns();
  const size_t inputs = model.num_features();
  if (rows * inputs > kMaxWindowValues) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a batch of ", rows, " rows makes windows of ", rows * inputs,
                     " values for this series "
                     "model (",
                     inputs, " inputs each), over the limit of ", kMaxWindowValues,
                     ": send at most ", kMaxWindowValues / inputs, " rows per batch"));
  }
  const absl::Span<const int64_t> ts(s.timestamps_ms().data(), s.timestamps_ms_size());
  if (auto st = (*buffer)->CheckTimes(ts, rows); !st.ok()) return st;
  auto column_name = [&columns](size_t j) {
    return static_cast<int>(j) < columns.size() ? "'" + columns[static_cast<int>(j)] + "'"
                                                : std::to_string(j);
  };
  if (auto st = engine::CheckSeriesValues(x, w.columns(), model.max_missing() > 0, column_name);
      !st.ok()) {
    return st;
  }
  if (out->inputs.size() < rows * inputs) out->inputs.resize(rows * inputs);
  out->sample_of_row.assign(rows, -1);
  out->samples = 0;
  for (size_t i = 0; i < rows; ++i) {
    if ((*buffer)->Push(x.data() + i * w.columns(), ts[i],
                        out->inputs.data() + out->samples * inputs)) {
      out->sample_of_row[i] = static_cast<int32_t>(out->samples++);
    }
  }
  return absl::OkStatus();
}

// Spreads per-sample results (`width` values each) over the rows: a warming-up row gets `fill`.
template <typename T>
void Spread(const std::vector<int32_t>& sample_of_row, size_t width, T fill, std::vector<T>* v) {
  std::vector<T> out(sample_of_row.size() * width, fill);
  for (size_t i = 0; i < sample_of_row.size(); ++i) {
    if (sample_of_row[i] < 0) continue;
    std::copy_n(v->data() + static_cast<size_t>(sample_of_row[i]) * width, width,
                out.data() + i * width);
  }
  v->swap(out);
}

// The engine's results for the windows, as results for the rows (warming-up rows: NaN error and
// score, p-value 1, never anomalous).
void SpreadOverRows(const Windows& win, size_t inputs, const engine::ScoreOptions& eo,
                    bool variational, engine::ScoreResult* res) {
  if (!win.warming()) return;  // one sample per row already
  const auto& at = win.sample_of_row;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Spread(at, 1, nan, &res->error);
  Spread(at, 1, nan, &res->score);
  Spread(at, 1, uint8_t{0}, &res->anomalous);
  Spread(at, 1, 1.0f, &res->p_value);
  if (!res->distance.empty()) Spread(at, 1, nan, &res->distance);
  if (eo.per_feature) Spread(at, inputs, nan, &res->feature_error);
  if (eo.neg_elbo && variational) Spread(at, 1, nan, &res->neg_elbo);
  if (!res->missing.empty()) {
    Spread(at, 1, uint32_t{0}, &res->missing);
    Spread(at, 1, uint8_t{0}, &res->skipped);
  }
}

}  // namespace

absl::StatusOr<absl::Span<const float>> ModelValues(const engine::Model& model,
                                                    const v1::Samples& s, uint32_t max_rows,
                                                    std::vector<float>* buffer,
                                                    const v1::StreamConfig* stream) {
  const bool series = engine::IsSeries(model.spec());
  const uint32_t d = series ? model.spec().window().columns() : model.num_features();
  const Names& model_names = series ? model.file().series_columns() : model.file().feature_names();
  // The batch's own names, else its stream's.
  const bool from_stream =
      s.feature_names_size() == 0 && stream != nullptr && stream->feature_names_size() > 0;
  const Names& names = from_stream ? stream->feature_names() : s.feature_names();
  const bool ignore_unknown =
      from_stream ? stream->ignore_unknown_features() : s.ignore_unknown_features();
  const bool named = names.size() > 0;
  // Columns sent: the names when given (num_features may then be 0), else num_features.
  const uint32_t cols = named ? static_cast<uint32_t>(names.size()) : s.num_features();
  if (named && s.num_features() != 0 && s.num_features() != cols) {
    return absl::InvalidArgumentError(absl::StrCat("samples have num_features ", s.num_features(),
                                                   " but ", cols, " feature_names"));
  }
  if (!named && cols != d) {
    return absl::InvalidArgumentError(
        absl::StrCat("samples have num_features ", cols, ", the model expects ", d));
  }
  if (s.values_size() == 0) return absl::InvalidArgumentError("empty batch: no values");
  if (s.values_size() % cols != 0) {
    return absl::InvalidArgumentError(absl::StrCat("values count ", s.values_size(),
                                                   " is not a multiple of the ", cols, " columns"));
  }
  const size_t rows = static_cast<size_t>(s.values_size()) / cols;
  if (rows > max_rows) {
    return absl::ResourceExhaustedError(
        absl::StrCat("batch of ", rows, " rows is over the limit of ", max_rows));
  }
  if (s.ids_size() != 0 && static_cast<size_t>(s.ids_size()) != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat(s.ids_size(), " ids for ", rows, " rows: give none or one per row"));
  }
  if (s.timestamps_ms_size() != 0 && static_cast<size_t>(s.timestamps_ms_size()) != rows) {
    return absl::InvalidArgumentError(absl::StrCat(s.timestamps_ms_size(), " timestamps for ", rows,
                                                   " rows: give none or one per row"));
  }
  const absl::Span<const float> values = Values(s);
  if (!named) return values;
  auto map = ColumnMap::Build(model_names, names, ignore_unknown);
  if (!map.ok()) return map.status();
  if (map->identity()) return values;
  const auto& absent = map->absent();
  const uint32_t max_missing = engine::MaxMissingFeatures(model.file().policy(), d);
  if (absent.size() > max_missing) {
    return absl::InvalidArgumentError(
        absl::StrCat(absent.size() == 1 ? "missing feature " : "missing features ",
                     QuoteNames(absent), ": this model scores a sample with at most ", max_missing,
                     " of its ", d, " features missing (max_missing_fraction ",
                     model.file().policy().max_missing_fraction(), ")"));
  }
  map->Apply(values, buffer);
  return absl::Span<const float>(*buffer);
}

// Hands the flagged rows of a scored batch to the anomaly feed (copies only: the feed's own
// thread builds the events).
// `x` holds the model's samples; for a series model, sample_of_row[i] is row i's.
static void PublishAnomalies(const ModelHandle& h, const v1::Samples& s, absl::Span<const float> x,
                             const std::vector<int32_t>* sample_of_row,
                             const engine::ScoreResult& res, bool original_units,
                             const ScoreHooks& hooks) {
  const uint32_t d = h.model->num_features();
  FlaggedRows f;
  f.handle = h;
  if (hooks.stream != nullptr) f.stream_id = hooks.stream->stream_id();
  f.source_entity = hooks.source_entity;
  f.server_time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  f.threshold = static_cast<float>(res.threshold);
  const size_t flagged =
      static_cast<size_t>(std::count(res.anomalous.begin(), res.anomalous.end(), uint8_t{1}));
  if (flagged == 0) return;
  // Events rank features in scaled units: errors asked for in original units go back
  // (e / scale^2) instead of the engine running the rows again.
  std::vector<double> back;
  if (original_units) {
    back.resize(d);
    for (uint32_t j = 0; j < d; ++j) {
      const double sc = h.model->file().scaler().scale(static_cast<int>(j));
      back[j] = 1.0 / (sc * sc);  // double: no inf/inf
    }
  }
  f.values.resize(flagged * d);
  f.feature_errors.resize(flagged * d);
  f.errors.reserve(flagged);
  f.scores.reserve(flagged);
  f.p_values.reserve(flagged);
  size_t out = 0;
  for (size_t i = 0; i < res.anomalous.size(); ++i) {
    if (!res.anomalous[i]) continue;
    const size_t at = sample_of_row != nullptr ? static_cast<size_t>((*sample_of_row)[i]) : i;
    std::copy_n(x.begin() + at * d, d, f.values.begin() + out * d);
    const float* fe = res.feature_error.data() + i * d;
    float* to = f.feature_errors.data() + out * d;
    if (original_units) {
      for (uint32_t j = 0; j < d; ++j) to[j] = static_cast<float>(fe[j] * back[j]);
    } else {
      std::copy_n(fe, d, to);
    }
    ++out;
    f.errors.push_back(res.error[i]);
    f.scores.push_back(res.score[i]);
    f.p_values.push_back(res.p_value[i]);
    if (hooks.source_entities != nullptr) f.source_entities.push_back((*hooks.source_entities)[i]);
    if (s.ids_size()) f.ids.push_back(s.ids(static_cast<int>(i)));
    if (s.timestamps_ms_size()) f.timestamps_ms.push_back(s.timestamps_ms(static_cast<int>(i)));
  }
  if (!f.errors.empty()) hooks.feed->Publish(std::move(f));
}

// The response's gap columns (missing counts, skipped flags and why); returns how many samples
// were skipped.
static size_t RecordGaps(const engine::ScoreResult& res, uint32_t d, v1::ScoreResponse* r) {
  if (res.missing.empty()) return 0;
  CopyInto(res.missing, r->mutable_missing());
  size_t skipped = 0;
  uint32_t worst = 0;
  for (size_t i = 0; i < res.skipped.size(); ++i) {
    if (!res.skipped[i]) continue;
    ++skipped;
    worst = std::max(worst, res.missing[i]);
  }
  if (skipped == 0) return 0;
  r->mutable_skipped()->Resize(static_cast<int>(res.skipped.size()), false);
  for (size_t i = 0; i < res.skipped.size(); ++i) {
    r->mutable_skipped()->Set(static_cast<int>(i), res.skipped[i] != 0);
  }
  r->set_skip_reason(absl::StrCat(skipped, skipped == 1 ? " sample misses" : " samples miss",
                                  " more features than the "
                                  "model's max_missing_fraction allows (up to ",
                                  worst, " of ", d, " missing)"));
  return skipped;
}

// One scored batch into the version's live statistics and, with metrics on, its instruments.
static void RecordScored(const ModelHandle& h, absl::Span<const float> errors,
                         absl::Span<const float> scores, absl::Span<const uint8_t> anomalous,
                         double critical) {
  if (h.stats != nullptr) h.stats->Record(scores, anomalous);
  if (h.metrics != nullptr) h.metrics->Record(errors, scores, anomalous, critical);
}

double MaddsPerValue(const engine::Model& model) {
  const uint32_t per_sample =
      engine::IsSeries(model.spec()) ? model.spec().window().columns() : model.num_features();
  return static_cast<double>(model.madds_per_sample()) / std::max(1u, per_sample);
}

bool LightEnoughToScoreHere(uint64_t max_madds, size_t values, double madds_per_value) {
  return max_madds > 0 && madds_per_value > 0 &&
         static_cast<double>(values) * madds_per_value <= static_cast<double>(max_madds);
}

absl::Status ScoreSamples(const ModelHandle& h, const v1::Samples& s,
                          const v1::ScoreOptions& options, uint32_t max_rows, Worker& worker,
                          v1::ScoreResponse* r, const ScoreHooks& hooks) {
  const auto start = std::chrono::steady_clock::now();
  const engine::Model& model = *h.model;
  std::vector<float> buffer;
  auto x = ModelValues(model, s, max_rows, &buffer, hooks.stream);
  if (!x.ok()) return x.status();
  const uint32_t d = model.num_features();
  const uint32_t k = options.top_k();
  if (k > d) {
    return absl::InvalidArgumentError(absl::StrCat("top_k ", k, " is over num_features ", d));
  }
  // A series model scores windows over the rows; its first rows may be warming up. The stream's
  // window is put back as it was when the batch fails after its rows were pushed.
  const bool series = engine::IsSeries(model.spec());
  thread_local Windows win;  // its buffer reused: a worker scores one batch at a time
  win.sample_of_row.clear();
  win.samples = 0;
  std::unique_ptr<engine::WindowBuffer> own;
  std::unique_ptr<engine::WindowBuffer>* window = hooks.window != nullptr ? hooks.window : &own;
  std::optional<engine::WindowBuffer> before;
  absl::Span<const float> in = *x;
  if (series) {
    if (*window != nullptr && hooks.window != nullptr) before.emplace(**window);
    auto st = MakeWindows(model, *x, s, window, &win);
    if (!st.ok()) return st;
    in = absl::Span<const float>(win.inputs.data(), win.samples * d);
  }
  struct Shrink {  // a worker does not keep a huge windows buffer
    ~Shrink() {
      if (win.inputs.capacity() > kKeptWindowValues) std::vector<float>().swap(win.inputs);
    }
  } shrink;
  engine::ScoreOptions eo;
  // With watchers the per-feature errors come from this pass (their top features go into the
  // events), not from scoring the flagged rows again on the feed thread.
  const bool watched = hooks.feed != nullptr && hooks.feed->HasWatchers();
  eo.per_feature = options.per_feature() || k > 0 || watched;
  eo.original_units = options.original_units();
  eo.neg_elbo = options.neg_elbo();
  engine::ScoreResult& res = worker.result();
  if (!series || win.samples > 0) {
    const auto scoring = std::chrono::steady_clock::now();
    if (auto st = model.Score(worker.ContextFor(h.model), in, eo, &res); !st.ok()) {
      if (series && hooks.window != nullptr) {  // the stream's window as before this batch
        if (before) {
          **window = std::move(*before);
        } else {
          window->reset();
        }
      }
      return st;
    }
    if (hooks.autopilot != nullptr && hooks.autopilot->Enabled()) {  // a candidate beside it
      hooks.autopilot->ShadowBatch(
          h, in, res.score, res.anomalous,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - scoring).count());
    }
  } else {  // every row warming up
    res = engine::ScoreResult{};
    res.threshold = model.threshold();
  }
  if (series) {
    SpreadOverRows(win, d, eo, model.spec().kind() == v1::MODEL_KIND_VARIATIONAL, &res);
    if (win.warming()) {
      r->mutable_warming_up()->Resize(static_cast<int>(win.sample_of_row.size()), false);
      for (size_t i = 0; i < win.sample_of_row.size(); ++i) {
        r->mutable_warming_up()->Set(static_cast<int>(i), win.sample_of_row[i] < 0);
      }
    }
  }

  const size_t rows = res.error.size();
  r->set_model(h.name);
  r->set_entity(h.entity);
  r->set_version(h.version);
  r->set_threshold(res.threshold);
  r->set_num_samples(static_cast<uint32_t>(rows));
  CopyInto(res.error, r->mutable_errors());
  CopyInto(res.score, r->mutable_scores());
  CopyInto(res.p_value, r->mutable_p_values());
  r->mutable_anomalous()->Resize(static_cast<int>(rows), false);
  uint32_t anomalies = 0;
  for (size_t i = 0; i < rows; ++i) {
    r->mutable_anomalous()->Set(static_cast<int>(i), res.anomalous[i] != 0);
    anomalies += res.anomalous[i];
  }
  r->set_num_anomalies(anomalies);
  const double critical = model.file().critical_threshold_value();
  if (critical > 0) {
    r->set_critical_threshold(critical);
    r->mutable_severity()->Resize(static_cast<int>(rows), 0);
    for (size_t i = 0; i < rows; ++i) {
      r->mutable_severity()->Set(static_cast<int>(i),
                                 res.score[i] > critical ? 2 : (res.anomalous[i] ? 1 : 0));
    }
  }
  if (options.per_feature()) CopyInto(res.feature_error, r->mutable_feature_errors());
  const auto& names = model.file().feature_names();
  const bool with_names = options.top_feature_names() && names.size() == static_cast<int>(d);
  if (k > 0) {
    std::vector<uint32_t> idx(d);
    r->mutable_top_features()->Reserve(static_cast<int>(rows * k));
    r->mutable_top_feature_errors()->Reserve(static_cast<int>(rows * k));
    for (size_t i = 0; i < rows; ++i) {
      const float* fe = res.feature_error.data() + i * d;
      std::iota(idx.begin(), idx.end(), 0u);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [fe](uint32_t a, uint32_t b) {
        return fe[a] > fe[b] || (fe[a] == fe[b] && a < b);
      });
      for (uint32_t j = 0; j < k; ++j) {
        r->add_top_features(idx[j]);
        r->add_top_feature_errors(fe[idx[j]]);
        if (with_names) r->add_top_feature_names(names[static_cast<int>(idx[j])]);
      }
    }
  }
  if (eo.neg_elbo) CopyInto(res.neg_elbo, r->mutable_neg_elbo());
  const size_t skipped = RecordGaps(res, d, r);
  if (h.metrics != nullptr) {
    h.metrics->RecordGaps(std::accumulate(res.missing.begin(), res.missing.end(), uint64_t{0}),
                          skipped);
  }
  if (skipped == 0 && !win.warming()) {
    RecordScored(h, res.error, res.score, res.anomalous, critical);
  } else {
    // Skipped and warming-up samples have no error or score: left out of the histogram, the
    // drift window and the anomaly rate.
    std::vector<float> errors, scores;
    std::vector<uint8_t> anomalous;
    for (size_t i = 0; i < rows; ++i) {
      if (!std::isfinite(res.score[i])) continue;
      errors.push_back(res.error[i]);
      scores.push_back(res.score[i]);
      anomalous.push_back(res.anomalous[i]);
    }
    RecordScored(h, errors, scores, anomalous, critical);
  }
  if (watched && anomalies > 0) {
    PublishAnomalies(h, s, in, series ? &win.sample_of_row : nullptr, res, eo.original_units,
                     hooks);
  }
  *r->mutable_ids() = s.ids();
  *r->mutable_timestamps_ms() = s.timestamps_ms();
  if (hooks.debounce) hooks.debounce(r);
  if (hooks.autopilot != nullptr && hooks.autopilot->Enabled()) {
    std::vector<uint8_t> alarmed(r->alarm().begin(), r->alarm().end());
    hooks.autopilot->Scored(h, *x,
                            absl::MakeConstSpan(s.timestamps_ms().data(), s.timestamps_ms().size()),
                            res.score, res.anomalous, alarmed);
  }
  r->set_compute_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return absl::OkStatus();
}

// The model's samples of a batch for Encode and Reconstruct: its rows, or for a series model the
// full windows over them (FAILED_PRECONDITION when the series is too short for one).
static absl::StatusOr<absl::Span<const float>> SampleValues(const engine::Model& model,
                                                            const v1::Samples& s, uint32_t max_rows,
                                                            std::vector<float>* buffer) {
  auto x = ModelValues(model, s, max_rows, buffer);
  if (!x.ok() || !engine::IsSeries(model.spec())) return x;
  std::unique_ptr<engine::WindowBuffer> own;
  Windows win;
  if (auto st = MakeWindows(model, *x, s, &own, &win); !st.ok()) return st;
  win.inputs.resize(win.samples * model.num_features());
  if (win.samples == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this series model's samples are windows of ", std::max(model.spec().window().length(), 1u),
        " time steps: the ", win.sample_of_row.size(), " rows sent fill none"));
  }
  *buffer = std::move(win.inputs);
  return absl::Span<const float>(*buffer);
}

absl::Status EncodeSamples(const ModelHandle& h, const v1::Samples& s, uint32_t max_rows,
                           Worker& worker, v1::EncodeResponse* r) {
  std::vector<float> buffer;
  auto x = SampleValues(*h.model, s, max_rows, &buffer);
  if (!x.ok()) return x.status();
  std::vector<float> codes;
  if (auto st = h.model->Encode(worker.ContextFor(h.model), *x, &codes); !st.ok()) return st;
  r->set_model(h.name);
  r->set_version(h.version);
  r->set_code_size(h.model->code_size());
  CopyInto(codes, r->mutable_codes());
  return absl::OkStatus();
}

absl::Status ReconstructSamples(const ModelHandle& h, const v1::Samples& s, uint32_t max_rows,
                                Worker& worker, v1::ReconstructResponse* r) {
  std::vector<float> buffer;
  auto x = SampleValues(*h.model, s, max_rows, &buffer);
  if (!x.ok()) return x.status();
  std::vector<float> out;
  if (auto st = h.model->Reconstruct(worker.ContextFor(h.model), *x, &out); !st.ok()) {
    return st;
  }
  r->set_model(h.name);
  r->set_version(h.version);
  r->set_num_features(h.model->num_features());
  CopyInto(out, r->mutable_values());
  return absl::OkStatus();
}

absl::Status GenerateSamples(const ModelHandle& h, uint32_t count, uint64_t seed, uint32_t max_rows,
                             Worker& worker, v1::GenerateResponse* r) {
  if (count == 0) return absl::InvalidArgumentError("count must be >= 1");
  if (count > max_rows) {
    return absl::ResourceExhaustedError(
        absl::StrCat("count ", count, " is over the limit of ", max_rows));
  }
  std::vector<float> out;
  if (auto st = h.model->Generate(worker.ContextFor(h.model), count, seed, &out); !st.ok()) {
    return st;
  }
  r->set_model(h.name);
  r->set_version(h.version);
  r->set_num_features(h.model->num_features());
  CopyInto(out, r->mutable_values());
  return absl::OkStatus();
}

}  // namespace aeserve::server
