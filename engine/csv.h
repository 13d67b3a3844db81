// Reading numeric CSV files: a header of column names, then rows of numbers. A column named
// `label` (1 = anomaly) is split off; columns named `timestamp` or `id` are kept as text ids.
#pragma once

#include <istream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace aeserve::engine {

struct CsvTable {
  std::vector<std::string> feature_names;
  std::vector<float> values;  // rows x features, row-major
  size_t rows = 0;
  std::vector<float> labels;     // one per row when the file has a `label` column
  std::vector<std::string> ids;  // one per row when the file has a `timestamp` or `id` column
  size_t features() const { return feature_names.size(); }
};

// A feature cell that is empty, NaN, NA or null (any case) is a missing value (NaN). INVALID_ARGUMENT
// names the line and column of anything else that is not a finite number (a label must be one), a
// row of the wrong width, a column name given twice, or a file with no data rows.
absl::StatusOr<CsvTable> ReadCsv(std::istream& in);
absl::StatusOr<CsvTable> ReadCsvFile(const std::string& path);

}  // namespace aeserve::engine
