// Training an autoencoder from data: split, scale, Adam over mini-batches, early stopping,
// calibration of the threshold on the held-out rows.
#include "engine/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/dnnl_util.h"
#include "engine/model.h"
#include "engine/model_file.h"
#include "engine/params.h"
#include "engine/scaler.h"
#include "engine/spec.h"
#include "engine/status_macros.h"
#include "engine/threshold.h"
#include "engine/train_graph.h"
#include "engine/window.h"

namespace aeserve::engine {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// AdamW: Adam on the gradient, weight decay applied to weights (not biases) apart from it.
class Adam {
 public:
  Adam(const Params& p, const v1::TrainingOptions& o) : o_(o) {
    for (const DenseParams& l : p.layers) {
      m_.emplace_back(l.weights.size(), 0.f);
      v_.emplace_back(l.weights.size(), 0.f);
      m_.emplace_back(l.bias.size(), 0.f);
      v_.emplace_back(l.bias.size(), 0.f);
    }
  }
  void Step(Params& p, const TrainGraph& g) {
    ++t_;
    const float b1 = o_.adam_beta1(), b2 = o_.adam_beta2(), eps = o_.adam_epsilon();
    const float lr = o_.learning_rate();
    const float c1 = 1.f / (1.f - std::pow(b1, static_cast<float>(t_)));
    const float c2 = 1.f / (1.f - std::pow(b2, static_cast<float>(t_)));
    const float decay = 1.f - lr * o_.weight_decay();
    for (size_t l = 0; l < p.layers.size(); ++l) {
      Update(p.layers[l].weights, g.weight_grad(l), m_[2 * l], v_[2 * l], b1, b2, eps, lr, c1, c2,
             decay);
      Update(p.layers[l].bias, g.bias_grad(l), m_[2 * l + 1], v_[2 * l + 1], b1, b2, eps, lr, c1,
             c2, 1.f);
    }
  }

 private:
  static void Update(std::vector<float>& w, const std::vector<float>& g, std::vector<float>& m,
                     std::vector<float>& v, float b1, float b2, float eps, float lr, float c1,
                     float c2, float decay) {
    const size_t n = w.size();
    for (size_t i = 0; i < n; ++i) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      w[i] = w[i] * decay - lr * (m[i] * c1) / (std::sqrt(v[i] * c2) + eps);
    }
  }
  const v1::TrainingOptions& o_;
  std::vector<std::vector<float>> m_, v_;
  int64_t t_ = 0;
};

void ScaleRows(const TrainingData& data, const std::vector<size_t>& rows, const v1::Scaler& s,
               std::vector<float>& out) {
  const size_t d = data.cols;
  out.resize(rows.size() * d);
  for (size_t i = 0; i < rows.size(); ++i) {
    const float* src = data.values.data() + rows[i] * d;
    for (size_t j = 0; j < d; ++j) out[i * d + j] = (src[j] - s.offset(j)) / s.scale(j);
  }
}

// Mean objective over `x` in evaluation mode (no noise, no dropout, the mean code).
absl::StatusOr<double> Evaluate(TrainGraph& g, const std::vector<float>& x, size_t d) {
  const size_t rows = x.size() / d;
  double total = 0;
  for (size_t start = 0; start < rows; start += g.batch()) {
    const uint32_t n = static_cast<uint32_t>(std::min<size_t>(g.batch(), rows - start));
    AE_ASSIGN_OR_RETURN(LossParts loss, g.Run(x.data() + start * d, n, false, nullptr, false));
    total += loss.total * n;
  }
  return total / static_cast<double>(rows);
}

// Mean and std of both parts of the score on the calibration rows; a std of 0 (all equal) is
// replaced by a small fraction of the mean so that the score stays finite.
v1::ScoreScale FitScoreScale(const std::vector<float>& errors,
                             const std::vector<float>& distances) {
  auto fit = [](const std::vector<float>& v, double* mean, double* std) {
    double sum = 0, sq = 0;
    for (float x : v) sum += x;
    *mean = sum / static_cast<double>(v.size());
    for (float x : v) sq += (x - *mean) * (x - *mean);
    *std = std::sqrt(sq / static_cast<double>(v.size()));
    *std = std::max(*std, 1e-6 * std::max(std::fabs(*mean), 1e-6));
  };
  double em, es, dm, ds;
  fit(errors, &em, &es);
  fit(distances, &dm, &ds);
  v1::ScoreScale s;
  s.set_error_mean(em);
  s.set_error_std(es);
  s.set_distance_mean(dm);
  s.set_distance_std(ds);
  return s;
}

