// Matching a request's columns to a model's features by name.
#include "server/columns.h"

#include <cmath>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace aeserve::server {

absl::Status CheckUniqueNames(const Names& names) {
  absl::flat_hash_set<std::string_view> seen;
  for (const std::string& n : names) {
    if (!seen.insert(n).second) {
      return absl::InvalidArgumentError(absl::StrCat("feature name '", n, "' is given twice"));
    }
  }
  return absl::OkStatus();
}

std::string QuoteNames(absl::Span<const std::string> names) {
  std::string out;
  const size_t shown = std::min<size_t>(names.size(), 10);
  for (size_t i = 0; i < shown; ++i) absl::StrAppend(&out, i ? ", '" : "'", names[i], "'");
  if (names.size() > shown) absl::StrAppend(&out, " and ", names.size() - shown, " more");
  return out;
}

absl::StatusOr<ColumnMap> ColumnMap::Build(const Names& model_names, const Names& columns,
                                           bool ignore_unknown) {
  if (model_names.empty()) {
    return absl::InvalidArgumentError(
        "this model was trained without feature names: send columns in its order, without "
        "feature_names");
  }
  if (auto st = CheckUniqueNames(columns); !st.ok()) return st;
  absl::flat_hash_map<std::string_view, int32_t> column_of;
  column_of.reserve(static_cast<size_t>(columns.size()));
  for (int c = 0; c < columns.size(); ++c) column_of.emplace(columns[c], c);
  ColumnMap m;
  m.columns_ = static_cast<size_t>(columns.size());
  m.source_.resize(static_cast<size_t>(model_names.size()), -1);
  size_t matched = 0;
  for (int j = 0; j < model_names.size(); ++j) {
    auto it = column_of.find(model_names[j]);
    if (it == column_of.end()) {
      m.absent_.push_back(model_names[j]);
    } else {
      m.source_[static_cast<size_t>(j)] = it->second;
      ++matched;
    }
  }
  if (matched < m.columns_ && !ignore_unknown) {
    absl::flat_hash_set<std::string_view> known(model_names.begin(), model_names.end());
    std::vector<std::string> unknown;
    for (const std::string& c : columns) {
      if (!known.contains(c)) unknown.push_back(c);
    }
    return absl::InvalidArgumentError(absl::StrCat(
        unknown.size() == 1 ? "unknown feature " : "unknown features ", QuoteNames(unknown),
        ": the model does not have ", unknown.size() == 1 ? "it" : "them",
        " (set ignore_unknown_features to drop such columns)"));
  }
  m.identity_ = m.absent_.empty() && m.columns_ == m.source_.size();
  for (size_t j = 0; m.identity_ && j < m.source_.size(); ++j) {
    m.identity_ = m.source_[j] == static_cast<int32_t>(j);
  }
  return m;
}

void ColumnMap::Apply(absl::Span<const float> in, std::vector<float>* out) const {
  const size_t d = source_.size();
  const size_t rows = in.size() / columns_;
  out->resize(rows * d);
  for (size_t r = 0; r < rows; ++r) {
    const float* src = in.data() + r * columns_;
    float* dst = out->data() + r * d;
    for (size_t j = 0; j < d; ++j) dst[j] = source_[j] < 0 ? NAN : src[source_[j]];
  }
}

}  // namespace aeserve::server
