// Series selectors: a hand-written parser for `[rate(]name{label op "value", ...}[)]`.
#include "server/ingest_selector.h"

#include <re2/re2.h>

#include "absl/strings/str_cat.h"

namespace aeserve::server {
namespace {

bool NameStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool NameChar(char c) { return NameStart(c) || std::isdigit(static_cast<unsigned char>(c)); }

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  void Space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool Take(std::string_view token) {
    Space();
    if (s_.substr(i_, token.size()) != token) return false;
    i_ += token.size();
    return true;
  }
  bool AtEnd() {
    Space();
    return i_ == s_.size();
  }
  // A metric name (colons allowed) or a label name.
  std::string Name(bool metric) {
    Space();
    const size_t start = i_;
    if (i_ < s_.size() && (NameStart(s_[i_]) || (metric && s_[i_] == ':')))
      ++i_;
    else
      return "";
    while (i_ < s_.size() && (NameChar(s_[i_]) || (metric && s_[i_] == ':'))) ++i_;
    return std::string(s_.substr(start, i_ - start));
  }
  absl::StatusOr<std::string> Quoted() {
    Space();
    if (i_ >= s_.size() || (s_[i_] != '"' && s_[i_] != '\'')) return Error("a quoted value");
    const char quote = s_[i_++];
    std::string out;
    while (i_ < s_.size() && s_[i_] != quote) {
      char c = s_[i_++];
      if (c == '\\' && i_ < s_.size()) {
        c = s_[i_++];
        if (c == 'n')
          c = '\n';
        else if (c == 't')
          c = '\t';
      }
      out.push_back(c);
    }
    if (i_ >= s_.size()) return Error(std::string("a closing ") + quote);
    ++i_;
    return out;
  }
  absl::Status Error(std::string_view expected) const {
    return absl::InvalidArgumentError(absl::StrCat("selector '", std::string(s_), "': expected ",
                                                   std::string(expected), " at position ", i_ + 1));
  }

 private:
  std::string_view s_;
  size_t i_ = 0;
};

std::string Quote(const std::string& v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out + "\"";
}

}  // namespace

absl::StatusOr<Selector> Selector::Parse(std::string_view text) {
  Parser p(text);
  Selector sel;
  // `rate(` is a function only when followed by a parenthesis; `rate` alone is a metric name.
  Parser probe(text);
  if (probe.Name(true) == "rate" && probe.Take("(")) {
    p.Name(true);
    p.Take("(");
    sel.rate_ = true;
  }
  sel.metric_ = p.Name(true);
  if (sel.metric_.empty()) return p.Error("a metric name");
  if (p.Take("{")) {
    while (!p.Take("}")) {
      Matcher m;
      m.name = p.Name(false);
      if (m.name.empty()) return p.Error("a label name or '}'");
      if (p.Take("=~"))
        m.op = Matcher::kRe;
      else if (p.Take("!~"))
        m.op = Matcher::kNre;
      else if (p.Take("!="))
        m.op = Matcher::kNe;
      else if (p.Take("="))
        m.op = Matcher::kEq;
      else
        return p.Error("one of = != =~ !~");
      auto value = p.Quoted();
      if (!value.ok()) return value.status();
      m.value = *std::move(value);
      if (m.op == Matcher::kRe || m.op == Matcher::kNre) {
        RE2::Options o;
        o.set_log_errors(false);
        auto re = std::make_shared<const RE2>(m.value, o);  // FullMatch anchors it
        if (!re->ok()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "selector '", std::string(text), "': bad regex for ", m.name, ": ", re->error()));
        }
        m.re = std::move(re);
      }
      sel.matchers_.push_back(std::move(m));
      if (!p.Take(",")) {
        if (!p.Take("}")) return p.Error("',' or '}'");
        break;
      }
    }
  }
  if (sel.rate_ && !p.Take(")")) return p.Error("')' closing rate(");
  if (!p.AtEnd()) return p.Error("the end");
  return sel;
}

bool Selector::Matches(SeriesLabels labels) const {
  for (const Matcher& m : matchers_) {
    std::string_view v;
    for (const auto& [name, value] : labels) {
      if (name == m.name) {
        v = value;
        break;
      }
    }
    switch (m.op) {
      case Matcher::kEq:
        if (v != m.value) return false;
        break;
      case Matcher::kNe:
        if (v == m.value) return false;
        break;
      case Matcher::kRe:
        if (!RE2::FullMatch(v, *m.re)) return false;
        break;
      case Matcher::kNre:
        if (RE2::FullMatch(v, *m.re)) return false;
        break;
    }
  }
  return true;
}

std::string Selector::str() const {
  std::string out = metric_;
  if (!matchers_.empty()) {
    out += "{";
    for (size_t i = 0; i < matchers_.size(); ++i) {
      static constexpr const char* kOps[] = {"=", "!=", "=~", "!~"};
      absl::StrAppend(&out, i > 0 ? "," : "", matchers_[i].name, kOps[matchers_[i].op],
                      Quote(matchers_[i].value));
    }
    out += "}";
  }
  return rate_ ? absl::StrCat("rate(", out, ")") : out;
}

}  // namespace aeserve::server
