// Request validation, engine calls, and columnar responses.
#include "scoring.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "columns.h"

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

}  // namespace

absl::StatusOr<absl::Span<const float>> ModelValues(const engine::Model& model,
                                                    const v1::Samples& s, uint32_t max_rows,
                                                    std::vector<float>* buffer,
                                                    const v1::StreamConfig* stream) {
  const uint32_t d = model.num_features();
  // The batch's own names, else its stream's.
  const bool from_stream = s.feature_names_size() == 0 && stream != nullptr &&
                           stream->feature_names_size() > 0;
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
    return absl::InvalidArgumentError(absl::StrCat("samples have num_features ", cols,
                                                   ", the model expects ", d));
  }
  if (s.values_size() == 0) return absl::InvalidArgumentError("empty batch: no values");
  if (s.values_size() % cols != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "values count ", s.values_size(), " is not a multiple of the ", cols, " columns"));
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
    return absl::InvalidArgumentError(absl::StrCat(
        s.timestamps_ms_size(), " timestamps for ", rows, " rows: give none or one per row"));
  }
  const absl::Span<const float> values = Values(s);
  if (!named) return values;
  auto map = ColumnMap::Build(model.file().feature_names(), names, ignore_unknown);
  if (!map.ok()) return map.status();
  if (map->identity()) return values;
  const auto& absent = map->absent();
  if (absent.size() > model.max_missing()) {
    return absl::InvalidArgumentError(absl::StrCat(
        absent.size() == 1 ? "missing feature " : "missing features ", QuoteNames(absent),
        ": this model scores a sample with at most ", model.max_missing(), " of its ", d,
        " features missing (max_missing_fraction ", model.file().policy().max_missing_fraction(),
        ")"));
  }
  map->Apply(values, buffer);
  return absl::Span<const float>(*buffer);
}

// Hands the flagged rows of a scored batch to the anomaly feed (copies only: the feed's own
// thread builds the events).
static void PublishAnomalies(const ModelHandle& h, const v1::Samples& s, absl::Span<const float> x,
                             const engine::ScoreResult& res, bool have_feature_errors,
                             const ScoreHooks& hooks) {
  const uint32_t d = h.model->num_features();
  FlaggedRows f;
  f.handle = h;
  if (hooks.stream != nullptr) f.stream_id = hooks.stream->stream_id();
  f.server_time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
  f.threshold = static_cast<float>(res.threshold);
  for (size_t i = 0; i < res.anomalous.size(); ++i) {
    if (!res.anomalous[i]) continue;
    f.values.insert(f.values.end(), x.begin() + i * d, x.begin() + (i + 1) * d);
    if (have_feature_errors) {
      f.feature_errors.insert(f.feature_errors.end(), res.feature_error.begin() + i * d,
                              res.feature_error.begin() + (i + 1) * d);
    }
    f.errors.push_back(res.error[i]);
    f.scores.push_back(res.score[i]);
    f.p_values.push_back(res.p_value[i]);
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
  r->set_skip_reason(absl::StrCat(
      skipped, skipped == 1 ? " sample misses" : " samples miss", " more features than the "
      "model's max_missing_fraction allows (up to ", worst, " of ", d, " missing)"));
  return skipped;
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
  engine::ScoreOptions eo;
  // With watchers the per-feature errors come from this pass (their top features go into the
  // events), not from scoring the flagged rows again on the feed thread.
  const bool watched = hooks.feed != nullptr && hooks.feed->HasWatchers();
  eo.per_feature = options.per_feature() || k > 0 || watched;
  eo.original_units = options.original_units();
  eo.neg_elbo = options.neg_elbo();
  engine::ScoreResult& res = worker.result();
  if (auto st = model.Score(worker.ContextFor(h.model), *x, eo, &res); !st.ok()) return st;

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
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                        [fe](uint32_t a, uint32_t b) { return fe[a] > fe[b] || (fe[a] == fe[b] && a < b); });
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
    if (skipped == 0) {
      h.metrics->Record(res.error, res.score, res.anomalous, critical);
    } else {
      // Skipped samples have no error or score: left out of the histogram and the drift window.
      std::vector<float> errors, scores;
      std::vector<uint8_t> anomalous;
      for (size_t i = 0; i < rows; ++i) {
        if (res.skipped[i]) continue;
        errors.push_back(res.error[i]);
        scores.push_back(res.score[i]);
        anomalous.push_back(res.anomalous[i]);
      }
      h.metrics->Record(errors, scores, anomalous, critical);
    }
  }
  if (watched && anomalies > 0) {
    PublishAnomalies(h, s, *x, res, eo.per_feature && !eo.original_units, hooks);
  }
  *r->mutable_ids() = s.ids();
  *r->mutable_timestamps_ms() = s.timestamps_ms();
  r->set_compute_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return absl::OkStatus();
}

absl::Status EncodeSamples(const ModelHandle& h, const v1::Samples& s, uint32_t max_rows,
                           Worker& worker, v1::EncodeResponse* r) {
  std::vector<float> buffer;
  auto x = ModelValues(*h.model, s, max_rows, &buffer);
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
  auto x = ModelValues(*h.model, s, max_rows, &buffer);
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

absl::Status GenerateSamples(const ModelHandle& h, uint32_t count, uint64_t seed,
                             uint32_t max_rows, Worker& worker, v1::GenerateResponse* r) {
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
