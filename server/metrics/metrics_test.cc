// Golden-text tests of the exposition format, the metric types, and the HTTP endpoint.
#include "server/metrics/metrics.h"

#include <zlib.h>

#include <cmath>
#include <thread>

#include "gtest/gtest.h"
#include "server/metrics/exposer.h"
#include "server/metrics/text_serializer.h"

namespace aeserve::metrics {
namespace {

TEST(TextSerializer, GoldenCounterGaugeHistogram) {
  Registry r;
  auto& requests =
      BuildCounter().Name("aeserve_requests_total").Help("Requests by code.").Register(r);
  requests.Add({{"rpc", "Score"}, {"code", "OK"}}).Increment(3);
  requests.Add({{"rpc", "Score"}, {"code", "NOT_FOUND"}}).Increment();
  auto& gauge = BuildGauge()
                    .Name("aeserve_threshold")
                    .Help("Threshold.")
                    .Labels({{"model", "m"}})
                    .Register(r);
  gauge.Add({{"version", "2"}}).Set(0.25);
  auto& hist = BuildHistogram().Name("aeserve_error").Help("Errors.").Register(r);
  Histogram& h = hist.Add({{"model", "m"}}, Histogram::BucketBoundaries{0.1, 1, 10});
  h.Observe(0.05);
  h.Observe(0.1);  // le is inclusive
  h.Observe(5);
  h.ObserveMany(std::vector<float>{0.5f, 20.f});
  const std::string expected =
      "# HELP aeserve_requests_total Requests by code.\n"
      "# TYPE aeserve_requests_total counter\n"
      "aeserve_requests_total{rpc=\"Score\",code=\"NOT_FOUND\"} 1\n"
      "aeserve_requests_total{rpc=\"Score\",code=\"OK\"} 3\n"
      "# HELP aeserve_threshold Threshold.\n"
      "# TYPE aeserve_threshold gauge\n"
      "aeserve_threshold{model=\"m\",version=\"2\"} 0.25\n"
      "# HELP aeserve_error Errors.\n"
      "# TYPE aeserve_error histogram\n"
      "aeserve_error_bucket{model=\"m\",le=\"0.1\"} 2\n"
      "aeserve_error_bucket{model=\"m\",le=\"1\"} 3\n"
      "aeserve_error_bucket{model=\"m\",le=\"10\"} 4\n"
      "aeserve_error_bucket{model=\"m\",le=\"+Inf\"} 5\n"
      "aeserve_error_sum{model=\"m\"} 25.65\n"
      "aeserve_error_count{model=\"m\"} 5\n";
  EXPECT_EQ(TextSerializer().Serialize(r.Collect()), expected);
}

TEST(TextSerializer, EscapingAndSpecialValues) {
  Registry r;
  auto& g = BuildGauge().Name("g").Help("back\\slash and\nnewline").Register(r);
  g.Add({{"path", "C:\\dir \"q\"\nx"}}).Set(NAN);
  g.Add({{"path", "inf"}}).Set(INFINITY);
  g.Add({{"path", "ninf"}}).Set(-INFINITY);
  g.Add({{"path", "small"}}).Set(1e-300);
  EXPECT_EQ(TextSerializer().Serialize(r.Collect()),
            "# HELP g back\\\\slash and\\nnewline\n"
            "# TYPE g gauge\n"
            "g{path=\"C:\\\\dir \\\"q\\\"\\nx\"} NaN\n"
            "g{path=\"inf\"} +Inf\n"
            "g{path=\"ninf\"} -Inf\n"
            "g{path=\"small\"} 1e-300\n");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(std::strtod(FormatValue(1.0 / 3).c_str(), nullptr), 1.0 / 3);
}

TEST(Metrics, CounterOnlyGoesUpAndFamiliesReuseChildren) {
  Registry r;
  auto& c = BuildCounter().Name("c_total").Help("h").Register(r);
  Counter& a = c.Add({{"k", "v"}});
  a.Increment(2);
  a.Increment(-5);
  EXPECT_EQ(a.Value(), 2);
  EXPECT_EQ(&c.Add({{"k", "v"}}), &a);
  c.Remove({{"k", "v"}});
  EXPECT_TRUE(r.Collect()[0].metric.empty());
}

TEST(Metrics, HistogramRejectsBadBounds) {
  EXPECT_THROW(Histogram(Histogram::BucketBoundaries{1, 1}), std::invalid_argument);
  EXPECT_THROW(Histogram(Histogram::BucketBoundaries{2, 1}), std::invalid_argument);
  EXPECT_THROW(Histogram(Histogram::BucketBoundaries{1, INFINITY}), std::invalid_argument);
  EXPECT_EQ(Histogram::ExponentialBuckets(1, 2, 4), (Histogram::BucketBoundaries{1, 2, 4, 8}));
}

TEST(Metrics, ConcurrentIncrementsAreAllCounted) {
  Registry r;
  Counter& c = BuildCounter().Name("n_total").Help("h").Register(r).Add({});
  Histogram& h =
      BuildHistogram().Name("h").Help("h").Register(r).Add({}, Histogram::BucketBoundaries{1});
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 100000; ++i) {
        c.Increment();
        h.Observe(0.5);
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(c.Value(), 400000);
  EXPECT_EQ(h.Collect().sample_count, 400000u);
}

TEST(Metrics, NameRules) {
  EXPECT_TRUE(IsValidMetricName("aeserve_requests_total"));
  EXPECT_FALSE(IsValidMetricName("9x"));
  EXPECT_FALSE(IsValidMetricName("a-b"));
  EXPECT_TRUE(IsValidLabelName("model"));
  EXPECT_FALSE(IsValidLabelName("__name"));
}

TEST(Exposer, GzipRoundTrips) {
  const std::string text(10000, 'x');
  const std::string z = Gzip(text);
  ASSERT_LT(z.size(), text.size());
  std::string back(text.size(), '\0');
  z_stream zs{};
  inflateInit2(&zs, 15 + 16);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(z.data()));
  zs.avail_in = z.size();
  zs.next_out = reinterpret_cast<Bytef*>(back.data());
  zs.avail_out = back.size();
  EXPECT_EQ(inflate(&zs, Z_FINISH), Z_STREAM_END);
  inflateEnd(&zs);
  EXPECT_EQ(back, text);
}

}  // namespace
}  // namespace aeserve::metrics
