// The registry's repository side: loading the store and following other replicas' changes.
#include "server/store_sync.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace aeserve::server {

ModelEntry StoreSync::Load(const ModelKey& key) const {
  ModelEntry entry;
  for (uint64_t v : r_.store_.ListVersions(key)) entry.versions[v] = r_.LoadVersion(key, v);
  auto active = r_.store_.ReadActive(key);
  if (active.ok()) {
    entry.active = *active;
  } else if (active.status().code() == absl::StatusCode::kNotFound) {
    if (!entry.versions.empty()) {
      entry.active = entry.versions.rbegin()->first;
      if (r_.log_ != nullptr) {
        r_.log_->warn(
            "model store: model '{}' has no ACTIVE file: version {} (the highest) is active",
            key.str(), entry.active);
      }
    }
  } else {
    // Never fall back to another version: that could promote a staged one.
    entry.error = std::string(active.status().message());
    r_.ReportStoreError(key, "active", entry.error);
    return entry;
  }
  auto it = entry.versions.find(entry.active);
  if (entry.active == 0) {
    entry.error = "no active version";
  } else if (it == entry.versions.end()) {
    entry.error = absl::StrCat("active version ", entry.active, " does not exist");
  } else if (it->second.state != v1::MODEL_STATE_READY) {
    entry.error = absl::StrCat("active version ", entry.active, ": ", it->second.error);
  }
  return entry;
}

int StoreSync::LoadAll(absl::FunctionRef<void(const ModelKey&, const ModelEntry&)> loaded) {
  absl::MutexLock admin(&r_.admin_mu_);
  const std::vector<ModelKey> keys = r_.store_.ListModels();
  {
    // Everything the store holds is visible at once, as LOADING, while it loads.
    absl::MutexLock lock(&r_.mu_);
    for (const ModelKey& key : keys) {
      if (r_.models_.count(key)) continue;  // already serving (the demo model, trained first)
      ModelEntry& e = r_.models_[key];
      e.loading = true;
      e.error = "loading";
    }
  }
  int ready = 0;
  for (const ModelKey& key : keys) {
    r_.store_.RemoveDebris(key);
    ModelEntry entry = Load(key);
    if (entry.error.empty()) ++ready;
    loaded(key, entry);
    absl::MutexLock lock(&r_.mu_);
    ModelEntry& e = r_.models_[key] = std::move(entry);
    r_.TrimVersionsLocked(e);
    r_.EvictLocked(&key);  // the memory budget holds while the store loads
  }
  return ready;
}

int StoreSync::FollowActive(const ModelKey& key, ModelEntry& e,
                            const absl::StatusOr<uint64_t>& disk_active) const {
  int changes = 0;
  auto act = e.versions.find(e.active);
  const bool serving =
      e.active != 0 && act != e.versions.end() && act->second.state == v1::MODEL_STATE_READY;
  if (disk_active.ok()) {
    e.store_error.clear();
    const uint64_t want = *disk_active;
    if (want != 0 && want != e.active) {
      auto vit = e.versions.find(want);
      if (vit != e.versions.end() && vit->second.state == v1::MODEL_STATE_READY) {
        e.active = want;  // new version loaded and warm before it becomes active
        e.error.clear();
        ++changes;
      }
    } else if (want == 0 && e.active != 0) {
      e.active = 0;
      e.error = "no active version";
      ++changes;
    } else if (e.active == want && serving && !e.error.empty()) {
      e.error.clear();  // ACTIVE was repaired
      ++changes;
    }
  } else if (disk_active.status().code() == absl::StatusCode::kNotFound) {
    if (e.active != 0 && !e.versions.count(e.active)) {
      e.active = 0;
      e.error = "no active version";
      ++changes;
    } else if (e.active == 0 && !e.versions.empty()) {
      // As at start-up: without an ACTIVE file the highest version is active.
      auto high = e.versions.rbegin();
      if (high->second.state == v1::MODEL_STATE_READY) {
        e.active = high->first;
        e.error.clear();
        ++changes;
      } else {
        e.error = absl::StrCat("no ACTIVE file, and the highest version ", high->first,
                               " is unavailable");
      }
    }
  } else {
    // An unusable ACTIVE promotes nothing; what serves now keeps serving.
    const std::string msg = std::string(disk_active.status().message());
    const std::string was = serving ? e.store_error : e.error;
    if (serving) {
      e.store_error = absl::StrCat(msg, "; still serving version ", e.active);
    } else {
      e.active = 0;
      e.error = msg;
    }
    if ((serving ? e.store_error : e.error) != was) r_.ReportStoreError(key, "active", msg);
  }
  if (e.active != 0 && !e.versions.count(e.active)) {
    e.error = absl::StrCat("active version ", e.active, " was deleted");
    e.active = 0;
    ++changes;
  }
  return changes;
}

StoreSync::Seen StoreSync::Glance(const ModelKey& key, const std::vector<uint64_t>& versions,
                                  const std::vector<uint64_t>& pending) const {
  const std::string dir = r_.store_.KeyDir(key);
  Seen s{engine::StampOf(dir), engine::StampOf(dir + "/ACTIVE"), {}, {}};
  StampVersions(key, versions, pending, s);
  return s;
}

void StoreSync::StampVersions(const ModelKey& key, const std::vector<uint64_t>& versions,
                              const std::vector<uint64_t>& pending, Seen& s) const {
  for (uint64_t v : versions) {
    s.versions.emplace_back(v, engine::StampOf(r_.store_.VersionPath(key, v)));
  }
  for (uint64_t v : pending)
    s.pending.emplace_back(v, engine::StampOf(r_.store_.VersionDir(key, v)));
}

