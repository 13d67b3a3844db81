// Alarms and incidents of a stream.
#include "server/incidents.h"

#include <atomic>

#include "absl/strings/str_cat.h"

namespace aeserve::server {
namespace {

// Incident ids: the server's start time and a counter, unique within a store's lifetime.
std::string NewIncidentId(int64_t now_ms) {
  static const int64_t epoch = now_ms;
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat("inc-", epoch, "-", counter.fetch_add(1) + 1);
}

}  // namespace

IncidentTracker::IncidentTracker(uint32_t k, uint32_t n) : k_(k), window_(n, 0) {}

void IncidentTracker::Feed(const IncidentSource& src, v1::ScoreResponse* r) {
  const int rows = r->anomalous_size();
  const int k_top = rows > 0 ? r->top_features_size() / rows : 0;
  const bool names = r->top_feature_names_size() == r->top_features_size();
  bool worse = false;  // the open incident got a new worst sample in this batch
  r->mutable_alarm()->Reserve(rows);
  for (int i = 0; i < rows; ++i) {
    const bool flagged = r->anomalous(i);
    const uint8_t leaving = window_[pos_];
    window_[pos_] = flagged;
    pos_ = (pos_ + 1) % window_.size();
    count_ = count_ - leaving + (flagged ? 1 : 0);
    const bool alarm = count_ >= k_;
    r->add_alarm(alarm);
    const uint64_t sample = next_sample_++;
    const std::string id = r->ids_size() > i ? r->ids(i) : "";
    const int64_t ts = r->timestamps_ms_size() > i ? r->timestamps_ms(i) : 0;
    if (alarm && !open_) {
      open_ = true;
      worse = false;
      incident_.Clear();
      incident_.set_id(NewIncidentId(src.now_unix_ms));
      incident_.set_model(src.model);
      incident_.set_entity(src.entity);
      incident_.set_stream_id(src.stream_id);
      incident_.set_first_sample(sample);
      incident_.set_first_sample_id(id);
      incident_.set_first_timestamp_ms(ts);
      incident_.set_opened_unix_ms(src.now_unix_ms);
      incident_.set_worst_score(-INFINITY);
    }
    if (!open_) continue;
    if (!alarm) {  // the alarm went down: the incident ends at the last sample it was up
      incident_.set_state(v1::INCIDENT_CLOSED);
      incident_.set_closed_unix_ms(src.now_unix_ms);
      *r->add_incidents() = incident_;
      open_ = false;
      worse = false;
      continue;
    }
    incident_.set_last_sample(sample);
    incident_.set_last_sample_id(id);
    incident_.set_last_timestamp_ms(ts);
    if (!flagged) continue;
    incident_.set_anomalous_samples(incident_.anomalous_samples() + 1);
    const float score = r->scores_size() > i ? r->scores(i) : r->errors(i);
    if (score > incident_.worst_score()) {
      incident_.set_worst_score(score);
      incident_.set_worst_sample(sample);
      incident_.set_worst_sample_id(id);
      incident_.set_worst_severity(r->severity_size() > i ? r->severity(i) : 1);
      incident_.clear_worst_top_features();
      for (int j = 0; j < k_top; ++j) {
        const int at = i * k_top + j;
        incident_.add_worst_top_features(names ? r->top_feature_names(at)
                                               : absl::StrCat(r->top_features(at)));
      }
      if (incident_.anomalous_samples() == 1) {  // the sample that raised the alarm
        v1::Incident opened = incident_;
        opened.set_state(v1::INCIDENT_OPENED);
        *r->add_incidents() = opened;
      } else {
        worse = true;
      }
    }
  }
  if (open_ && worse) {
    v1::Incident updated = incident_;
    updated.set_state(v1::INCIDENT_UPDATED);
    *r->add_incidents() = updated;
  }
}

std::unique_ptr<IncidentTracker> IncidentBook::Take(const std::string& key, uint32_t k,
                                                    uint32_t n) {
  {
    absl::MutexLock lock(&mu_);
    auto it = kept_.find(key);
    if (it != kept_.end()) {
      Kept kept = std::move(it->second);
      kept_.erase(it);
      if (now_() < kept.until && kept.tracker->k() == k && kept.tracker->n() == n) {
        return std::move(kept.tracker);
      }
    }
  }
  return std::make_unique<IncidentTracker>(k, n);
}

void IncidentBook::Keep(const std::string& key, std::unique_ptr<IncidentTracker> tracker) {
  if (resume_.count() <= 0 || max_kept_ == 0) return;
  const auto now = now_();
  const auto until = now + std::chrono::duration_cast<Clock::duration>(resume_);
  absl::MutexLock lock(&mu_);
  for (auto it = kept_.begin(); it != kept_.end();) {  // expired ones first
    it = now >= it->second.until ? kept_.erase(it) : std::next(it);
  }
  while (kept_.size() >= max_kept_) {  // then the one that would expire soonest
    auto oldest = kept_.begin();
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (it->second.until < oldest->second.until) oldest = it;
    }
    kept_.erase(oldest);
  }
  kept_[key] = Kept{std::move(tracker), until};
}

size_t IncidentBook::size() const {
  absl::MutexLock lock(&mu_);
  return kept_.size();
}

}  // namespace aeserve::server
