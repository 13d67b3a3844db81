// The remote-write decoder: a request written out byte by byte, agreement with protobuf's own
// parser (on a request with every kind of field, and on each of its prefixes), faults named, UTF-8.
#include "server/write_view.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "absl/status/statusor.h"
#include "google/protobuf/stubs/logging.h"
#include "gtest/gtest.h"

namespace aeserve::server {
namespace {

std::string Bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) s.push_back(static_cast<char>(c));
  return s;
}

absl::StatusOr<WriteView> Decode(const std::string& bytes) {
  WriteView::Shape shape;
  if (auto st = MeasureWriteRequest(bytes, &shape); !st.ok()) return st;
  WriteView v;
  DecodeWriteRequest(bytes, shape, &v);
  EXPECT_EQ(v.series.size(), shape.series);
  EXPECT_EQ(v.labels.size(), shape.labels);
  EXPECT_EQ(v.samples.size(), shape.samples);
  return v;
}

// Series by series: labels and samples equal (values bit for bit, NaN included).
void ExpectSame(const WriteView& a, const WriteView& b) {
  ASSERT_EQ(a.series.size(), b.series.size());
  for (size_t i = 0; i < a.series.size(); ++i) {
    const auto la = a.LabelsOf(a.series[i]), lb = b.LabelsOf(b.series[i]);
    ASSERT_EQ(la.size(), lb.size()) << "series " << i;
    for (size_t k = 0; k < la.size(); ++k) EXPECT_EQ(la[k], lb[k]) << "series " << i;
    const auto sa = a.SamplesOf(a.series[i]), sb = b.SamplesOf(b.series[i]);
    ASSERT_EQ(sa.size(), sb.size()) << "series " << i;
    for (size_t k = 0; k < sa.size(); ++k) {
      EXPECT_EQ(std::memcmp(&sa[k].value, &sb[k].value, sizeof(double)), 0) << "series " << i;
      EXPECT_EQ(sa[k].timestamp_ms, sb[k].timestamp_ms) << "series " << i;
    }
  }
}

TEST(WriteView, ReadsARequestWrittenOutByHand) {
  // WriteRequest{timeseries{labels{name:"a" value:"b"} samples{value:1.5 timestamp:300}}}
  const std::string label = Bytes({0x0a, 0x01, 'a', 0x12, 0x01, 'b'});
  // 1.5 = 0x3ff8000000000000, little-endian; 300 = 0b10_0101100 -> 0xac 0x02.
  const std::string sample = Bytes({0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, 0x10, 0xac, 0x02});
  const std::string series = Bytes({0x0a, 0x06}) + label + Bytes({0x12, 0x0c}) + sample;
  const std::string request = Bytes({0x0a, 0x16}) + series;
  ASSERT_EQ(request.size(), 24u);
  auto v = Decode(request);
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->series.size(), 1u);
  ASSERT_EQ(v->labels.size(), 1u);
  EXPECT_EQ(v->labels[0].first, "a");
  EXPECT_EQ(v->labels[0].second, "b");
  ASSERT_EQ(v->samples.size(), 1u);
  EXPECT_EQ(v->samples[0].value, 1.5);
  EXPECT_EQ(v->samples[0].timestamp_ms, 300);
  // The strings point into the request (no copies).
  EXPECT_EQ(v->labels[0].first.data(), request.data() + 6);
  // A negative timestamp is a ten-byte varint: -1 = 0xff x9 0x01.
  const std::string minus_one =
      Bytes({0x0a, 0x0f, 0x12, 0x0d, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
             0x01, 0x08, 0x07});  // then field 1 as a varint: a wrong wire type, skipped
  auto neg = Decode(minus_one);
  ASSERT_TRUE(neg.ok()) << neg.status();
  ASSERT_EQ(neg->samples.size(), 1u);
  EXPECT_EQ(neg->samples[0].timestamp_ms, -1);
  EXPECT_EQ(neg->samples[0].value, 0.0);
}

prometheus::WriteRequest Example() {
  prometheus::WriteRequest w;
  for (int i = 0; i < 3; ++i) {
    auto* ts = w.add_timeseries();
    auto* n = ts->add_labels();
    n->set_name("__name__");
    n->set_value("node_cpu_seconds_total");
    auto* l = ts->add_labels();
    l->set_name("instance");
    l->set_value("h\xc3\xa9-" + std::to_string(i));  // "hé-i"
    ts->add_labels()->set_name("empty");             // an empty value
    for (double v : {0.25, -3.0, std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity()}) {
      auto* s = ts->add_samples();
      s->set_value(v * (i + 1));
      s->set_timestamp(1700000000000 + 15000 * i);
    }
  }
  w.add_timeseries();  // a series with nothing in it
  return w;
}

