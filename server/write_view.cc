// A remote-write WriteRequest read in place (the protobuf wire format, three levels deep).
#include "server/write_view.h"

#include <bit>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace aeserve::server {
namespace {

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLength = 2, kFixed32 = 5 };

// A cursor over one message's bytes. A fault stops it: every read after it fails, and fault()
// names the first one and the message being read.
class Reader {
 public:
  Reader(std::string_view bytes, const char* what)
      : p_(bytes.data()), end_(p_ + bytes.size()), what_(what) {}

  bool done() const { return p_ == end_; }
  const std::string& fault() const { return fault_; }

  bool Varint(uint64_t* v) {
    if (p_ != end_ && static_cast<uint8_t>(*p_) < 0x80) {  // one byte: most tags and lengths
      *v = static_cast<uint8_t>(*p_++);
      return true;
    }
    uint64_t out = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ == end_) return Fault("a varint is cut short");
      const uint8_t b = static_cast<uint8_t>(*p_++);
      out |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        *v = out;
        return true;
      }
    }
    return Fault("a varint is longer than 10 bytes");
  }
  // A field's tag: its number and wire type.
  bool Tag(uint32_t* field, uint32_t* wire) {
    uint64_t tag = 0;
    if (!Varint(&tag)) return false;
    if (tag >> 3 == 0 || tag >> 3 > 0x1fffffff) {
      return Fault(absl::StrCat("field number ", tag >> 3));
    }
    *field = static_cast<uint32_t>(tag >> 3);
    *wire = static_cast<uint32_t>(tag & 7);
    return true;
  }
  bool Bytes(std::string_view* out) {
    uint64_t n = 0;
    if (!Varint(&n)) return false;
    if (n > static_cast<uint64_t>(end_ - p_)) {
      return Fault(absl::StrCat("a field of ", n, " bytes runs past the end of its message"));
    }
    *out = std::string_view(p_, n);
    p_ += n;
    return true;
  }
  bool Fixed64(uint64_t* out) {
    if (end_ - p_ < 8) return Fault("a 64-bit field is cut short");
    std::memcpy(out, p_, 8);  // little-endian on the wire and here (checked below)
    p_ += 8;
    return true;
  }
  // Skips a field this reader does not use.
  bool Skip(uint32_t wire) {
    uint64_t v = 0;
    std::string_view s;
    switch (wire) {
      case kVarint:
        return Varint(&v);
      case kFixed64:
        return Fixed64(&v);
      case kLength:
        return Bytes(&s);
      case kFixed32:
        if (end_ - p_ < 4) return Fault("a 32-bit field is cut short");
        p_ += 4;
        return true;
      default:
        return Fault(absl::StrCat("wire type ", wire, " (groups are not used by remote write)"));
    }
  }

 private:
  bool Fault(std::string what) {
    fault_ = absl::StrCat("body is not a remote-write WriteRequest: in a ", what_, ", ", what);
    p_ = end_ = nullptr;
    return false;
  }

  const char* p_;
  const char* end_;
  const char* const what_;
  std::string fault_;
};

static_assert(std::endian::native == std::endian::little);

