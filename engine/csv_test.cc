// CSV reading: timestamps parsed to known answers (worked out with Python's datetime), a
// `timestamp` column kept as times, and one that is not a time left as ids with the reason.
#include "engine/csv.h"

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
  EXPECT_EQ(Ms("1706709900000"), 1706709900000);  // 13 digits: milliseconds
  EXPECT_EQ(Ms("2024-02-29"), 1709164800000);     // a leap day
  int64_t ms = 0;
  for (const char* bad : {"", "yesterday", "2024-13-01", "2024-01-31 25:00", "2024-01-31x",
                          "2024-01-31 14:05:00 UTC", "1e400", "nan", "2024-02-30", "2023-02-29",
                          "2024-01-31 14:05+05:", "2024-01-31 14:05+99:00", "1e16"}) {
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

TEST(Csv, TimestampAfterAnIdColumn) {
  std::istringstream in("id,timestamp,value\nh1,2014-04-02 14:29:00,1\n");
  auto t = ReadCsv(in);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->feature_names, std::vector<std::string>{"value"});
  EXPECT_EQ(t->timestamps_ms, std::vector<int64_t>{1396448940000});
  EXPECT_EQ(t->ids, std::vector<std::string>{"h1"});
}

TEST(Csv, TimestampColumnThatIsNotATimeStaysAnId) {
  std::istringstream in("timestamp,value\nmonday,1\ntuesday,2\n");
  auto t = ReadCsv(in);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->timestamps_ms.empty());
  EXPECT_NE(t->timestamp_problem.find("line 2"), std::string::npos) << t->timestamp_problem;
  EXPECT_EQ(t->ids[0], "monday");
}

absl::StatusOr<CsvTable> Read(const std::string& text) {
  std::istringstream in(text);
  return ReadCsv(in);
}

TEST(Csv, QuotedFieldsAsRfc4180) {
  auto t = Read("\"a\",\"b, with comma\",\"label\"\r\n1,2,0\r\n\"3\",4,1\r\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->feature_names, (std::vector<std::string>{"a", "b, with comma"}));
  EXPECT_EQ(t->values, (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(t->labels, (std::vector<float>{0, 1}));  // the quoted "label" is the label
  // Doubled quotes and a line break inside a quoted id; line numbers count physical lines.
  t = Read("id,x\n\"say \"\"hi\"\"\",1\n\"two\nlines\",2\nthree,oops\n");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("csv line 5, column 'x'"), std::string::npos) << t.status();
  t = Read("id,x\n\"say \"\"hi\"\"\",1\n\"two\nlines\",2\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->ids, (std::vector<std::string>{"say \"hi\"", "two\nlines"}));
  EXPECT_EQ(Read("a,b\n\"1,2\n").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Csv, AFileWithoutAHeaderIsRefusedWithAHint) {
  auto t = Read("0.5,1.25,3\n0.1,0.2,0.3\n");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("needs a header row"), std::string::npos) << t.status();
  // Column positions as names (pandas' unnamed columns) are a header.
  t = Read("0,1,2\n0.5,1.25,3\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->feature_names, (std::vector<std::string>{"0", "1", "2"}));
}

TEST(Csv, AnotherSeparatorIsNamed) {
  auto t = Read("a;b;label\n1;2;0\n");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("separated by it"), std::string::npos) << t.status();
  EXPECT_NE(t.status().message().find("';'"), std::string::npos) << t.status();
  EXPECT_FALSE(Read("a\tb\n1\t2\n").ok());
}

// An entity column is kept as text, one name per row, and is not a feature.
TEST(Csv, ATextColumnIsKeptOutOfTheFeatures) {
  std::istringstream in("cpu,host,mem\n1,web-1,2\n3, db:9100 ,4\n");
  auto t = ReadCsv(in, "host");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->feature_names, (std::vector<std::string>{"cpu", "mem"}));
  EXPECT_EQ(t->values, (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(t->text, (std::vector<std::string>{"web-1", "db:9100"}));
  std::istringstream missing("cpu,mem\n1,2\n");
  EXPECT_NE(ReadCsv(missing, "host").status().message().find("no column 'host'"),
            std::string::npos);
  std::istringstream empty("cpu,host\n1,\n");
  EXPECT_NE(ReadCsv(empty, "host").status().message().find("csv line 2, column 'host': empty"),
            std::string::npos);
}

}  // namespace
}  // namespace aeserve::engine
