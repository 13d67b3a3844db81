// Reading numeric CSV files into a row-major float matrix.
#include "engine/csv.h"

#include <cmath>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

// Days from 1970-01-01 to the civil date y-m-d (proleptic Gregorian; H. Hinnant's algorithm).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// Reads exactly `n` digits at `*p`.
bool Digits(absl::string_view s, size_t* p, size_t n, int* out) {
  if (*p + n > s.size()) return false;
  int v = 0;
  for (size_t i = 0; i < n; ++i) {
    const char c = s[*p + i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *p += n;
  *out = v;
  return true;
}

bool ParseIso(absl::string_view s, int64_t* unix_ms) {
  size_t p = 0;
  int y, mo, d, h = 0, mi = 0, sec = 0;
  auto lit = [&](char c) { return p < s.size() && s[p] == c && (++p, true); };
  if (!Digits(s, &p, 4, &y) || !lit('-') || !Digits(s, &p, 2, &mo) || !lit('-') ||
      !Digits(s, &p, 2, &d) || mo < 1 || mo > 12 || d < 1) {
    return false;
  }
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (d > kDays[mo - 1] + (mo == 2 && leap ? 1 : 0)) return false;
  double frac = 0;
  int64_t offset_min = 0;
  if (p < s.size()) {
    if (s[p] != ' ' && s[p] != 'T') return false;
    ++p;
    if (!Digits(s, &p, 2, &h) || !lit(':') || !Digits(s, &p, 2, &mi) || h > 23 || mi > 59)
      return false;
    if (lit(':')) {
      if (!Digits(s, &p, 2, &sec) || sec > 60) return false;
      if (lit('.')) {
        double scale = 0.1;
        const size_t start = p;
        while (p < s.size() && s[p] >= '0' && s[p] <= '9') {
          frac += (s[p++] - '0') * scale;
          scale /= 10;
        }
        if (p == start) return false;
      }
    }
    if (lit('Z')) {
    } else if (p < s.size() && (s[p] == '+' || s[p] == '-')) {
      const int sign = s[p++] == '-' ? -1 : 1;
      int oh, om = 0;
      if (!Digits(s, &p, 2, &oh)) return false;
      if (lit(':') && !Digits(s, &p, 2, &om)) return false;  // "+05:" is not an offset
      if (p < s.size() && !Digits(s, &p, 2, &om)) return false;
      if (oh > 23 || om > 59) return false;
      offset_min = sign * (oh * 60 + om);
    }
    if (p != s.size()) return false;
  }
  const int64_t seconds =
      DaysFromCivil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset_min * 60;
  *unix_ms = seconds * 1000 + static_cast<int64_t>(std::llround(frac * 1000));
  return true;
}

// Reads one record (RFC 4180): fields separated by commas, a field in double quotes may hold
// commas, line breaks and doubled quotes (""). Returns false at the end of the input; `*lines` is
// the number of physical lines the record took. INVALID_ARGUMENT for a quote left open.
absl::StatusOr<bool> ReadRecord(std::istream& in, size_t first_line,
                                std::vector<std::string>* cells, size_t* lines) {
  cells->clear();
  std::string line;
  auto next = [&in, &line] {
    if (!std::getline(in, line)) return false;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
    return true;
  };
  if (!next()) return false;
  *lines = 1;
  std::string cell;
  bool quoted = false;  // inside a quoted field
  bool was_quoted = false;
  for (size_t i = 0;; ++i) {
    if (i == line.size()) {
      if (!quoted) break;
      // A line break inside quotes belongs to the field.
      if (!next()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "csv line ", first_line, ": a quoted field is never closed (a lone '\"')"));
      }
      ++*lines;
      cell += '\n';
      i = static_cast<size_t>(-1);
      continue;
    }
    const char c = line[i];
    if (quoted) {
      if (c != '"') {
        cell += c;
      } else if (i + 1 < line.size() && line[i + 1] == '"') {
        cell += '"';
        ++i;
      } else {
        quoted = false;
      }
    } else if (c == '"' && absl::StripAsciiWhitespace(cell).empty() && !was_quoted) {
      cell.clear();
      quoted = was_quoted = true;
    } else if (c == ',') {
      cells->push_back(std::move(cell));
      cell.clear();
      was_quoted = false;
    } else {
      cell += c;
    }
  }
  cells->push_back(std::move(cell));
  return true;
}

bool IsNumber(absl::string_view c) {
  c = absl::StripAsciiWhitespace(c);
  double v;
  auto r = fast_float::from_chars(c.data(), c.data() + c.size(), v);
  return !c.empty() && r.ec == std::errc() && r.ptr == c.data() + c.size();
}

// A first line that is data, not names: every cell a number, and not just the column positions
// (0,1,2,... or 1,2,3,..., as pandas writes for unnamed columns).
bool LooksLikeData(const std::vector<std::string>& header) {
  bool positions0 = true, positions1 = true;
  for (size_t i = 0; i < header.size(); ++i) {
    if (!IsNumber(header[i])) return false;
    const std::string name(absl::StripAsciiWhitespace(header[i]));
    positions0 = positions0 && name == std::to_string(i);
    positions1 = positions1 && name == std::to_string(i + 1);
  }
  return !positions0 && !positions1;
}

}  // namespace

