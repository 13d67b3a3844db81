// Ingest row assembly and series selectors (gRPC-free), with answers worked out by hand.
#include "server/ingest_rows.h"

#include <cmath>

#include "gtest/gtest.h"
#include "server/ingest_selector.h"

namespace aeserve::testing {
namespace {

using server::IngestLimits;
using server::IngestRow;
using server::RowAssembler;
using server::Selector;
using server::SeriesLabels;
using Outcome = RowAssembler::Outcome;

constexpr int64_t kTol = 2000, kFlush = 30000;

std::vector<IngestRow> Take(RowAssembler& a) {
  std::vector<IngestRow> out;
  a.Take(&out);
  return out;
}

// Feature 0 a gauge, feature 1 a counter (rate), one entity, scrapes every 15 s.
TEST(RowAssembler, GaugesAndRatesFormRowsInTimeOrder) {
  RowAssembler a(2, kTol, kFlush, IngestLimits{});
  // t=0: the counter's first sample gives no rate.
  EXPECT_EQ(a.Add("h1", 7, 0, false, 0, 5, 0), Outcome::kAccepted);
  EXPECT_EQ(a.Add("h1", 8, 1, true, 0, 100, 0), Outcome::kFirstOfRate);
  EXPECT_TRUE(Take(a).empty());  // no earlier row to say how many series make a row
  // t=15 s: counter 100 -> 130 over 15 s = 2/s. Still nothing is 30 s old.
  a.Add("h1", 7, 0, false, 15000, 6, 1);
  a.Add("h1", 8, 1, true, 15000, 130, 1);
  EXPECT_TRUE(Take(a).empty());
  // t=30 s: row 0 is superseded (30 s newer sample) and leaves with the counter missing.
  a.Add("h1", 7, 0, false, 30000, 7, 2);
  std::vector<IngestRow> rows = Take(a);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].entity, "h1");
  EXPECT_EQ(rows[0].timestamp_ms, 0);
  EXPECT_EQ(rows[0].values[0], 5.0f);
  EXPECT_TRUE(std::isnan(rows[0].values[1]));
  // The counter's t=30 s sample (130 -> 160: 2/s) completes row 30 s, which takes row 15 s along.
  a.Add("h1", 8, 1, true, 30000, 160, 2);
  rows = Take(a);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].timestamp_ms, 15000);
  EXPECT_EQ(rows[0].values[0], 6.0f);
  EXPECT_FLOAT_EQ(rows[0].values[1], 2.0f);
  EXPECT_EQ(rows[1].timestamp_ms, 30000);
  EXPECT_EQ(rows[1].values[0], 7.0f);
  EXPECT_FLOAT_EQ(rows[1].values[1], 2.0f);
}

TEST(RowAssembler, CounterResetsCountFromZeroAndSeveralSeriesAreSummed) {
  RowAssembler a(1, kTol, kFlush, IngestLimits{});
  // Two CPUs' counters bound to one feature.
  a.Add("h", 1, 0, true, 0, 100, 0);
  a.Add("h", 2, 0, true, 0, 40, 0);
  // 10 s later: cpu1 reset to 50 (counts as 50 -> 5/s); cpu2 40 -> 70 (3/s). Sum 8/s.
  EXPECT_EQ(a.Add("h", 1, 0, true, 10000, 50, 0), Outcome::kAccepted);
  EXPECT_EQ(a.Add("h", 2, 0, true, 10000, 70, 0), Outcome::kAccepted);
  // Not superseded yet and no earlier row: waits.
  EXPECT_TRUE(Take(a).empty());
  std::vector<IngestRow> rows;
  a.Flush(30000, &rows);  // its first sample arrived at wall time 0
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_FLOAT_EQ(rows[0].values[0], 8.0f);
  // The next row is complete only with both series (the last row had 2).
  a.Add("h", 1, 0, true, 20000, 60, 1);  // +10 over 10 s = 1/s
  EXPECT_TRUE(Take(a).empty());
  a.Add("h", 2, 0, true, 20000, 90, 1);  // +20 over 10 s = 2/s
  rows = Take(a);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_FLOAT_EQ(rows[0].values[0], 3.0f);
}