// Walks a WriteRequest, calling the visitor's Series(), Label(name, value), Sample(value, ms)
// and EndSeries() in order. Empty on success, else the fault.
template <typename Visitor>
std::string Walk(std::string_view bytes, Visitor& v) {
  Reader request(bytes, "WriteRequest");
  uint32_t field = 0, wire = 0;
  while (!request.done()) {
    if (!request.Tag(&field, &wire)) return request.fault();
    if (field != 1 || wire != kLength) {
      if (!request.Skip(wire)) return request.fault();
      continue;
    }
    std::string_view series_bytes;
    if (!request.Bytes(&series_bytes)) return request.fault();
    v.Series();
    Reader series(series_bytes, "TimeSeries");
    while (!series.done()) {
      std::string_view inner;
      if (!series.Tag(&field, &wire)) return series.fault();
      if ((field != 1 && field != 2) || wire != kLength) {
        if (!series.Skip(wire)) return series.fault();
        continue;
      }
      if (!series.Bytes(&inner)) return series.fault();
      if (field == 1) {
        Reader label(inner, "Label");
        std::string_view name, value;  // proto3: a field given twice, the last one counts
        while (!label.done()) {
          if (!label.Tag(&field, &wire)) return label.fault();
          const bool ok = (field == 1 || field == 2) && wire == kLength
                              ? label.Bytes(field == 1 ? &name : &value)
                              : label.Skip(wire);
          if (!ok) return label.fault();
        }
        v.Label(name, value);
      } else {
        Reader sample(inner, "Sample");
        uint64_t value_bits = 0, timestamp = 0;
        while (!sample.done()) {
          if (!sample.Tag(&field, &wire)) return sample.fault();
          const bool ok = field == 1 && wire == kFixed64  ? sample.Fixed64(&value_bits)
                          : field == 2 && wire == kVarint ? sample.Varint(&timestamp)
                                                          : sample.Skip(wire);
          if (!ok) return sample.fault();
        }
        double value = 0;
        std::memcpy(&value, &value_bits, sizeof value);
        v.Sample(value, static_cast<int64_t>(timestamp));  // int64: two's complement varint
      }
    }
    v.EndSeries();
  }
  return {};
}

struct Counter {
  WriteView::Shape shape;
  void Series() { ++shape.series; }
  void Label(std::string_view, std::string_view) { ++shape.labels; }
  void Sample(double, int64_t) { ++shape.samples; }
  void EndSeries() {}
};

struct Filler {
  WriteView* out;
  void Series() {
    WriteView::Series s;
    s.labels_begin = s.labels_end = static_cast<uint32_t>(out->labels.size());
    s.samples_begin = s.samples_end = static_cast<uint32_t>(out->samples.size());
    out->series.push_back(s);
  }
  void Label(std::string_view name, std::string_view value) {
    out->labels.emplace_back(name, value);
  }
  void Sample(double value, int64_t ms) { out->samples.push_back({value, ms}); }
  void EndSeries() {
    out->series.back().labels_end = static_cast<uint32_t>(out->labels.size());
    out->series.back().samples_end = static_cast<uint32_t>(out->samples.size());
  }
};

}  // namespace

absl::Status MeasureWriteRequest(std::string_view bytes, WriteView::Shape* shape) {
  // Indices are 32-bit: a body of up to 4 GiB cannot hold more entries than that.
  if (bytes.size() > UINT32_MAX) return absl::InvalidArgumentError("body over 4 GiB");
  Counter c;
  if (std::string fault = Walk(bytes, c); !fault.empty()) {
    return absl::InvalidArgumentError(fault);
  }
  *shape = c.shape;
  return absl::OkStatus();
}

void DecodeWriteRequest(std::string_view bytes, const WriteView::Shape& shape, WriteView* out) {
  out->series.clear();
  out->labels.clear();
  out->samples.clear();
  out->series.reserve(shape.series);
  out->labels.reserve(shape.labels);
  out->samples.reserve(shape.samples);
  Filler f{out};
  (void)Walk(bytes, f);  // measured first: cannot fail
}

WriteView ViewOf(const prometheus::WriteRequest& request) {
  WriteView out;
  Filler f{&out};
  for (const prometheus::TimeSeries& ts : request.timeseries()) {
    f.Series();
    for (const prometheus::Label& l : ts.labels()) f.Label(l.name(), l.value());
    for (const prometheus::Sample& s : ts.samples()) f.Sample(s.value(), s.timestamp());
    f.EndSeries();
  }
  return out;
}

bool ValidUtf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0, min = 0;
    if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;  // a continuation byte first, or 0xf8..0xff
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const uint8_t b = static_cast<uint8_t>(s[i + k]);
      if ((b & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

}  // namespace aeserve::server