absl::Status CheckShape(const TrainingData& data) {
  if (data.rows == 0 || data.cols == 0 || data.values.size() != data.rows * data.cols) {
    return absl::InvalidArgumentError("training data: must be a non-empty rows x features matrix");
  }
  if (!data.feature_names.empty() && data.feature_names.size() != data.cols) {
    return absl::InvalidArgumentError(absl::StrCat("training data: ", data.feature_names.size(),
                                                   " feature names for ", data.cols, " features"));
  }
  return absl::OkStatus();
}

// The rows training can use (gaps the scoring policy would score) and which are complete.
struct UsableRows {
  std::vector<size_t> usable;
  std::vector<uint8_t> complete;  // per row of the data: no missing value (may be a reference row)
};

absl::StatusOr<UsableRows> FindUsableRows(const TrainingData& data,
                                          const v1::ScoringPolicy& policy) {
  const size_t d = data.cols;
  const size_t max_missing = MaxMissingFeatures(policy, static_cast<uint32_t>(d));
  UsableRows out;
  out.complete.assign(data.rows, 1);
  for (size_t r = 0; r < data.rows; ++r) {
    size_t missing = 0;
    for (size_t j = 0; j < d; ++j) {
      const float v = data.values[r * d + j];
      if (std::isfinite(v)) continue;
      if (!std::isnan(v)) {
        return absl::InvalidArgumentError(
            absl::StrCat("training data: infinite value at row ", r, ", feature ", j));
      }
      if (max_missing == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("training data: missing value (NaN) at row ", r, ", feature ", j,
                         ", and the scoring policy allows none (max_missing_fraction 0)"));
      }
      ++missing;
    }
    out.complete[r] = missing == 0;
    if (missing <= max_missing) out.usable.push_back(r);
  }
  if (out.usable.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("training data: every row misses more than max_missing_fraction ",
                     policy.max_missing_fraction(), " of its features"));
  }
  return out;
}

struct Split {
  std::vector<size_t> train, validation;
};

// The last validation_split of the rows as uploaded (HOLD_OUT_LAST) or that many drawn with the
// seed; at least one row trains.
Split SplitRows(std::vector<size_t> order, const v1::TrainingOptions& opt, std::mt19937_64& rng) {
  const size_t n_rows = order.size();
  size_t n_val =
      static_cast<size_t>(std::floor(opt.validation_split() * static_cast<double>(n_rows)));
  if (n_rows - n_val < 1) n_val = n_rows - 1;
  if (opt.hold_out() == v1::HOLD_OUT_RANDOM) {
    std::shuffle(order.begin(), order.end(), rng);
  } else {
    std::rotate(order.begin(), order.end() - static_cast<std::ptrdiff_t>(n_val), order.end());
  }
  Split s;
  s.validation.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n_val));
  s.train.assign(order.begin() + static_cast<std::ptrdiff_t>(n_val), order.end());
  return s;
}

std::vector<float> RawRows(const TrainingData& data, const std::vector<size_t>& rows) {
  const size_t d = data.cols;
  std::vector<float> out(rows.size() * d);
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy_n(data.values.data() + rows[i] * d, d, out.data() + i * d);
  return out;
}

// The starting weights and scaler: the base model's when fine-tuning (same spec), else fresh
// weights and a scaler fitted on the training rows.
absl::Status InitWeights(const TrainRequest& req, const v1::ModelSpec& spec,
                         const v1::TrainingOptions& opt, const TrainingData& data,
                         const std::vector<size_t>& train_rows, std::mt19937_64& rng,
                         Params* params, v1::Scaler* scaler) {
  if (req.start_from != nullptr) {
    AE_ASSIGN_OR_RETURN(v1::ModelSpec base, ResolveSpec(req.start_from->spec(), 0));
    if (base.SerializeAsString() != spec.SerializeAsString()) {
      return absl::InvalidArgumentError("fine-tuning: the spec must equal the base model's spec");
    }
    AE_ASSIGN_OR_RETURN(*params, FromModelFile(*req.start_from));
    *scaler = req.start_from->scaler();
    return absl::OkStatus();
  }
  AE_ASSIGN_OR_RETURN(
      *scaler, FitScaler(opt.scaling(), RawRows(data, train_rows), train_rows.size(), data.cols));
  *params = InitParams(spec, rng);
  return absl::OkStatus();
}

