// Reading numeric CSV files into a row-major float matrix.
#include "csv.h"

#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "fast_float/fast_float.h"

namespace aeserve::engine {
namespace {

// An empty cell, NaN, NA or null (any case) is a missing value.
bool IsMissing(absl::string_view c) {
  return c.empty() || absl::EqualsIgnoreCase(c, "nan") || absl::EqualsIgnoreCase(c, "na") ||
         absl::EqualsIgnoreCase(c, "null");
}

}  // namespace

absl::StatusOr<CsvTable> ReadCsv(std::istream& in) {
  CsvTable t;
  std::string line;
  if (!std::getline(in, line)) return absl::InvalidArgumentError("csv: empty input, no header");
  if (!line.empty() && line.back() == '\r') line.pop_back();
  std::vector<std::string> header = absl::StrSplit(line, ',');
  int label_col = -1, id_col = -1;
  std::vector<int> feature_cols;
  for (size_t i = 0; i < header.size(); ++i) {
    std::string name(absl::StripAsciiWhitespace(header[i]));
    if (name == "label") {
      label_col = static_cast<int>(i);
    } else if ((name == "timestamp" || name == "id") && id_col < 0) {
      id_col = static_cast<int>(i);
    } else {
      feature_cols.push_back(static_cast<int>(i));
      t.feature_names.push_back(name);
    }
  }
  if (feature_cols.empty()) return absl::InvalidArgumentError("csv: no feature columns");
  for (size_t i = 0; i < t.feature_names.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (t.feature_names[i] == t.feature_names[j]) {
        return absl::InvalidArgumentError(
            absl::StrCat("csv header: column '", t.feature_names[i], "' appears twice"));
      }
    }
  }
  size_t line_no = 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<absl::string_view> cells = absl::StrSplit(line, ',');
    if (cells.size() != header.size()) {
      return absl::InvalidArgumentError(absl::StrCat("csv line ", line_no, ": ", cells.size(),
                                                     " cells, header has ", header.size()));
    }
    auto number = [&](size_t col, float* out, bool may_miss) -> absl::Status {
      absl::string_view c = absl::StripAsciiWhitespace(cells[col]);
      if (may_miss && IsMissing(c)) {
        *out = NAN;
        return absl::OkStatus();
      }
      auto r = fast_float::from_chars(c.data(), c.data() + c.size(), *out);
      if (r.ec != std::errc() || r.ptr != c.data() + c.size() || !std::isfinite(*out)) {
        return absl::InvalidArgumentError(absl::StrCat("csv line ", line_no, ", column '",
                                                       header[col], "': not a finite number: '",
                                                       c, "'"));
      }
      return absl::OkStatus();
    };
    for (int col : feature_cols) {
      float v = 0;
      if (auto st = number(col, &v, true); !st.ok()) return st;
      t.values.push_back(v);
    }
    if (label_col >= 0) {
      float v = 0;
      if (auto st = number(label_col, &v, false); !st.ok()) return st;
      t.labels.push_back(v);
    }
    if (id_col >= 0) t.ids.emplace_back(absl::StripAsciiWhitespace(cells[id_col]));
    ++t.rows;
  }
  if (t.rows == 0) return absl::InvalidArgumentError("csv: no data rows");
  return t;
}

absl::StatusOr<CsvTable> ReadCsvFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  auto t = ReadCsv(in);
  if (!t.ok()) return absl::Status(t.status().code(), absl::StrCat(path, ": ", t.status().message()));
  return t;
}

}  // namespace aeserve::engine
