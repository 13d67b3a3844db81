// Series selectors of ingest bindings: which incoming series feed one feature of a model.
// Syntax (a small subset of PromQL's, no engine behind it):
//   metric_name{label="value", label!="value", label=~"regex", label!~"regex"}
//   rate(metric_name{...})   -- a counter, turned into per-second increase server-side
// The braces are optional; regexes are RE2, anchored at both ends as in PromQL.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace re2 {
class RE2;
}

namespace aeserve::server {

// A series' labels as remote write sends them: name/value pairs, `__name__` among them.
using SeriesLabels = absl::Span<const std::pair<std::string_view, std::string_view>>;

class Selector {
 public:
  // INVALID_ARGUMENT naming the position and what was expected.
  static absl::StatusOr<Selector> Parse(std::string_view text);

  const std::string& metric() const { return metric_; }
  bool rate() const { return rate_; }
  // True when every matcher holds (a label that is absent has the value "").
  bool Matches(SeriesLabels labels) const;
  // The selector written back in canonical form.
  std::string str() const;

 private:
  struct Matcher {
    enum Op { kEq, kNe, kRe, kNre } op;
    std::string name, value;
    std::shared_ptr<const re2::RE2> re;  // kRe / kNre
  };
  std::string metric_;
  bool rate_ = false;
  std::vector<Matcher> matchers_;
};

}  // namespace aeserve::server