TEST(WriteView, AgreesWithTheProtobufParserIncludingFieldsItSkips) {
  std::string bytes = Example().SerializeAsString();
  // Fields of newer remote-write messages: WriteRequest.metadata (3), and after it a fixed32 and
  // a varint of unknown numbers; a TimeSeries with exemplars (3) and a histogram (4).
  const std::string exemplar = Bytes({0x1a, 0x03, 0x11, 0x02, 0x03});
  const std::string histogram = Bytes({0x22, 0x02, 0x08, 0x05});
  const std::string extra_series =
      Bytes({0x0a, 0x0d, 0x0a, 0x02, 0x0a, 0x00}) + exemplar + histogram;
  bytes += Bytes({0x1a, 0x02, 0x08, 0x01, 0x25, 1, 2, 3, 4, 0x58, 0x96, 0x01}) + extra_series;
  prometheus::WriteRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  ASSERT_EQ(parsed.timeseries_size(), 5);
  auto v = Decode(bytes);
  ASSERT_TRUE(v.ok()) << v.status();
  ExpectSame(*v, ViewOf(parsed));
  EXPECT_EQ(v->LabelsOf(v->series[1])[1].second, "h\xc3\xa9-1");
  EXPECT_EQ(v->SamplesOf(v->series[2])[1].value, -9.0);
  EXPECT_TRUE(std::isnan(v->SamplesOf(v->series[0])[2].value));

  // Every prefix: accepted exactly when protobuf accepts it, and then read the same.
  int accepted = 0;
  google::protobuf::LogSilencer quiet;  // protobuf logs the strings it finds cut short
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::string prefix = bytes.substr(0, n);
    prometheus::WriteRequest p;
    const bool ok = p.ParseFromString(prefix);
    auto w = Decode(prefix);
    ASSERT_EQ(w.ok(), ok) << "prefix of " << n << " bytes: " << w.status();
    if (!ok) continue;
    ++accepted;
    ExpectSame(*w, ViewOf(p));
  }
  EXPECT_GE(accepted, 5);  // the empty request, and one ending after each whole series
}

TEST(WriteView, NamesTheFault) {
  struct Case {
    std::string bytes;
    const char* message;
  };
  const Case cases[] = {
      {Bytes({0x0a, 0x05, 0x0a}), "in a WriteRequest, a field of 5 bytes runs past the end"},
      {Bytes({0x0a, 0x02, 0x0a, 0x05}), "in a TimeSeries, a field of 5 bytes runs past the end"},
      {Bytes({0x0a, 0x04, 0x0a, 0x02, 0x0a, 0x07}), "in a Label, a field of 7 bytes"},
      {Bytes({0x0a, 0x04, 0x12, 0x02, 0x09, 0x00}), "in a Sample, a 64-bit field is cut short"},
      {Bytes({0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}),
       "a varint is longer than 10 bytes"},
      {Bytes({0x08, 0x80}), "a varint is cut short"},
      {Bytes({0x0b}), "wire type 3 (groups are not used by remote write)"},
      {Bytes({0x02}), "field number 0"},
      {Bytes({0x0d, 0x01}), "a 32-bit field is cut short"},
  };
  for (const Case& c : cases) {
    WriteView::Shape shape;
    const absl::Status st = MeasureWriteRequest(c.bytes, &shape);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_NE(st.message().find(c.message), std::string_view::npos) << st.message();
    prometheus::WriteRequest p;
    EXPECT_FALSE(p.ParseFromString(c.bytes)) << c.message;  // protobuf refuses each too
  }
}

TEST(WriteView, ShapeCountsWhatTheViewHolds) {
  prometheus::WriteRequest w = Example();
  const std::string bytes = w.SerializeAsString();
  WriteView::Shape shape;
  ASSERT_TRUE(MeasureWriteRequest(bytes, &shape).ok());
  EXPECT_EQ(shape.series, 4u);
  EXPECT_EQ(shape.labels, 9u);
  EXPECT_EQ(shape.samples, 12u);
  EXPECT_EQ(shape.bytes(), 4 * sizeof(WriteView::Series) + 9 * sizeof(WriteView::Label) +
                               12 * sizeof(WriteView::Sample));
}

TEST(WriteView, Utf8) {
  EXPECT_TRUE(ValidUtf8(""));
  EXPECT_TRUE(ValidUtf8("host-1:9100"));
  EXPECT_TRUE(ValidUtf8("\xc3\xa9"));           // é, 2 bytes
  EXPECT_TRUE(ValidUtf8("\xe2\x82\xac"));       // €, 3 bytes
  EXPECT_TRUE(ValidUtf8("\xf0\x9f\x98\x80"));   // U+1F600, 4 bytes
  EXPECT_TRUE(ValidUtf8("\xf4\x8f\xbf\xbf"));   // U+10FFFF, the last code point
  EXPECT_FALSE(ValidUtf8("\xc0\x80"));          // overlong NUL
  EXPECT_FALSE(ValidUtf8("\xe0\x80\xaf"));      // overlong '/'
  EXPECT_FALSE(ValidUtf8("\xed\xa0\x80"));      // a surrogate, U+D800
  EXPECT_FALSE(ValidUtf8("\xf4\x90\x80\x80"));  // U+110000
  EXPECT_FALSE(ValidUtf8("\xe2\x82"));          // cut short
  EXPECT_FALSE(ValidUtf8("a\x80"));             // a continuation byte alone
  EXPECT_FALSE(ValidUtf8("\xc3\x28"));          // not followed by a continuation byte
  EXPECT_FALSE(ValidUtf8("\xff"));
}

}  // namespace
}  // namespace aeserve::server
