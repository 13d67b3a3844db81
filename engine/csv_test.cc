// CSV reading: timestamps parsed to known answers (worked out with Python's datetime), a
// `timestamp` column kept as times, and one that is not a time left as ids with the reason.
#include "csv.h"

#include <sstream>

#include "gtest/gtest.h"

namespace aeserve::engine {
namespace {

int64_t Ms(absl::string_view text) {
  int64_t ms = -1;
  EXPECT_TRUE(ParseTimestamp(text, &ms)) << text;
  return ms;
}

TEST(Csv, TimestampsToKnownAnswers) {
  EXPECT_EQ(Ms("1970-01-01 00:00:00"), 0);
  EXPECT_EQ(Ms("2014-04-02 14:29:00"), 1396448940000);  // NAB's format
  EXPECT_EQ(Ms("2014-04-02T14:29"), 1396448940000);
  EXPECT_EQ(Ms("2024-01-31T14:05:00Z"), 1706709900000);
  EXPECT_EQ(Ms("2024-01-31 14:05:30.25+02:00"), 1706702730250);
  EXPECT_EQ(Ms("1969-12-31 23:00"), -3600000);
  EXPECT_EQ(Ms("2000-02-29"), 951782400000);
  EXPECT_EQ(Ms("1706709900"), 1706709900000);  // Unix seconds
  EXPECT_EQ(Ms(" 1706709900.25 "), 1706709900250);
  int64_t ms = 0;
  for (const char* bad : {"", "yesterday", "2024-13-01", "2024-01-31 25:00", "2024-01-31x",
                          "2024-01-31 14:05:00 UTC", "1e400", "nan"}) {
    EXPECT_FALSE(ParseTimestamp(bad, &ms)) << bad;
  }
}

TEST(Csv, TimestampColumnIsKeptAsTimesAndIds) {
  std::istringstream in("timestamp,value\n2014-04-02 14:29:00,1\n2014-04-02 14:34:00,2\n");
  auto t = ReadCsv(in);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->feature_names, std::vector<std::string>{"value"});
  EXPECT_EQ(t->timestamps_ms, (std::vector<int64_t>{1396448940000, 1396449240000}));
  EXPECT_EQ(t->ids[1], "2014-04-02 14:34:00");
  EXPECT_TRUE(t->timestamp_problem.empty());
}

TEST(Csv, TimestampColumnThatIsNotATimeStaysAnId) {
  std::istringstream in("timestamp,value\nmonday,1\ntuesday,2\n");
  auto t = ReadCsv(in);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->timestamps_ms.empty());
  EXPECT_NE(t->timestamp_problem.find("line 2"), std::string::npos) << t->timestamp_problem;
  EXPECT_EQ(t->ids[0], "monday");
}

}  // namespace
}  // namespace aeserve::engine
