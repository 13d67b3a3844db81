// Matching a request's columns to a model's features by name (Samples.feature_names), so
// telemetry can arrive in any column order, with extra columns or with some features absent.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "google/protobuf/repeated_ptr_field.h"

namespace aeserve::server {

using Names = google::protobuf::RepeatedPtrField<std::string>;

// INVALID_ARGUMENT naming the first name given twice.
absl::Status CheckUniqueNames(const Names& names);

// Where each of the model's features comes from in a request's columns.
class ColumnMap {
 public:
  // `model_names`: the model's features in its order; `columns`: the request's column names.
  // INVALID_ARGUMENT for a name given twice, a column the model does not know (unless
  // `ignore_unknown`), or names sent to a model trained without names.
  static absl::StatusOr<ColumnMap> Build(const Names& model_names, const Names& columns,
                                         bool ignore_unknown);

  // True when the columns are the model's features in its order (no copy needed).
  bool identity() const { return identity_; }
  size_t columns() const { return columns_; }
  // The model's features no column carries (missing in every row).
  const std::vector<std::string>& absent() const { return absent_; }
  // Rows of columns() values in the request's order -> rows of the model's features in its
  // order, NaN where a feature is absent.
  void Apply(absl::Span<const float> in, std::vector<float>* out) const;

 private:
  std::vector<int32_t> source_;  // per model feature: its column, or -1
  std::vector<std::string> absent_;
  size_t columns_ = 0;
  bool identity_ = false;
};

// "'a', 'b'" — names quoted for an error message (at most 10, then "and N more").
std::string QuoteNames(absl::Span<const std::string> names);

}  // namespace aeserve::server
