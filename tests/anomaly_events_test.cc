// Anomaly events (server/anomaly_events.h): sizes known at once, events serialized on first use,
// with the top features of each row worked out by hand.
#include "server/anomaly_events.h"

#include <thread>

#include "gtest/gtest.h"
#include "tests/test_models.h"

namespace aeserve::testing {
namespace {

using server::EventBatch;
using server::FlaggedRows;

class AnomalyEventsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    v1::ModelFile file = TrainModel(v1::MODEL_KIND_PLAIN, 1, {8}, 2);
    file.set_critical_threshold_value(5.0);  // scores above 5 are critical (severity 2)
    auto m = engine::Model::Create(file);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = *m;
  }

  // Three flagged rows with scores 2, 6 and 9; row i's feature errors are 0 except three of
  // them, so its top features are known.
  FlaggedRows Rows() const {
    FlaggedRows f;
    f.handle.model = model_;
    f.handle.name = "m";
    f.handle.version = 4;
    f.stream_id = "s1";
    f.server_time_ms = 1234;
    f.threshold = 1.5f;
    f.scores = {2, 6, 9};
    f.errors = {0.2f, 0.6f, 0.9f};
    f.p_values = {0.01f, 0.001f, 0.0001f};
    f.ids = {"a", "b", "c"};
    f.timestamps_ms = {10, 20, 30};
    f.values.assign(3 * kFeatures, 1.f);
    f.feature_errors.assign(3 * kFeatures, 0.f);
    const int top[3][3] = {{7, 2, 11}, {0, 1, 2}, {5, 9, 3}};
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) f.feature_errors[i * kFeatures + top[i][j]] = 3.f - j;
    }
    // A tie with the third feature of row 2 (error 1): the lower index ranks first.
    f.feature_errors[2 * kFeatures + 1] = 1.f;
    return f;
  }

  static v1::AnomalyEvent Parse(const grpc::Slice& s) {
    v1::AnomalyEvent e;
    EXPECT_TRUE(e.ParseFromArray(s.begin(), static_cast<int>(s.size())));
    return e;
  }

  std::shared_ptr<const engine::Model> model_;
};

TEST_F(AnomalyEventsTest, SizesAreKnownBeforeAnythingIsSerialized) {
  EventBatch b(Rows());
  EXPECT_EQ(b.model(), "m");
  EXPECT_EQ(b.size(EventBatch::kAll), 3u);
  EXPECT_EQ(b.size(EventBatch::kCritical), 2u);
  EXPECT_EQ(b.size(EventBatch::kIncidents), 0u);
  EXPECT_FALSE(b.built());
}

TEST_F(AnomalyEventsTest, EventsCarryEachRowsTopFeatures) {
  EventBatch b(Rows());
  const auto& all = b.events(EventBatch::kAll);
  EXPECT_TRUE(b.built());
  ASSERT_EQ(all.size(), 3u);
  const std::vector<std::vector<uint32_t>> want = {{7, 2, 11}, {0, 1, 2}, {5, 9, 1}};
  for (size_t i = 0; i < 3; ++i) {
    const v1::AnomalyEvent e = Parse(all[i]);
    EXPECT_EQ(e.model(), "m");
    EXPECT_EQ(e.version(), 4u);
    EXPECT_EQ(e.stream_id(), "s1");
    EXPECT_EQ(e.server_time_ms(), 1234);
    EXPECT_EQ(e.sample_id(), std::string(1, static_cast<char>('a' + i)));
    EXPECT_EQ(e.timestamp_ms(), 10 * static_cast<int64_t>(i + 1));
    EXPECT_FLOAT_EQ(e.threshold(), 1.5f);
    EXPECT_EQ(e.severity(), i == 0 ? 1u : 2u);
    ASSERT_EQ(e.top_features_size(), 3);
    for (int j = 0; j < 3; ++j) {
      EXPECT_EQ(e.top_features(j), want[i][j]) << "row " << i;
      EXPECT_EQ(e.top_feature_names(j), "m" + std::to_string(want[i][j]));
    }
    EXPECT_FLOAT_EQ(e.top_feature_errors(0), 3.f);
  }
  // The critical list holds the rows scored above 5, as the same serialized events.
  const auto& critical = b.events(EventBatch::kCritical);
  ASSERT_EQ(critical.size(), 2u);
  EXPECT_EQ(Parse(critical[0]).sample_id(), "b");
  EXPECT_EQ(Parse(critical[1]).sample_id(), "c");
  EXPECT_EQ(critical[0].begin(), all[1].begin()) << "shared, not copied";
}

TEST_F(AnomalyEventsTest, IncidentChangesAreTheirOwnList) {
  FlaggedRows f;
  f.handle.model = model_;
  f.handle.name = "m";
  f.incidents.resize(2);
  f.incidents[0].set_id("i1");
  f.incidents[1].set_id("i2");
  EventBatch b(std::move(f));
  EXPECT_EQ(b.size(EventBatch::kAll), 0u);
  EXPECT_EQ(b.size(EventBatch::kIncidents), 2u);
  const auto& events = b.events(EventBatch::kIncidents);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(Parse(events[1]).incident().id(), "i2");
}

TEST_F(AnomalyEventsTest, RowsWithoutFeatureErrorsGiveNoEvents) {
  FlaggedRows f = Rows();
  f.feature_errors.clear();  // scored before the first watcher subscribed
  EventBatch b(std::move(f));
  EXPECT_EQ(b.size(EventBatch::kAll), 0u);
  EXPECT_TRUE(b.events(EventBatch::kAll).empty());
}

TEST_F(AnomalyEventsTest, ConcurrentFirstUsesBuildOnce) {
  EventBatch b(Rows());
  std::vector<const grpc::Slice*> first(8);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < first.size(); ++t) {
    threads.emplace_back([&, t] { first[t] = &b.events(EventBatch::kAll).front(); });
  }
  for (auto& t : threads) t.join();
  for (const grpc::Slice* s : first) EXPECT_EQ(s, first[0]);
}

}  // namespace
}  // namespace aeserve::testing