// Adam over shuffled mini-batches of the scaled training rows, early stopping on the validation
// loss (the training loss when nothing is held out). Leaves the best epoch's weights in `params`.
absl::StatusOr<v1::TrainingHistory> RunEpochs(
    const TrainRequest& req, const v1::ModelSpec& spec, const v1::TrainingOptions& opt,
    const v1::Scaler& scaler, const std::vector<float>& train_x, const std::vector<float>& val_x,
    size_t d, std::mt19937_64& rng, Params* params, const ProgressCallback& progress,
    Clock::time_point started) {
  const size_t train_rows = train_x.size() / d;
  const uint32_t batch = static_cast<uint32_t>(std::min<size_t>(opt.batch_size(), train_rows));
  AE_ASSIGN_OR_RETURN(auto graph, TrainGraph::Create(spec, opt.dropout(), batch, params));
  graph->set_fill(ScaledFill(scaler));
  Adam adam(*params, opt);

  v1::TrainingHistory history;
  history.set_train_rows(train_rows);
  history.set_validation_rows(val_x.size() / d);
  Params best = *params;
  double best_loss = INFINITY;
  uint32_t since_best = 0;
  std::vector<size_t> perm(train_rows);
  std::iota(perm.begin(), perm.end(), 0);
  std::vector<float> batch_x(size_t{batch} * d);
  for (uint32_t epoch = 1; epoch <= opt.epochs(); ++epoch) {
    const auto epoch_start = Clock::now();
    std::shuffle(perm.begin(), perm.end(), rng);
    double train_loss = 0;
    for (size_t start = 0; start < perm.size(); start += batch) {
      if (req.cancel != nullptr && req.cancel->load(std::memory_order_relaxed)) {
        return absl::CancelledError(absl::StrCat("training cancelled in epoch ", epoch));
      }
      const uint32_t n = static_cast<uint32_t>(std::min<size_t>(batch, perm.size() - start));
      for (uint32_t i = 0; i < n; ++i) {
        std::copy_n(train_x.data() + perm[start + i] * d, d, batch_x.data() + size_t{i} * d);
      }
      AE_ASSIGN_OR_RETURN(LossParts loss, graph->Run(batch_x.data(), n, true, &rng, true));
      if (!std::isfinite(loss.total)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "training diverged (non-finite loss) in epoch ", epoch, ": lower the learning rate"));
      }
      train_loss += loss.total * n;
      adam.Step(*params, *graph);
    }
    train_loss /= static_cast<double>(perm.size());
    const double epoch_seconds = SecondsSince(epoch_start);
    double val_loss = NAN;
    if (!val_x.empty()) {
      AE_ASSIGN_OR_RETURN(val_loss, Evaluate(*graph, val_x, d));
    }
    v1::EpochRecord* rec = history.add_epochs();
    rec->set_epoch(epoch);
    rec->set_train_loss(train_loss);
    rec->set_validation_loss(val_loss);
    rec->set_samples_per_second(static_cast<double>(perm.size()) / std::max(epoch_seconds, 1e-9));
    rec->set_seconds(epoch_seconds);

    const double monitored = val_x.empty() ? train_loss : val_loss;
    if (monitored < best_loss - opt.min_delta()) {
      best_loss = monitored;
      best = *params;
      history.set_best_epoch(epoch);
      since_best = 0;
    } else {
      ++since_best;
    }
    if (progress) {
      TrainingProgress p{epoch,
                         opt.epochs(),
                         train_loss,
                         val_loss,
                         rec->samples_per_second(),
                         SecondsSince(started)};
      if (!progress(p))
        return absl::CancelledError(absl::StrCat("training cancelled after epoch ", epoch));
    }
    if (opt.patience() > 0 && since_best >= opt.patience()) {
      history.set_early_stopped(true);
      break;
    }
  }
  if (history.best_epoch() == 0) {
    return absl::FailedPreconditionError("training did not produce a finite loss");
  }
  *params = std::move(best);
  return history;
}