int StoreSync::Poll() {
  absl::MutexLock admin(&r_.admin_mu_);
  int changes = 0;
  // Stamps older than this had settled when read: a change since then shows in them.
  const int64_t settled_before = absl::GetCurrentTimeNanos() - 1'000'000'000;
  if (polls_++ % kFullPollEvery == 0) seen_.clear();
  models_read_ = 0;
  bool all_keys = true;
  const std::vector<ModelKey> keys = r_.store_.ListModels(&all_keys);
  if (!all_keys) {
    r_.ReportStoreError(
        ModelKey{"*", ""}, "listing",
        "the store directory could not be read to the end; nothing is unloaded this round");
  }
  for (const ModelKey& key : keys) {
    if (auto was = seen_.find(key); was != seen_.end()) {
      std::vector<uint64_t> versions, pending;
      for (const auto& [v, stamp] : was->second.versions) versions.push_back(v);
      for (const auto& [v, stamp] : was->second.pending) pending.push_back(v);
      if (Glance(key, versions, pending) == was->second) continue;  // unchanged since settled
      seen_.erase(was);
    }
    ++models_read_;
    // Stamped before anything is read: a change made while it is read shows next time.
    Seen look = Glance(key, {}, {});
    bool all_versions = true;
    std::vector<uint64_t> pending;
    const std::vector<uint64_t> on_disk = r_.store_.ListVersions(key, &all_versions, &pending);
    if (!all_versions) {
      // A listing that failed half-way is not the store's contents: change nothing this round.
      r_.ReportStoreError(key, "listing",
                          "its directory could not be read to the end; left as it is");
      continue;
    }
    // What the store holds that we have not loaded (new versions, rewritten files): new versions
    // are listed as LOADING until they are built, outside the lock.
    StampVersions(key, on_disk, pending, look);  // before locking: stat() is I/O
    std::map<uint64_t, uint64_t> stamps;
    for (const auto& [v, stamp] : look.versions) stamps[v] = stamp.value();
    std::vector<uint64_t> to_load;
    {
      absl::MutexLock lock(&r_.mu_);
      ModelEntry& e = r_.models_[key];
      for (uint64_t v : on_disk) {
        auto have = e.versions.find(v);
        if (have == e.versions.end()) {
          e.versions[v].state = v1::MODEL_STATE_LOADING;
          to_load.push_back(v);
          continue;
        }
        const uint64_t stamp = stamps[v];
        // A rewritten file of an unloaded version is read when the version is next needed (a
        // fleet-wide change loads nothing now).
        const bool unloaded =
            have->second.state == v1::MODEL_STATE_READY && have->second.model == nullptr;
        if (have->second.state == v1::MODEL_STATE_LOADING ||
            (have->second.stamp != stamp && have->second.bad_stamp != stamp && !unloaded)) {
          to_load.push_back(v);
        }
      }
    }
    std::map<uint64_t, VersionEntry> loaded;
    for (uint64_t v : to_load) loaded[v] = r_.LoadVersion(key, v);
    auto disk_active = r_.store_.ReadActive(key);
    absl::MutexLock lock(&r_.mu_);
    ModelEntry& e = r_.models_[key];
    for (auto& [v, ver] : loaded) {
      auto old = e.versions.find(v);
      const bool was_ready = old != e.versions.end() && old->second.state == v1::MODEL_STATE_READY;
      if (ver.state != v1::MODEL_STATE_READY && was_ready) {
        // A rewrite that does not load: keep serving the good copy, say why.
        old->second.bad_stamp = ver.stamp;
        old->second.error = absl::StrCat("the file in the store changed and does not load (",
                                         ver.error, "); serving the copy loaded before");
      } else {
        // A rewrite keeps the version's live statistics (its calibration does not change).
        if (was_ready && ver.stats != nullptr) ver.stats = old->second.stats;
        e.versions[v] = std::move(ver);
      }
      ++changes;
    }
    for (auto it = e.versions.begin(); it != e.versions.end();) {
      if (std::find(on_disk.begin(), on_disk.end(), it->first) == on_disk.end()) {
        it = e.versions.erase(it);
        ++changes;
      } else {
        ++it;
      }
    }
    changes += FollowActive(key, e, disk_active);
    if (!loaded.empty()) {
      r_.TrimVersionsLocked(e);
      r_.EvictLocked(&key);  // the memory budget holds while new versions load
    }
    // Settled: nothing changed within the last second, and nothing passing was met (an ACTIVE
    // that could not be read, a version file gone while it was read, a cold load under way that
    // could install a file older than the stamps).
    bool settled = look.dir.mtime_ns < settled_before && look.active.mtime_ns < settled_before &&
                   (disk_active.ok() || absl::IsNotFound(disk_active.status()));
    for (const auto& [v, stamp] : look.versions) {
      settled &= stamp.exists() && stamp.mtime_ns < settled_before;
    }
    for (const auto& [v, stamp] : look.pending) settled &= stamp.mtime_ns < settled_before;
    for (const auto& [v, ver] : e.versions) {
      settled &= ver.state != v1::MODEL_STATE_LOADING && !r_.cold_loading_.count({key, v});
    }
    if (settled) seen_[key] = std::move(look);
  }
  std::erase_if(seen_, [&keys](const auto& s) {
    return !std::binary_search(keys.begin(), keys.end(), s.first);
  });
  // Models whose directory is gone (only when the listing could be read to the end).
  absl::MutexLock lock(&r_.mu_);
  r_.EvictLocked(nullptr);
  for (auto it = r_.models_.begin(); it != r_.models_.end() && all_keys;) {
    if (!std::binary_search(keys.begin(), keys.end(), it->first)) {  // keys are sorted
      it = r_.models_.erase(it);
      ++changes;
    } else {
      ++it;
    }
  }
  return changes;
}

}  // namespace aeserve::server
