// libFuzzer target: any label value and help text give one well-formed exposition line each, and
// unescaping the label value gives back the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "server/metrics/metrics.h"
#include "server/metrics/text_serializer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace aeserve::metrics;
  const std::string value(reinterpret_cast<const char*>(data), size);
  const std::string escaped = EscapeLabelValue(value);
  // Unescape and compare.
  std::string back;
  for (size_t i = 0; i < escaped.size(); ++i) {
    if (escaped[i] == '\n') std::abort();  // a raw newline would end the line
    if (escaped[i] == '"') std::abort();   // a raw quote would end the value
    if (escaped[i] == '\\') {
      if (++i >= escaped.size()) std::abort();
      back += escaped[i] == 'n' ? '\n' : escaped[i];
    } else {
      back += escaped[i];
    }
  }
  if (back != value) std::abort();
  Registry r;
  BuildGauge().Name("g").Help(value).Register(r).Add({{"l", value}}).Set(1);
  const std::string text = TextSerializer().Serialize(r.Collect());
  size_t lines = 0;
  for (char c : text) lines += c == '\n';
  if (lines != 3) std::abort();  // HELP, TYPE, the sample
  return 0;
}