// Calibrates `file` on the held-out rows (the training rows when nothing was held out), scored by
// the same inference path that will serve the model: the reference rows for the neighbour
// distance (drawn from the complete training rows; they never calibrate, as a row's distance to
// itself is 0), the score scale, the sorted calibration scores and the threshold.
absl::Status Calibrate(const TrainingData& data, const Split& split,
                       const std::vector<uint8_t>& complete, const v1::TrainingOptions& opt,
                       const v1::ThresholdConfig& thr_config, bool bf16, std::mt19937_64& rng,
                       v1::ModelFile& file) {
  std::vector<size_t> calib_rows = split.validation.empty() ? split.train : split.validation;
  if (file.spec().neighbors() > 0) {
    std::vector<size_t> reference;  // complete training rows only
    for (size_t r : split.train) {
      if (complete[r]) reference.push_back(r);
    }
    std::shuffle(reference.begin(), reference.end(), rng);
    if (split.validation.empty()) {  // the reference candidates never calibrate: at most half
      const auto pool = static_cast<std::ptrdiff_t>(
          std::min<size_t>(reference.size() / 2, file.spec().reference_rows()));
      calib_rows.assign(reference.begin() + pool, reference.end());
      reference.resize(static_cast<size_t>(pool));
    }
    // Each group is an independent random sample of the candidates (groups may share rows);
    // when one group holds every candidate, one group is enough.
    const v1::ModelSpec& spec = file.spec();
    const size_t group_rows =
        std::min<size_t>(reference.size(), spec.reference_rows() / spec.neighbor_groups());
    const uint32_t groups = group_rows == reference.size() ? 1 : spec.neighbor_groups();
    if (group_rows == 0) {
      file.mutable_spec()->set_neighbors(0);  // a single training row: no neighbours to keep
      file.mutable_spec()->clear_reference_rows();
      file.mutable_spec()->clear_reconstruction_weight();
      file.mutable_spec()->clear_neighbor_groups();
    } else {
      file.mutable_spec()->set_neighbors(
          static_cast<uint32_t>(std::min<size_t>(spec.neighbors(), group_rows)));
      file.mutable_spec()->set_neighbor_groups(groups);
      std::vector<float> scaled;
      for (uint32_t g = 0; g < groups; ++g) {
        if (g > 0) std::shuffle(reference.begin(), reference.end(), rng);
        std::vector<size_t> rows(reference.begin(),
                                 reference.begin() + static_cast<std::ptrdiff_t>(group_rows));
        std::sort(rows.begin(), rows.end());
        ScaleRows(data, rows, file.scaler(), scaled);
        file.mutable_reference()->Add(scaled.begin(), scaled.end());
      }
    }
  }
  AE_ASSIGN_OR_RETURN(auto model,
                      Model::Create(file, ModelOptions{.threads = static_cast<int>(opt.threads()),
                                                       .max_batch = 4096,
                                                       .bf16 = bf16}));
  auto ctx = model->NewContext();
  ScoreResult scores;
  AE_RETURN_IF_ERROR(model->Score(*ctx, RawRows(data, calib_rows), {}, &scores));
  std::vector<float> errors = std::move(scores.error);
  if (!scores.distance.empty()) {
    *file.mutable_score_scale() = FitScoreScale(errors, scores.distance);
    for (size_t i = 0; i < errors.size(); ++i) {
      errors[i] = AnomalyScore(errors[i], scores.distance[i], file.spec().reconstruction_weight(),
                               file.score_scale());
    }
  }
  if (errors.size() > opt.max_calibration_samples()) {
    std::shuffle(errors.begin(), errors.end(), rng);
    errors.resize(opt.max_calibration_samples());
  }
  std::sort(errors.begin(), errors.end());
  file.mutable_calibration_errors()->Add(errors.begin(), errors.end());
  AE_ASSIGN_OR_RETURN(double thr, ComputeThreshold(thr_config, errors));
  file.set_threshold_value(thr);
  return absl::OkStatus();
}

