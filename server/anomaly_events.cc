// Anomaly events: sizes counted when a batch arrives, events serialized when first sent.
#include "server/anomaly_events.h"

#include <algorithm>
#include <numeric>

namespace aeserve::server {

EventBatch::EventBatch(FlaggedRows rows) : model_(rows.handle.name), rows_(std::move(rows)) {
  if (!rows_.incidents.empty()) {
    sizes_[kIncidents] = rows_.incidents.size();
    return;
  }
  if (rows_.handle.model == nullptr) return;
  const engine::Model& model = *rows_.handle.model;
  const size_t n = rows_.errors.size();
  // Scoring computes the per-feature errors whenever the feed has watchers; rows without them
  // (a watcher subscribed while the batch was being scored) have nothing to rank, so no events.
  if (rows_.feature_errors.size() != n * model.num_features()) return;
  const double critical = model.file().critical_threshold_value();
  sizes_[kAll] = n;
  if (critical > 0) {
    sizes_[kCritical] = static_cast<size_t>(std::count_if(
        rows_.scores.begin(), rows_.scores.end(), [critical](float s) { return s > critical; }));
  }
}

const std::vector<grpc::Slice>& EventBatch::events(List list) const {
  std::call_once(once_, [this] { Build(); });
  return lists_[list];
}

void EventBatch::Build() const {
  const FlaggedRows& f = rows_;
  v1::AnomalyEvent e;
  auto common = [&] {
    e.Clear();
    e.set_model(f.handle.name);
    e.set_version(f.handle.version);
    e.set_entity(f.handle.entity);
    e.set_stream_id(f.stream_id);
    e.set_source_entity(f.source_entity);
    e.set_server_time_ms(f.server_time_ms);
  };
  if (sizes_[kIncidents] > 0) {
    for (const v1::Incident& incident : f.incidents) {
      common();
      *e.mutable_incident() = incident;
      lists_[kIncidents].emplace_back(e.SerializeAsString());
    }
  } else if (sizes_[kAll] > 0) {
    const engine::Model& model = *f.handle.model;
    const uint32_t d = model.num_features();
    const double critical = model.file().critical_threshold_value();
    const bool named = model.file().feature_names_size() == static_cast<int>(d);
    const uint32_t k = std::min<uint32_t>(3, d);
    std::vector<uint32_t> idx(d);
    lists_[kAll].reserve(sizes_[kAll]);
    lists_[kCritical].reserve(sizes_[kCritical]);
    for (size_t i = 0; i < sizes_[kAll]; ++i) {
      common();
      if (!f.source_entities.empty()) e.set_source_entity(f.source_entities[i]);
      if (!f.ids.empty()) e.set_sample_id(f.ids[i]);
      if (!f.timestamps_ms.empty()) e.set_timestamp_ms(f.timestamps_ms[i]);
      e.set_error(f.errors[i]);
      e.set_score(f.scores[i]);
      e.set_threshold(f.threshold);
      e.set_p_value(f.p_values[i]);
      e.set_severity(critical > 0 && f.scores[i] > critical ? 2 : 1);
      const float* fe = f.feature_errors.data() + i * d;
      std::iota(idx.begin(), idx.end(), 0u);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [fe](uint32_t a, uint32_t b) {
        return fe[a] > fe[b] || (fe[a] == fe[b] && a < b);
      });
      for (uint32_t j = 0; j < k; ++j) {
        e.add_top_features(idx[j]);
        e.add_top_feature_errors(fe[idx[j]]);
        if (named) e.add_top_feature_names(model.file().feature_names(static_cast<int>(idx[j])));
      }
      lists_[kAll].emplace_back(e.SerializeAsString());
      if (e.severity() == 2) lists_[kCritical].push_back(lists_[kAll].back());
    }
  }
  rows_ = FlaggedRows{};  // the rows (and the model they pin) are not needed any more
  built_.store(true, std::memory_order_release);
}

}  // namespace aeserve::server
