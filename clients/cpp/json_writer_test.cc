// JsonWriter known answers: nesting and commas, escaping, non-finite numbers.
#include "clients/cpp/json_writer.h"

#include <cmath>

#include "gtest/gtest.h"

namespace aeserve::aectl {
namespace {

TEST(JsonWriter, NestsWithCommasInTheRightPlaces) {
  JsonWriter w;
  w.BeginObject().Key("row").Int(3).Key("top").BeginArray();
  w.BeginObject().Key("feature").String("cpu").Key("error").Number(0.5).EndObject();
  w.BeginObject().Key("feature").String("mem").Key("error").Number(0.25).EndObject();
  w.EndArray().Key("empty").BeginArray().EndArray().Key("ok").Bool(true).EndObject();
  EXPECT_EQ(w.str(),
            R"({"row":3,"top":[{"feature":"cpu","error":0.5},{"feature":"mem","error":0.25}],)"
            R"("empty":[],"ok":true})");
}

TEST(JsonWriter, EscapesStringsAndWritesNullForNonFiniteNumbers) {
  JsonWriter w;
  w.BeginArray()
      .String("a\"b\\c\nd\x01")
      .Number(NAN)
      .Number(INFINITY)
      .Number(1.0 / 3, 3)
      .EndArray();
  EXPECT_EQ(w.str(), R"(["a\"b\\c\u000ad\u0001",null,null,0.333])");
}

}  // namespace
}  // namespace aeserve::aectl
