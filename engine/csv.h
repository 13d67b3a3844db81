// Reading numeric CSV files: a header of column names, then rows of numbers. A column named
// `label` (1 = anomaly) is split off; columns named `timestamp` or `id` are kept as text ids (and
// a `timestamp` column, when it holds times, as timestamps too).
#pragma once

#include <cstdint>
#include <istream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace aeserve::engine {

struct CsvTable {
  std::vector<std::string> feature_names;
  std::vector<float> values;  // rows x features, row-major
  size_t rows = 0;
  std::vector<float> labels;     // one per row when the file has a `label` column
  std::vector<std::string> ids;  // one per row: the `id` column, else the `timestamp` column
  // One per row when the file has a `timestamp` column whose every cell is a time (ParseTimestamp);
  // otherwise empty, and timestamp_problem names the first cell that is not.
  std::vector<int64_t> timestamps_ms;
  std::string timestamp_problem;
  // One per row: the cells of the column ReadCsv was asked to keep as text (entity names).
  std::vector<std::string> text;
  size_t features() const { return feature_names.size(); }
};

// A time as milliseconds since the Unix epoch: ISO 8601 ("2024-01-31 14:05:00", "2024-01-31T14:05",
// seconds, fractions and a "Z" or "+02:00" offset optional; UTC without an offset; the date must
// exist) or a number of Unix seconds ("1706709900", "1706709900.25"), read as milliseconds from
// 1e11 on ("1706709900000"). False when it is neither.
bool ParseTimestamp(absl::string_view text, int64_t* unix_ms);

// Records as RFC 4180 has them: a field in double quotes may hold commas, line breaks and doubled
// quotes; CRLF or LF line ends. A feature cell that is empty, NaN, NA or null (any case) is a
// missing value (NaN). INVALID_ARGUMENT names the line and column of anything else that is not a
// finite number (a label must be one), a row of the wrong width, a column name given twice, a
// quote never closed, a first line of numbers (a file without a header row), a header that is one
// column holding ';', a tab or '|' (another separator), or a file with no data rows.
// `text_column`, when given, names a column kept as text (CsvTable::text) and not as a feature;
// INVALID_ARGUMENT when the header has no such column or one of its cells is empty.
absl::StatusOr<CsvTable> ReadCsv(std::istream& in, const std::string& text_column = "");
absl::StatusOr<CsvTable> ReadCsvFile(const std::string& path, const std::string& text_column = "");

}  // namespace aeserve::engine
