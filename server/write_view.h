// A remote-write WriteRequest read in place: every series' labels and samples, with the label
// strings pointing into the decoded body instead of being copied out one allocation each, as the
// generated protobuf parser does (that parse was a third of the ingest's CPU time). Reads the
// fields of proto/prometheus/remote.proto and skips every other field (exemplars, histograms,
// metadata), as a protobuf parser would. Label strings are not checked for UTF-8 here: the ingest
// checks the one it passes on (the entity label's value).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "prometheus/remote.pb.h"

namespace aeserve::server {

struct WriteView {
  using Label = std::pair<std::string_view, std::string_view>;  // name, value
  struct Sample {
    double value = 0;
    int64_t timestamp_ms = 0;
  };
  struct Series {
    uint32_t labels_begin = 0, labels_end = 0;  // into labels
    uint32_t samples_begin = 0, samples_end = 0;
  };
  // How many of each a request holds (counted before anything is allocated).
  struct Shape {
    size_t series = 0, labels = 0, samples = 0;
    size_t bytes() const {
      return series * sizeof(Series) + labels * sizeof(Label) + samples * sizeof(Sample);
    }
  };

  std::vector<Series> series;
  std::vector<Label> labels;
  std::vector<Sample> samples;

  absl::Span<const Label> LabelsOf(const Series& s) const {
    return absl::MakeConstSpan(labels).subspan(s.labels_begin, s.labels_end - s.labels_begin);
  }
  absl::Span<const Sample> SamplesOf(const Series& s) const {
    return absl::MakeConstSpan(samples).subspan(s.samples_begin, s.samples_end - s.samples_begin);
  }
};

// Checks that `bytes` is a well-formed WriteRequest and counts what it holds; INVALID_ARGUMENT
// naming the first fault (a truncated field, a length past its message, a group).
absl::Status MeasureWriteRequest(std::string_view bytes, WriteView::Shape* shape);
// Fills `out` from bytes that MeasureWriteRequest accepted, with its shape. `out` points into
// `bytes`, which must outlive it.
void DecodeWriteRequest(std::string_view bytes, const WriteView::Shape& shape, WriteView* out);
// A view of a parsed message (OTLP's points are converted to one), pointing into it.
WriteView ViewOf(const prometheus::WriteRequest& request);

// True when `s` is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool ValidUtf8(std::string_view s);

}  // namespace aeserve::server
