// Alarms and incidents of a stream, worked out by hand (no gRPC): k-of-n debounce, incident
// opened / updated / closed with its first and last sample, count and worst sample, and a named
// stream's state kept across a reconnect.
#include "server/incidents.h"

#include "gtest/gtest.h"

namespace aeserve::server {
namespace {

v1::ScoreResponse Batch(const std::vector<int>& flags, const std::vector<float>& scores,
                        const std::string& id_prefix) {
  v1::ScoreResponse r;
  for (size_t i = 0; i < flags.size(); ++i) {
    r.add_anomalous(flags[i] != 0);
    r.add_scores(scores[i]);
    r.add_errors(scores[i]);
    r.add_ids(id_prefix + std::to_string(i));
    r.add_top_features(static_cast<uint32_t>(i % 3));
    r.add_top_feature_names("f" + std::to_string(i % 3));
  }
  r.set_num_samples(static_cast<uint32_t>(flags.size()));
  return r;
}

// k = 2 of n = 3. Flags over two batches: 0 1 0 1 1 | 0 0 0 1 0.
// Sample:                                 0 1 2 3 4 | 5 6 7 8 9
// Flagged in the last 3 (count):          0 1 1 2 2 | 2 1 0 1 1
// Alarm (count >= 2):                     - - - X X | X - - - -
// One incident: opened at sample 3 (worst so far: 3), updated in batch 1 by sample 4 (a higher
// score), last up at sample 5 and closed at sample 6 in batch 2: 2 flagged samples (3, 4).
TEST(IncidentTracker, DebounceOpensUpdatesAndClosesOneIncident) {
  IncidentTracker t(2, 3);
  IncidentSource src{"m", "", "s1", 1000};
  v1::ScoreResponse a = Batch({0, 1, 0, 1, 1}, {0.1f, 2.f, 0.2f, 3.f, 5.f}, "a");
  t.Feed(src, &a);
  EXPECT_EQ(std::vector<bool>(a.alarm().begin(), a.alarm().end()),
            (std::vector<bool>{false, false, false, true, true}));
  ASSERT_EQ(a.incidents_size(), 2);
  const v1::Incident& opened = a.incidents(0);
  EXPECT_EQ(opened.state(), v1::INCIDENT_OPENED);
  EXPECT_EQ(opened.first_sample(), 3u);
  EXPECT_EQ(opened.first_sample_id(), "a3");
  EXPECT_EQ(opened.anomalous_samples(), 1u);
  EXPECT_EQ(opened.worst_score(), 3.f);
  EXPECT_EQ(opened.model(), "m");
  EXPECT_EQ(opened.stream_id(), "s1");
  const v1::Incident& updated = a.incidents(1);
  EXPECT_EQ(updated.state(), v1::INCIDENT_UPDATED);
  EXPECT_EQ(updated.id(), opened.id());
  EXPECT_EQ(updated.worst_sample(), 4u);
  EXPECT_EQ(updated.worst_score(), 5.f);
  EXPECT_EQ(updated.worst_top_features(0), "f1");  // sample 4: 4 % 3 = 1
  EXPECT_EQ(updated.last_sample(), 4u);
  EXPECT_EQ(updated.anomalous_samples(), 2u);
  EXPECT_TRUE(t.open());

  v1::ScoreResponse b = Batch({0, 0, 0, 1, 0}, {0.1f, 0.1f, 0.1f, 9.f, 0.1f}, "b");
  t.Feed(IncidentSource{"m", "", "s1", 2000}, &b);
  EXPECT_EQ(std::vector<bool>(b.alarm().begin(), b.alarm().end()),
            (std::vector<bool>{true, false, false, false, false}));
  ASSERT_EQ(b.incidents_size(), 1);
  const v1::Incident& closed = b.incidents(0);
  EXPECT_EQ(closed.state(), v1::INCIDENT_CLOSED);
  EXPECT_EQ(closed.id(), opened.id());
  EXPECT_EQ(closed.first_sample(), 3u);
  EXPECT_EQ(closed.last_sample(), 5u);
  EXPECT_EQ(closed.last_sample_id(), "b0");
  EXPECT_EQ(closed.anomalous_samples(), 2u);
  EXPECT_EQ(closed.worst_score(), 5.f);
  EXPECT_EQ(closed.opened_unix_ms(), 1000);
  EXPECT_EQ(closed.closed_unix_ms(), 2000);
  EXPECT_FALSE(t.open());
  EXPECT_EQ(t.samples(), 10u);
}

// k = 1 of n = 1: every flagged sample is its own incident; one that opens and closes inside a
// batch gives both changes, in order.
TEST(IncidentTracker, OpenAndCloseInOneBatch) {
  IncidentTracker t(1, 1);
  v1::ScoreResponse r = Batch({1, 0, 1, 1, 0}, {4, 0, 1, 2, 0}, "x");
  t.Feed(IncidentSource{"m", "e", "", 5}, &r);
  // open, close, open, close: sample 3 is worse than sample 2, but the incident closes in the same
  // batch, so its CLOSED change carries it and no UPDATED is sent.
  ASSERT_EQ(r.incidents_size(), 4);
  EXPECT_EQ(r.incidents(0).state(), v1::INCIDENT_OPENED);
  EXPECT_EQ(r.incidents(1).state(), v1::INCIDENT_CLOSED);
  EXPECT_EQ(r.incidents(1).last_sample(), 0u);
  EXPECT_EQ(r.incidents(2).state(), v1::INCIDENT_OPENED);
  EXPECT_NE(r.incidents(2).id(), r.incidents(0).id());
  EXPECT_EQ(r.incidents(3).state(), v1::INCIDENT_CLOSED);
  EXPECT_EQ(r.incidents(3).anomalous_samples(), 2u);
  EXPECT_EQ(r.incidents(3).worst_sample(), 3u);
  EXPECT_EQ(r.incidents(3).entity(), "e");
}

TEST(IncidentBook, ANamedStreamResumesWithinTheWindowOnly) {
  auto now = std::chrono::steady_clock::now();
  IncidentBook book(std::chrono::seconds(300), 100, [&] { return now; });
  auto t = book.Take("k", 2, 3);
  v1::ScoreResponse r = Batch({1, 1}, {1, 2}, "a");
  t->Feed(IncidentSource{"m", "", "s", 1}, &r);
  ASSERT_TRUE(t->open());
  book.Keep("k", std::move(t));
  EXPECT_EQ(book.size(), 1u);
  auto other = book.Take("k", 3, 3);  // other debounce: a fresh tracker (and the kept one is gone)
  EXPECT_FALSE(other->open());
  EXPECT_EQ(book.size(), 0u);
  t = book.Take("k", 2, 3);
  r = Batch({1, 1}, {1, 2}, "a");
  t->Feed(IncidentSource{"m", "", "s", 1}, &r);
  book.Keep("k", std::move(t));
  auto resumed = book.Take("k", 2, 3);
  EXPECT_TRUE(resumed->open());
  EXPECT_EQ(resumed->samples(), 2u);
  book.Keep("k", std::move(resumed));
  now += std::chrono::seconds(301);  // past the resume window
  EXPECT_FALSE(book.Take("k", 2, 3)->open());
}

TEST(IncidentBook, KeepsAtMostItsBound) {
  IncidentBook book(std::chrono::seconds(60), 3);
  for (int i = 0; i < 5; ++i)
    book.Keep("k" + std::to_string(i), std::make_unique<IncidentTracker>(1, 1));
  EXPECT_EQ(book.size(), 3u);
}

}  // namespace
}  // namespace aeserve::server