// Trains on samples that are the rows of `data` (for series models: its windows): usable rows,
// split, starting weights, epochs, the model file, calibration.
absl::StatusOr<v1::ModelFile> TrainSamples(const TrainRequest& req, const TrainingData& data,
                                           const ProgressCallback& progress) {
  const auto started = Clock::now();
  AE_RETURN_IF_ERROR(CheckShape(data));
  AE_ASSIGN_OR_RETURN(v1::ScoringPolicy policy, ResolvePolicy(req.policy));
  AE_ASSIGN_OR_RETURN(UsableRows rows, FindUsableRows(data, policy));
  AE_ASSIGN_OR_RETURN(v1::ModelSpec spec, ResolveSpec(req.spec, static_cast<uint32_t>(data.cols)));
  AE_ASSIGN_OR_RETURN(v1::TrainingOptions opt, ResolveTrainingOptions(req.options));
  AE_ASSIGN_OR_RETURN(v1::ThresholdConfig thr_config, ResolveThresholdConfig(req.threshold));

  // Training and calibration run on opt.threads() cores (a training job keeps to its share).
  ScopedThreads threads(static_cast<int>(opt.threads()));
  // One stream of draws, in this order: split, initial weights, epochs, calibration.
  std::mt19937_64 rng(opt.seed());
  const Split split = SplitRows(rows.usable, opt, rng);
  Params params;
  v1::Scaler scaler;
  AE_RETURN_IF_ERROR(InitWeights(req, spec, opt, data, split.train, rng, &params, &scaler));
  std::vector<float> train_x, val_x;
  ScaleRows(data, split.train, scaler, train_x);  // missing values stay NaN
  ScaleRows(data, split.validation, scaler, val_x);
  if (spec.loss() == v1::LOSS_BCE) {
    for (float v : train_x) {
      if (v < -1e-6f || v > 1 + 1e-6f) {
        return absl::InvalidArgumentError(
            "binary cross entropy needs scaled inputs in [0, 1]: use min-max scaling");
      }
    }
  }
  AE_ASSIGN_OR_RETURN(v1::TrainingHistory history,
                      RunEpochs(req, spec, opt, scaler, train_x, val_x, data.cols, rng, &params,
                                progress, started));

  v1::ModelFile file;
  file.set_format_version(kModelFormatVersion);
  *file.mutable_spec() = spec;
  *file.mutable_training() = opt;
  for (const auto& name : data.feature_names) file.add_feature_names(name);
  *file.mutable_scaler() = scaler;
  *file.mutable_policy() = policy;
  ToModelFile(params, file);
  *file.mutable_threshold() = thr_config;
  history.set_seconds(SecondsSince(started));
  *file.mutable_history() = history;
  v1::ModelMetadata* meta = file.mutable_metadata();
  meta->set_created_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  meta->set_data_rows(data.rows);
  meta->set_seed(opt.seed());
  meta->set_engine_version(AESERVE_VERSION);
  meta->set_description(req.description);
  AE_RETURN_IF_ERROR(Calibrate(data, split, rows.complete, opt, thr_config, req.bf16, rng, file));
  return file;
}

// A series model: the samples are windows over the rows, in time order.
absl::StatusOr<v1::ModelFile> TrainSeries(const TrainRequest& req, const TrainingData& data,
                                          const ProgressCallback& progress) {
  AE_RETURN_IF_ERROR(CheckShape(data));
  TrainRequest windowed = req;
  v1::Window* w = windowed.spec.mutable_window();
  AE_RETURN_IF_ERROR(WindowForColumns(w, static_cast<uint32_t>(data.cols)));
  const uint64_t inputs = WindowInputs(*w, w->columns());
  if (data.timestamps_ms.size() != data.rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("training data: this model builds windows over time (window of ",
                     std::max(w->length(), 1u), " steps): every row needs a timestamp (",
                     data.timestamps_ms.size(), " timestamps for ", data.rows, " rows)"));
  }
  if (w->interval_ms() == 0) {  // fine-tuning keeps the base model's
    auto step = MedianStep(data.timestamps_ms);
    if (!step.ok())
      return absl::InvalidArgumentError(absl::StrCat("training data: ", step.status().message()));
    w->set_interval_ms(*step);
  }
  AE_ASSIGN_OR_RETURN(v1::ScoringPolicy policy, ResolvePolicy(req.policy));
  if (auto st = CheckSeriesValues(
          data.values, w->columns(), MaxMissingFeatures(policy, static_cast<uint32_t>(inputs)) > 0,
          [&](size_t j) {
            return data.feature_names.empty() ? std::to_string(j)
                                              : "'" + data.feature_names[j] + "'";
          });
      !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("training data: ", st.message()));
  }
  size_t samples = 0;
  AE_ASSIGN_OR_RETURN(std::vector<float> x, TrainingWindows(*w, policy, data.values, data.rows,
                                                            data.timestamps_ms, &samples));
  const std::vector<std::string> names = WindowInputNames(*w, data.feature_names);
  TrainingData windows{x, samples, static_cast<size_t>(inputs), names, {}};
  AE_ASSIGN_OR_RETURN(v1::ModelFile file, TrainSamples(windowed, windows, progress));
  for (const auto& name : data.feature_names) file.add_series_columns(name);
  file.mutable_metadata()->set_data_rows(data.rows);
  return file;
}

}  // namespace

absl::StatusOr<v1::ModelFile> Train(const TrainRequest& req, const TrainingData& data,
                                    const ProgressCallback& progress) {
  return IsSeries(req.spec) ? TrainSeries(req, data, progress) : TrainSamples(req, data, progress);
}

}  // namespace aeserve::engine