TEST(RowAssembler, SamplesWithinToleranceShareARowAndLateOnesAreDropped) {
  RowAssembler a(2, kTol, kFlush, IngestLimits{});
  a.Add("h", 1, 0, false, 1000, 1, 0);
  a.Add("h", 2, 1, false, 2500, 2, 0);  // 1.5 s later: same row (tolerance 2 s)
  std::vector<IngestRow> rows;
  a.Flush(kFlush, &rows);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].timestamp_ms, 1000);
  EXPECT_EQ(rows[0].values[0], 1.0f);
  EXPECT_EQ(rows[0].values[1], 2.0f);
  // At or within tolerance of a row already handed out: late.
  EXPECT_EQ(a.Add("h", 1, 0, false, 500, 9, 1), Outcome::kLate);
  EXPECT_EQ(a.Add("h", 1, 0, false, 3000, 9, 1), Outcome::kLate);
  EXPECT_EQ(a.Add("h", 1, 0, false, 3001, 9, 1), Outcome::kAccepted);
  // A repeated counter sample (a retried request) is a duplicate; an older one is late.
  a.Add("h", 5, 1, true, 4000, 10, 1);
  EXPECT_EQ(a.Add("h", 5, 1, true, 4000, 10, 1), Outcome::kDuplicate);
  EXPECT_EQ(a.Add("h", 5, 1, true, 3500, 10, 1), Outcome::kLate);
}

TEST(RowAssembler, ASeriesCountsOnceInARow) {
  RowAssembler a(1, kTol, kFlush, IngestLimits{});
  EXPECT_EQ(a.Add("h", 1, 0, false, 1000, 3, 0), Outcome::kAccepted);
  // The same sample again (a retried request): dropped, not added.
  EXPECT_EQ(a.Add("h", 1, 0, false, 1000, 3, 0), Outcome::kDuplicate);
  // The same series 1 s later (scrapes faster than the tolerance): a row of its own.
  EXPECT_EQ(a.Add("h", 1, 0, false, 2000, 4, 0), Outcome::kAccepted);
  // Another series within tolerance joins the closest row it is not in yet.
  EXPECT_EQ(a.Add("h", 2, 0, false, 1900, 10, 0), Outcome::kAccepted);
  std::vector<IngestRow> rows;
  a.Flush(kFlush, &rows);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].values[0], 3.0f);
  EXPECT_EQ(rows[1].timestamp_ms, 2000);
  EXPECT_EQ(rows[1].values[0], 14.0f);
  // A counter's repeated sample is a duplicate; a rate beyond float range is invalid.
  RowAssembler r(1, kTol, kFlush, IngestLimits{});
  r.Add("h", 5, 0, true, 0, 0, 0);
  EXPECT_EQ(r.Add("h", 5, 0, true, 0, 0, 0), Outcome::kDuplicate);
  EXPECT_EQ(r.Add("h", 5, 0, true, 1000, 1e39, 0), Outcome::kInvalid);
}

TEST(RowAssembler, EntitiesAreIndependentAndBounded) {
  IngestLimits limits;
  limits.max_entities = 2;
  limits.max_series = 1;
  limits.max_pending_rows = 3;
  RowAssembler a(2, kTol, kFlush, limits);  // feature 1 never comes: no row is complete
  EXPECT_EQ(a.Add("a", 1, 0, false, 0, 1, 0), Outcome::kAccepted);
  EXPECT_EQ(a.Add("b", 2, 0, false, 0, 2, 0), Outcome::kAccepted);
  EXPECT_EQ(a.Add("c", 3, 0, false, 0, 3, 0), Outcome::kEntityLimit);
  EXPECT_EQ(a.entities(), 2u);
  EXPECT_EQ(a.Add("a", 4, 0, true, 0, 1, 0), Outcome::kFirstOfRate);
  EXPECT_EQ(a.Add("a", 5, 0, true, 0, 1, 0), Outcome::kSeriesLimit);
  // Entity a: rows at 0, 5, 10, 15 s (4 > 3 pending): the oldest leaves as the fourth starts,
  // before any Take (a single request cannot pile up rows).
  for (int64_t t : {5000, 10000, 15000}) {
    EXPECT_EQ(a.Add("a", 1, 0, false, t, 1, 0), Outcome::kAccepted);
  }
  // Full again: a sample older than every row held (and not near one) is late.
  EXPECT_EQ(a.Add("a", 1, 0, false, 2500, 1, 0), Outcome::kLate);
  EXPECT_EQ(a.Add("a", 1, 0, false, 20000, 1, 0), Outcome::kAccepted);  // 5 s leaves
  std::vector<IngestRow> rows = Take(a);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].entity, "a");
  EXPECT_EQ(rows[0].timestamp_ms, 0);
  EXPECT_EQ(rows[1].timestamp_ms, 5000);
  EXPECT_TRUE(std::isnan(rows[1].values[1]));  // the feature that never came
  EXPECT_EQ(a.rows_created(), 6u);             // b's, and a's 0, 5, 10, 15, 20 s
}

