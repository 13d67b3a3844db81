// Rows from ingested samples (see ingest_rows.h for the rules).
#include "server/ingest_rows.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iterator>
#include <limits>

namespace aeserve::server {
namespace {

constexpr size_t kMaxSpareRows = 1024;

}  // namespace

RowAssembler::RowAssembler(size_t num_features, int64_t tolerance_ms, int64_t flush_ms,
                           IngestLimits limits)
    : num_features_(num_features),
      tolerance_ms_(tolerance_ms),
      flush_ms_(flush_ms),
      limits_(limits) {}

RowAssembler::Outcome RowAssembler::Add(std::string_view entity, uint64_t series, size_t feature,
                                        bool rate, int64_t timestamp_ms, double value,
                                        int64_t now_ms) {
  auto it = entities_.find(absl::string_view(entity.data(), entity.size()));
  if (it == entities_.end()) {
    if (entities_.size() >= limits_.max_entities) return Outcome::kEntityLimit;
    it = entities_.emplace(std::string(entity), Entity{}).first;
    it->second.expected.assign(num_features_, 0);
  }
  Entity& e = it->second;
  if (e.any_out && timestamp_ms <= e.last_out_ms + tolerance_ms_) return Outcome::kLate;
  double v = value;
  if (rate) {
    auto r = rates_.find(series);
    if (r == rates_.end()) {
      if (rates_.size() >= limits_.max_series) return Outcome::kSeriesLimit;
      rates_.emplace(series, RateState{timestamp_ms, value, now_ms});
      e.seen_ms = now_ms;
      return Outcome::kFirstOfRate;
    }
    if (timestamp_ms == r->second.timestamp_ms) return Outcome::kDuplicate;
    if (timestamp_ms < r->second.timestamp_ms) return Outcome::kLate;
    const double increase = value >= r->second.value ? value - r->second.value : value;
    v = increase * 1000.0 / static_cast<double>(timestamp_ms - r->second.timestamp_ms);
    r->second = RateState{timestamp_ms, value, now_ms};
    if (!(std::fabs(v) <= std::numeric_limits<float>::max())) return Outcome::kInvalid;
  }
  // The closest row within tolerance that this series has not contributed to yet.
  auto row = e.rows.end();
  for (auto c = e.rows.lower_bound(timestamp_ms - tolerance_ms_);
       c != e.rows.end() && c->first <= timestamp_ms + tolerance_ms_; ++c) {
    if (c->second.series.contains(series)) {
      if (c->first == timestamp_ms) return Outcome::kDuplicate;
      continue;
    }
    if (row == e.rows.end() ||
        std::llabs(c->first - timestamp_ms) < std::llabs(row->first - timestamp_ms)) {
      row = c;  // the closest
    }
  }
  if (row == e.rows.end()) {
    // A full entity hands out its oldest row now (within one request too); a sample older than
    // every row it holds is then late.
    if (e.rows.size() >= limits_.max_pending_rows) {
      if (timestamp_ms < e.rows.begin()->first) return Outcome::kLate;
      TakeUpTo(it->first, e, e.rows.begin(), &handed_);
    } else if ((pending_rows_ + 1) * num_features_ > limits_.max_pending_values) {
      return Outcome::kRowLimit;
    }
    ++rows_created_;
    ++pending_rows_;
    Rows::node_type node;
    if (spare_.empty()) {
      Rows one;
      node = one.extract(one.emplace(timestamp_ms, Pending{}).first);
    } else {
      node = std::move(spare_.back());
      spare_.pop_back();
      node.key() = timestamp_ms;
    }
    Pending& p = node.mapped();
    p.sums.assign(num_features_, 0.0);
    p.counts.assign(num_features_, 0);
    p.series.clear();  // keeps its capacity
    p.arrived_ms = now_ms;
    row = e.rows.insert(std::move(node)).position;
  }
  row->second.sums[feature] += v;
  row->second.counts[feature] += 1;
  row->second.series.insert(series);
  if (e.newest_ms == INT64_MIN || timestamp_ms > e.newest_ms) e.newest_ms = timestamp_ms;
  e.seen_ms = now_ms;
  if (!e.touched) {
    e.touched = true;
    touched_.push_back(&*it);
  }
  return Outcome::kAccepted;
}

void RowAssembler::Take(std::vector<IngestRow>* out) {
  TakeHanded(out);
  for (Entities::value_type* it : touched_) {
    const std::string& name = it->first;
    Entity& e = it->second;
    e.touched = false;
    if (e.rows.empty()) continue;
    // The newest row that is ready, by any rule; it takes the older ones with it.
    auto ready = e.rows.end();
    auto later = [&](std::map<int64_t, Pending>::iterator c) {
      if (ready == e.rows.end() || c->first > ready->first) ready = c;
    };
    for (auto r = e.rows.begin(); r != e.rows.end(); ++r) {
      if (Complete(e, r->second)) later(r);
    }
    auto fresh = e.rows.lower_bound(e.newest_ms - flush_ms_ + 1);  // first row not superseded
    if (fresh != e.rows.begin()) later(std::prev(fresh));
    if (ready != e.rows.end()) TakeUpTo(name, e, ready, out);
  }
  touched_.clear();
}

void RowAssembler::TakeHanded(std::vector<IngestRow>* out) {
  for (IngestRow& r : handed_) out->push_back(std::move(r));
  handed_.clear();
}

void RowAssembler::Flush(int64_t now_ms, std::vector<IngestRow>* out,
                         std::vector<std::string>* forgotten) {
  TakeHanded(out);
  for (auto it = entities_.begin(); it != entities_.end();) {
    Entity& e = it->second;
    auto ready = e.rows.end();
    for (auto r = e.rows.begin(); r != e.rows.end(); ++r) {
      if (r->second.arrived_ms <= now_ms - flush_ms_) ready = r;
    }
    if (ready != e.rows.end()) TakeUpTo(it->first, e, ready, out);
    if (e.rows.empty() && now_ms - e.seen_ms >= limits_.idle_ms) {
      if (forgotten != nullptr) forgotten->push_back(it->first);
      if (e.touched) std::erase(touched_, &*it);
      entities_.erase(it++);
    } else {
      ++it;
    }
  }
  // Idle counter series, swept every tenth of the idle time (a sweep visits every series).
  if (now_ms - rates_swept_ms_ >= limits_.idle_ms / 10) {
    rates_swept_ms_ = now_ms;
    absl::erase_if(rates_,
                   [&](const auto& r) { return now_ms - r.second.seen_ms >= limits_.idle_ms; });
  }
}

bool RowAssembler::Complete(const Entity& e, const Pending& p) const {
  if (!e.any_out) return false;  // no previous row to say how many series each feature has
  for (size_t f = 0; f < num_features_; ++f) {
    if (p.counts[f] < std::max<uint32_t>(1, e.expected[f])) return false;
  }
  return true;
}

void RowAssembler::TakeUpTo(const std::string& name, Entity& e, Rows::iterator upto,
                            std::vector<IngestRow>* out) {
  auto end = std::next(upto);
  for (auto r = e.rows.begin(); r != end; ++r) {
    IngestRow row;
    row.entity = name;
    row.timestamp_ms = r->first;
    row.values.resize(num_features_);
    for (size_t f = 0; f < num_features_; ++f) {
      const double sum = r->second.sums[f];  // a sum beyond float range is missing too
      row.values[f] =
          r->second.counts[f] == 0 || !(std::fabs(sum) <= std::numeric_limits<float>::max())
              ? std::numeric_limits<float>::quiet_NaN()
              : static_cast<float>(sum);
    }
    out->push_back(std::move(row));
  }
  // A row with every feature present says how many series each feature has.
  const std::vector<uint32_t>& counts = upto->second.counts;
  if (std::all_of(counts.begin(), counts.end(), [](uint32_t c) { return c > 0; })) {
    e.expected = counts;
  }
  e.last_out_ms = upto->first;
  e.any_out = true;
  while (e.rows.begin() != end) {
    --pending_rows_;
    auto node = e.rows.extract(e.rows.begin());
    if (spare_.size() < kMaxSpareRows) spare_.push_back(std::move(node));
  }
}

}  // namespace aeserve::server