bool ParseTimestamp(absl::string_view text, int64_t* unix_ms) {
  const absl::string_view s = absl::StripAsciiWhitespace(text);
  if (s.empty()) return false;
  double number = 0;
  auto r = fast_float::from_chars(s.data(), s.data() + s.size(), number);
  if (r.ec == std::errc() && r.ptr == s.data() + s.size()) {
    // Unix seconds; a number of 1e11 or more (after the year 5138 in seconds) is milliseconds, as
    // many exporters write them.
    if (!std::isfinite(number) || std::fabs(number) >= 1e15) return false;
    *unix_ms = std::llround(std::fabs(number) >= 1e11 ? number : number * 1000);
    return true;
  }
  return ParseIso(s, unix_ms);
}

absl::StatusOr<CsvTable> ReadCsv(std::istream& in, const std::string& text_column) {
  CsvTable t;
  std::vector<std::string> header;
  size_t lines = 0;
  auto first = ReadRecord(in, 1, &header, &lines);
  if (!first.ok()) return first.status();
  if (!*first) return absl::InvalidArgumentError("csv: empty input, no header");
  if (header.size() == 1) {
    for (const char* sep : {";", "\t", "|"}) {
      if (absl::StrContains(header[0], sep)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "csv: the header is one column holding '", std::string(sep) == "\t" ? "\\t" : sep,
            "': the file seems separated by it; aeserve reads comma-separated values"));
      }
    }
  }
  if (LooksLikeData(header)) {
    return absl::InvalidArgumentError(
        "csv: the first line is numbers, not column names: the file needs a header row naming "
        "its columns (the model's feature names; 'label', 'timestamp' and 'id' are special)");
  }
  int label_col = -1, id_col = -1, time_col = -1, text_col = -1;
  std::vector<int> feature_cols;
  for (size_t i = 0; i < header.size(); ++i) {
    std::string name(absl::StripAsciiWhitespace(header[i]));
    if (!text_column.empty() && name == text_column && text_col < 0) {
      text_col = static_cast<int>(i);
    } else if (name == "label") {
      label_col = static_cast<int>(i);
    } else if (name == "timestamp" && time_col < 0) {
      time_col = static_cast<int>(i);
    } else if (name == "id" && id_col < 0) {
      id_col = static_cast<int>(i);
    } else {
      feature_cols.push_back(static_cast<int>(i));
      t.feature_names.push_back(name);
    }
  }
  if (!text_column.empty() && text_col < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("csv header: no column '", text_column, "' (the entity column)"));
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
  size_t line_no = lines;
  std::vector<std::string> cells;
  for (;;) {
    const size_t record_line = line_no + 1;
    auto more = ReadRecord(in, record_line, &cells, &lines);
    if (!more.ok()) return more.status();
    if (!*more) break;
    line_no += lines;
    if (cells.size() == 1 && absl::StripAsciiWhitespace(cells[0]).empty()) continue;  // blank line
    if (cells.size() != header.size()) {
      return absl::InvalidArgumentError(absl::StrCat("csv line ", record_line, ": ", cells.size(),
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
        return absl::InvalidArgumentError(absl::StrCat("csv line ", record_line, ", column '",
                                                       header[col], "': not a finite number: '", c,
                                                       "'"));
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
    if (text_col >= 0) {
      absl::string_view c = absl::StripAsciiWhitespace(cells[text_col]);
      if (c.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("csv line ", record_line, ", column '", header[text_col], "': empty"));
      }
      t.text.emplace_back(c);
    }
    // Ids: the `id` column, else the `timestamp` column's text.
    const int ids = id_col >= 0 ? id_col : time_col;
    if (ids >= 0) t.ids.emplace_back(absl::StripAsciiWhitespace(cells[ids]));
    if (time_col >= 0 && t.timestamp_problem.empty()) {
      int64_t ms = 0;
      if (ParseTimestamp(cells[time_col], &ms)) {
        t.timestamps_ms.push_back(ms);
      } else {
        t.timestamp_problem = absl::StrCat("csv line ", record_line, ", column 'timestamp': '",
                                           absl::StripAsciiWhitespace(cells[time_col]),
                                           "' is not a time (ISO 8601 or Unix seconds)");
        t.timestamps_ms.clear();
      }
    }
    ++t.rows;
  }
  if (t.rows == 0) return absl::InvalidArgumentError("csv: no data rows");
  return t;
}

absl::StatusOr<CsvTable> ReadCsvFile(const std::string& path, const std::string& text_column) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  auto t = ReadCsv(in, text_column);
  if (!t.ok())
    return absl::Status(t.status().code(), absl::StrCat(path, ": ", t.status().message()));
  return t;
}

}  // namespace aeserve::engine