TEST(RowAssembler, RowsHeldAreBoundedInValues) {
  IngestLimits limits;
  limits.max_pending_values = 4;  // two rows of two features, all entities together
  RowAssembler a(2, kTol, kFlush, limits);
  EXPECT_EQ(a.Add("x", 1, 0, false, 0, 1, 0), Outcome::kAccepted);
  EXPECT_EQ(a.Add("y", 2, 0, false, 0, 1, 0), Outcome::kAccepted);
  EXPECT_EQ(a.Add("x", 1, 0, false, 5000, 1, 0), Outcome::kRowLimit);  // a third row
  EXPECT_EQ(a.Add("x", 3, 1, false, 0, 1, 0), Outcome::kAccepted);     // joins x's row
  std::vector<IngestRow> rows;
  a.Flush(kFlush, &rows);  // both rows leave (30 s after their first sample)
  EXPECT_EQ(rows.size(), 2u);
  EXPECT_EQ(a.Add("x", 1, 0, false, 5000, 1, kFlush), Outcome::kAccepted);  // room again
}

TEST(RowAssembler, IdleEntitiesAreForgottenAndFreeTheirSlot) {
  IngestLimits limits;
  limits.max_entities = 1;
  limits.idle_ms = 60000;
  RowAssembler a(1, kTol, kFlush, limits);
  EXPECT_EQ(a.Add("pod-1", 1, 0, false, 0, 1, 0), Outcome::kAccepted);
  EXPECT_EQ(a.Add("pod-2", 2, 0, false, 0, 1, 0), Outcome::kEntityLimit);
  std::vector<IngestRow> rows;
  std::vector<std::string> forgotten;
  a.Flush(59999, &rows, &forgotten);  // its row leaves (30 s), the entity stays (idle < 60 s)
  EXPECT_EQ(rows.size(), 1u);
  EXPECT_TRUE(forgotten.empty());
  a.Flush(60000, &rows, &forgotten);
  EXPECT_EQ(forgotten, std::vector<std::string>{"pod-1"});
  EXPECT_EQ(a.entities(), 0u);
  EXPECT_EQ(a.Add("pod-2", 2, 0, false, 70000, 1, 60001), Outcome::kAccepted);
}

TEST(Selector, ParsesMatchesAndWritesBack) {
  auto s = Selector::Parse(
      R"( rate( node_cpu_seconds_total{ mode = "user", cpu!="1", job=~"node|nx", x!~"a.*", } ) )");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->rate());
  EXPECT_EQ(s->metric(), "node_cpu_seconds_total");
  EXPECT_EQ(s->str(),
            R"(rate(node_cpu_seconds_total{mode="user",cpu!="1",job=~"node|nx",x!~"a.*"}))");
  std::vector<std::pair<std::string_view, std::string_view>> l = {
      {"__name__", "node_cpu_seconds_total"}, {"cpu", "0"}, {"job", "node"}, {"mode", "user"}};
  EXPECT_TRUE(s->Matches(l));
  l[1].second = "1";
  EXPECT_FALSE(s->Matches(l));  // cpu!="1"
  l[1].second = "0";
  l[2].second = "nodes";  // regexes are anchored: "node|nx" does not match "nodes"
  EXPECT_FALSE(s->Matches(l));
  l[2].second = "nx";
  l.emplace_back("x", "abc");
  EXPECT_FALSE(s->Matches(l));  // x!~"a.*"
  // An absent label is "": x!~"a.*" holds, mode="user" does not.
  auto plain = Selector::Parse("up");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->rate());
  EXPECT_TRUE(plain->Matches({{"__name__", "up"}}));
  auto empty_mode = Selector::Parse(R"(up{mode=""})");
  ASSERT_TRUE(empty_mode.ok());
  EXPECT_TRUE(empty_mode->Matches({{"__name__", "up"}}));
  // "rate" alone is a metric name.
  auto rate_metric = Selector::Parse("rate");
  ASSERT_TRUE(rate_metric.ok());
  EXPECT_FALSE(rate_metric->rate());
  EXPECT_EQ(rate_metric->metric(), "rate");
}

TEST(Selector, ErrorsNameWhatWasExpectedAndWhere) {
  struct Case {
    const char* text;
    const char* message;
  };
  for (const Case& c : std::vector<Case>{
           {"", "expected a metric name at position 1"},
           {"1abc", "expected a metric name at position 1"},
           {"up{mode}", "expected one of = != =~ !~ at position 8"},
           {"up{mode=user}", "expected a quoted value at position 9"},
           {"up{mode=\"user}", "expected a closing \" at position 15"},
           {"up{mode=\"a\" job=\"b\"}", "expected ',' or '}' at position 13"},
           {"rate(up", "expected ')' closing rate( at position 8"},
           {"up extra", "expected the end at position 4"},
           {"up{x=~\"(\"}", "bad regex for x"},
       }) {
    auto s = Selector::Parse(c.text);
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(c.message), std::string::npos)
        << c.text << ": " << s.status().message();
  }
}

}  // namespace
}  // namespace aeserve::testing
