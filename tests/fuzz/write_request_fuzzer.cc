// libFuzzer target: the remote-write decoder (server/write_view) on any bytes never reads outside
// them, decodes exactly what it measured, and, wherever protobuf's own parser also accepts the
// bytes, reads the same series, labels and samples (bit for bit).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "google/protobuf/stubs/logging.h"
#include "server/write_view.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace aeserve::server;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  WriteView::Shape shape;
  if (!MeasureWriteRequest(bytes, &shape).ok()) return 0;
  WriteView v;
  DecodeWriteRequest(bytes, shape, &v);
  if (v.series.size() != shape.series || v.labels.size() != shape.labels ||
      v.samples.size() != shape.samples) {
    std::abort();
  }
  auto inside = [&](std::string_view s) {  // a view into the input (or empty)
    return s.empty() ||
           (s.data() >= bytes.data() && s.data() + s.size() <= bytes.data() + bytes.size());
  };
  for (const auto& [name, value] : v.labels) {
    if (!inside(name) || !inside(value)) std::abort();
  }
  google::protobuf::LogSilencer quiet;
  prometheus::WriteRequest parsed;
  if (!parsed.ParseFromString(bytes)) return 0;  // e.g. a label that is not UTF-8
  const WriteView p = ViewOf(parsed);
  if (p.series.size() != v.series.size() || p.labels != v.labels) std::abort();
  for (size_t i = 0; i < v.series.size(); ++i) {
    if (p.series[i].labels_end != v.series[i].labels_end ||
        p.series[i].samples_end != v.series[i].samples_end) {
      std::abort();
    }
  }
  if (p.samples.size() != v.samples.size()) std::abort();
  for (size_t i = 0; i < v.samples.size(); ++i) {
    if (std::memcmp(&p.samples[i].value, &v.samples[i].value, sizeof(double)) != 0 ||
        p.samples[i].timestamp_ms != v.samples[i].timestamp_ms) {
      std::abort();
    }
  }
  return 0;
}
