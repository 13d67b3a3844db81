// The registry's parts in process: StoreSync lists every stored model as LOADING before loading
// any, ModelView renders entries (entities under their model, drift from live statistics), and
// the lifecycle core answers "is loading" for what is not built yet.
#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/metrics/text_serializer.h"
#include "server/model_registry.h"
#include "server/model_view.h"
#include "server/server_metrics.h"
#include "server/store_sync.h"
#include "tests/test_models.h"

namespace aeserve::testing {
namespace {

using server::ModelEntry;
using server::ModelKey;

TEST(Registry, StartUpListsEveryModelAsLoadingBeforeLoadingAny) {
  TempDir dir("aeserve_registry_loading");
  const v1::ModelFile file = TrainSmall(v1::MODEL_KIND_PLAIN);
  Store(dir.path(), "a", file);
  Store(dir.path(), "b", file);
  Store(dir.path(), "b", file, "host-1");
  server::ModelRegistry registry(server::ModelStore(dir.path()), engine::ModelOptions{1, 4096});
  server::ModelView view(registry, 0.2);
  server::StoreSync sync(registry);
  std::vector<std::string> order;
  const int ready = sync.LoadAll([&](const ModelKey& key, const ModelEntry& e) {
    EXPECT_TRUE(e.error.empty()) << e.error;
    if (order.empty()) {
      // The first model is loaded; the others are listed, LOADING, and do not score yet.
      for (const ModelKey& other : {ModelKey{"b", ""}, ModelKey{"b", "host-1"}}) {
        auto info = view.Info(other);
        ASSERT_TRUE(info.ok()) << info.status();
        EXPECT_EQ(info->state(), v1::MODEL_STATE_LOADING) << other.str();
        auto h = registry.Get(other.model, other.entity, 0);
        EXPECT_EQ(h.status().code(), absl::StatusCode::kUnavailable);
        EXPECT_NE(h.status().message().find("is loading"), std::string::npos) << h.status();
      }
      EXPECT_EQ(view.List().size(), 3u);
    }
    order.push_back(key.str());
  });
  EXPECT_EQ(ready, 3);
  EXPECT_EQ(order, (std::vector<std::string>{"a", "b", "b/host-1"}));
  const auto all = view.List();
  ASSERT_EQ(all.size(), 3u);
  for (const auto& info : all) EXPECT_EQ(info.state(), v1::MODEL_STATE_READY) << info.name();
  EXPECT_EQ(all[0].entities_size(), 0);
  ASSERT_EQ(all[1].entities_size(), 1);
  EXPECT_EQ(all[1].entities(0), "host-1");
  auto b = view.Info(ModelKey{"b", ""});
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(b->entities_size(), 1);
  EXPECT_EQ(b->num_features(), kFeatures);
  EXPECT_EQ(view.Info(ModelKey{"c", ""}).status().code(), absl::StatusCode::kNotFound);
  auto h = registry.Get("b", "host-1", 0);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->entity, "host-1");
  EXPECT_NE(h->stats, nullptr);
  EXPECT_EQ(h->metrics, nullptr) << "no metrics registry was given";
}

TEST(Registry, DriftComesFromLiveStatisticsWithoutAnyMetrics) {
  TempDir dir("aeserve_registry_drift");
  const v1::ModelFile file = TrainSmall(v1::MODEL_KIND_PLAIN);
  Store(dir.path(), "a", file);
  server::ModelRegistry registry(server::ModelStore(dir.path()), engine::ModelOptions{1, 4096});
  server::StoreSync(registry).LoadAll([](const ModelKey&, const ModelEntry&) {});
  server::ModelView view(registry, 0.2);
  auto h = registry.Get("a", "", 0);
  ASSERT_TRUE(h.ok());
  // Scores far above every calibration error: the live distribution is disjoint from it.
  const float top = file.calibration_errors(file.calibration_errors_size() - 1);
  std::vector<float> scores(600, 10 * top + 1);
  std::vector<uint8_t> flags(600, 1);
  h->stats->Record(scores, flags);
  auto info = view.Info(ModelKey{"a", ""});
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->drift_window(), 600u);
  EXPECT_DOUBLE_EQ(info->drift_ks(), 1.0);
  EXPECT_TRUE(info->drifted());
  EXPECT_DOUBLE_EQ(h->stats->AnomalyRate(), 1.0);
}

// Which versions of `key` are loaded now.
std::vector<uint64_t> LoadedVersions(const server::ModelRegistry& r, const ModelKey& key) {
  std::vector<uint64_t> out;
  r.Visit(key, [&](const ModelEntry& e) {
    for (const auto& [v, ver] : e.versions) {
      if (ver.model != nullptr) out.push_back(v);
    }
  });
  return out;
}

std::string EntityName(int i) { return "host-" + std::to_string(100 + i); }

// The text of one metric family's samples in the server metrics' exposition.
std::string Exposition(server::ServerMetrics& m) {
  return metrics::TextSerializer().Serialize(m.registry().Collect());
}

// Under a memory budget, entity models beyond it are unloaded least recently used first, and one
// that is asked for is loaded again (scoring as before), with the budget kept throughout.
TEST(Registry, EntityModelsOverTheMemoryBudgetAreUnloadedLeastRecentlyUsedFirst) {
  TempDir dir("aeserve_registry_budget");
  const v1::ModelFile file = TrainSmall(v1::MODEL_KIND_PLAIN);
  Store(dir.path(), "m", file);
  constexpr int kEntities = 12;
  for (int i = 0; i < kEntities; ++i) Store(dir.path(), "m", file, EntityName(i));
  // One entity model's bytes, as the registry counts them.
  auto one = engine::Model::Create(file, engine::ModelOptions{.compact = true});
  ASSERT_TRUE(one.ok());
  const size_t bytes = (*one)->resident_bytes();
  server::ServerMetrics metrics;
  server::ModelRegistry registry(server::ModelStore(dir.path()), engine::ModelOptions{1, 4096},
                                 &metrics, nullptr, server::Residence{5 * bytes + bytes / 2, -1});
  server::StoreSync(registry).LoadAll([](const ModelKey&, const ModelEntry&) {});
  auto loaded_entities = [&] {
    int n = 0;
    for (int i = 0; i < kEntities; ++i)
      n += !LoadedVersions(registry, {"m", EntityName(i)}).empty();
    return n;
  };
  // Loading evicted down to 90% of the budget each time it went over: 4 or 5 stay loaded, the
  // last ones loaded; the generic model is never unloaded.
  EXPECT_LE(registry.entity_bytes(), static_cast<int64_t>(5 * bytes + bytes / 2));
  EXPECT_GE(loaded_entities(), 4);
  EXPECT_LE(loaded_entities(), 5);
  EXPECT_EQ(LoadedVersions(registry, {"m", EntityName(kEntities - 1)}), std::vector<uint64_t>{1});
  EXPECT_EQ(LoadedVersions(registry, {"m", EntityName(0)}), std::vector<uint64_t>{});
  EXPECT_EQ(LoadedVersions(registry, {"m", ""}), std::vector<uint64_t>{1});

  // An unloaded model still shows in views, with its threshold, as not loaded.
  server::ModelView view(registry, 0.2);
  auto info = view.Info(ModelKey{"m", EntityName(0)});
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::MODEL_STATE_READY);
  ASSERT_EQ(info->versions_size(), 1);
  EXPECT_FALSE(info->versions(0).loaded());
  EXPECT_EQ(info->versions(0).threshold_value(), file.threshold_value());
  EXPECT_EQ(info->num_features(), kFeatures);

  // Asking for it loads it again; it scores as a freshly built model does.
  auto h = registry.Get("m", EntityName(0), 0);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_NE(h->model, nullptr);
  EXPECT_EQ(h->entity, EntityName(0));
  const std::vector<float> x(3 * kFeatures, 0.5f);
  engine::ScoreResult got, want;
  ASSERT_TRUE(h->model->Score(*h->model->NewContext(), x, {}, &got).ok());
  ASSERT_TRUE((*one)->Score(*(*one)->NewContext(), x, {}, &want).ok());
  EXPECT_EQ(got.score, want.score);
  EXPECT_EQ(LoadedVersions(registry, {"m", EntityName(0)}), std::vector<uint64_t>{1});
  info = view.Info(ModelKey{"m", EntityName(0)});
  EXPECT_TRUE(info->versions(0).loaded());
  EXPECT_EQ(info->versions(0).resident_bytes(), bytes);

  // Least recently used first: keep using entities 0 and 1 while loading every other one in
  // turn; they are never the ones unloaded.
  for (int round = 0; round < 2; ++round) {
    for (int i = 2; i < kEntities; ++i) {
      ASSERT_TRUE(registry.Get("m", EntityName(0), 0).ok());
      ASSERT_TRUE(registry.Get("m", EntityName(1), 0).ok());
      ASSERT_TRUE(registry.Get("m", EntityName(i), 0).ok());
      EXPECT_EQ(LoadedVersions(registry, {"m", EntityName(0)}).size(), 1u) << i;
      EXPECT_EQ(LoadedVersions(registry, {"m", EntityName(1)}).size(), 1u) << i;
      EXPECT_LE(registry.entity_bytes(), static_cast<int64_t>(5 * bytes + bytes / 2));
    }
  }
  const std::string text = Exposition(metrics);
  EXPECT_NE(text.find("aeserve_model_unloads_total{reason=\"memory\"}"), std::string::npos);
  EXPECT_NE(text.find("aeserve_model_cold_loads_total{result=\"ok\"}"), std::string::npos);
  EXPECT_NE(text.find("aeserve_model_cold_load_duration_seconds_count"), std::string::npos);
}

// Inactive versions beyond --keep_loaded_versions are unloaded (the newest stay); asking for one
// by version loads it again; activating an unloaded version loads it before it serves.
TEST(Registry, InactiveVersionsBeyondTheKeptOnesAreUnloaded) {
  TempDir dir("aeserve_registry_versions");
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN, seed));
  }
  server::ModelRegistry registry(server::ModelStore(dir.path()), engine::ModelOptions{1, 4096},
                                 nullptr, nullptr, server::Residence{0, 2});
  server::StoreSync(registry).LoadAll([](const ModelKey&, const ModelEntry&) {});
  const ModelKey key{"m", ""};
  EXPECT_EQ(LoadedVersions(registry, key), (std::vector<uint64_t>{3, 4, 5}));
  auto v1 = registry.Handle(key, 1);
  ASSERT_TRUE(v1.ok()) << v1.status();
  ASSERT_NE(v1->model, nullptr);
  EXPECT_EQ(v1->model->file().threshold_value(),
            TrainSmall(v1::MODEL_KIND_PLAIN, 1).threshold_value());
  EXPECT_EQ(LoadedVersions(registry, key), (std::vector<uint64_t>{1, 3, 4, 5}));
  // Activating version 2 (unloaded) loads it; then the newest two inactive ones stay: 4 and 5.
  ASSERT_TRUE(registry.Activate(key, 2).ok());
  EXPECT_EQ(LoadedVersions(registry, key), (std::vector<uint64_t>{2, 4, 5}));
  auto h = registry.Get("m", "", 0);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->version, 2u);
  EXPECT_NE(h->model, nullptr);
}

// Cold loads racing with each other and with evictions: four threads ask for random entity models
// under a budget of about three, and every handle they get scores, whatever was unloaded since.
TEST(Registry, ConcurrentColdLoadsUnderATightBudget) {
  TempDir dir("aeserve_registry_churn");
  const v1::ModelFile file = TrainSmall(v1::MODEL_KIND_PLAIN);
  Store(dir.path(), "m", file);
  constexpr int kEntities = 10;
  for (int i = 0; i < kEntities; ++i) Store(dir.path(), "m", file, EntityName(i));
  auto one = engine::Model::Create(file, engine::ModelOptions{.compact = true});
  ASSERT_TRUE(one.ok());
  const size_t bytes = (*one)->resident_bytes();
  server::ModelRegistry registry(server::ModelStore(dir.path()), engine::ModelOptions{1, 4096},
                                 nullptr, nullptr, server::Residence{3 * bytes + bytes / 2, -1});
  server::StoreSync(registry).LoadAll([](const ModelKey&, const ModelEntry&) {});
  const std::vector<float> x(2 * kFeatures, 0.25f);
  engine::ScoreResult want;
  ASSERT_TRUE((*one)->Score(*(*one)->NewContext(), x, {}, &want).ok());
  std::atomic<int> failures{0}, mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 150; ++i) {
        auto h = registry.Get("m", EntityName(static_cast<int>(rng() % kEntities)), 0);
        engine::ScoreResult r;
        if (!h.ok() || h->model == nullptr ||
            !h->model->Score(*h->model->NewContext(), x, {}, &r).ok()) {
          ++failures;
        } else if (r.score != want.score) {
          ++mismatches;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_LE(registry.entity_bytes(), static_cast<int64_t>(3 * bytes + bytes / 2));
}

// A version's file rewritten by another replica while the version is unloaded is not loaded by the
// store poll (a fleet-wide change loads nothing at once); the next request reads the new file.
TEST(Registry, AnUnloadedVersionRewrittenElsewhereIsReadWhenNextNeeded) {
  TempDir dir("aeserve_registry_rewrite");
  for (uint64_t seed = 1; seed <= 2; ++seed) {
    Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN, seed));
  }
  server::ModelRegistry registry(server::ModelStore(dir.path()), engine::ModelOptions{1, 4096},
                                 nullptr, nullptr, server::Residence{0, 0});
  server::StoreSync sync(registry);
  sync.LoadAll([](const ModelKey&, const ModelEntry&) {});
  const ModelKey key{"m", ""};
  ASSERT_EQ(LoadedVersions(registry, key), std::vector<uint64_t>{2});  // 1 is inactive: unloaded
  // Another replica changes version 1's threshold.
  server::ModelStore store(dir.path());
  auto file = store.Load(key, 1);
  ASSERT_TRUE(file.ok());
  file->set_threshold_value(123.5);
  ASSERT_TRUE(store.RewriteVersion(key, 1, *file).ok());
  sync.Poll();
  EXPECT_EQ(LoadedVersions(registry, key), std::vector<uint64_t>{2});
  // Peek does not load it either; Handle does, and serves the new file.
  auto peek = registry.Peek(key, 1);
  ASSERT_TRUE(peek.ok());
  EXPECT_EQ(peek->model, nullptr);
  auto h = registry.Handle(key, 1);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->model->threshold(), 123.5);
  EXPECT_EQ(LoadedVersions(registry, key), (std::vector<uint64_t>{1, 2}));
}

// A version whose cold load failed answers with that failure for cold_retry_seconds without
// reading its file again (every request would read and fail), then reads it again.
TEST(Registry, AFailedColdLoadIsNotRetriedAtOnce) {
  TempDir dir("aeserve_registry_cold_retry");
  for (uint64_t seed = 1; seed <= 2; ++seed) {
    Store(dir.path(), "m", TrainSmall(v1::MODEL_KIND_PLAIN, seed));
  }
  server::ModelRegistry registry(server::ModelStore(dir.path()), engine::ModelOptions{1, 4096},
                                 nullptr, nullptr, server::Residence{0, 0, 1.0});
  server::StoreSync(registry).LoadAll([](const ModelKey&, const ModelEntry&) {});
  const ModelKey key{"m", ""};
  ASSERT_EQ(LoadedVersions(registry, key), std::vector<uint64_t>{2});  // 1 is unloaded
  const std::string path = server::ModelStore(dir.path()).VersionPath(key, 1);
  const std::filesystem::path good = dir.path() + "/good.pb";
  std::filesystem::copy_file(path, good);
  std::ofstream(path, std::ios::trunc) << "not a model";
  const auto failed_at = std::chrono::steady_clock::now();
  auto h = registry.Handle(key, 1);
  ASSERT_EQ(h.status().code(), absl::StatusCode::kUnavailable) << h.status();
  EXPECT_NE(h.status().message().find("could not be loaded again"), std::string::npos);
  // Repaired at once: still the failure (the file is not read again yet) ...
  std::filesystem::copy_file(good, path, std::filesystem::copy_options::overwrite_existing);
  auto again = registry.Handle(key, 1);
  ASSERT_LT(std::chrono::steady_clock::now() - failed_at, std::chrono::milliseconds(900))
      << "too slow a machine to tell";
  EXPECT_EQ(again.status(), h.status());
  // ... and read once the second has passed.
  const auto deadline = failed_at + std::chrono::seconds(10);
  while (!registry.Handle(key, 1).ok() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto later = registry.Handle(key, 1);
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_GE(std::chrono::steady_clock::now() - failed_at, std::chrono::seconds(1));
  EXPECT_EQ(LoadedVersions(registry, key), (std::vector<uint64_t>{1, 2}));
}

// Sets the modification time of everything under `dir` to `when` (seconds since the epoch), as
// if it had been written then.
void Age(const std::string& dir, time_t when) {
  const timespec times[2] = {{when, 0}, {when, 0}};
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    ASSERT_EQ(::utimensat(AT_FDCWD, e.path().c_str(), times, AT_SYMLINK_NOFOLLOW), 0) << e.path();
  }
}

// The store poll reads a model again only when stat() shows a change since a settled reading;
// what it cannot tell by stat() (a write in place keeping size and time) the full poll finds.
TEST(Registry, TheStorePollRereadsOnlyTheModelsThatChanged) {
  TempDir dir("aeserve_registry_poll");
  const v1::ModelFile file = TrainSmall(v1::MODEL_KIND_PLAIN);
  for (const char* e : {"e1", "e2", "e3"}) Store(dir.path(), "m", file, e);
  const time_t then = ::time(nullptr) - 3600;
  Age(dir.path(), then);
  server::ModelRegistry registry(server::ModelStore(dir.path()), engine::ModelOptions{1, 4096});
  server::StoreSync sync(registry);
  sync.LoadAll([](const ModelKey&, const ModelEntry&) {});
  sync.Poll();
  EXPECT_EQ(sync.models_read(), 3u);  // the first poll reads everything
  sync.Poll();
  EXPECT_EQ(sync.models_read(), 0u);

  // Another replica adds and activates e1's version 2 and rewrites e2's version 1.
  server::ModelStore store(dir.path());
  const ModelKey e1{"m", "e1"}, e2{"m", "e2"}, e3{"m", "e3"};
  auto v2 = store.AddVersion(e1, file);
  ASSERT_TRUE(v2.ok());
  ASSERT_TRUE(store.WriteActive(e1, *v2).ok());
  v1::ModelFile edited = file;
  edited.set_threshold_value(77);
  ASSERT_TRUE(store.RewriteVersion(e2, 1, edited).ok());
  EXPECT_EQ(sync.Poll(), 3);  // version 2 loaded, made active; version 1 of e2 reloaded
  EXPECT_EQ(sync.models_read(), 2u);
  auto h1 = registry.Get("m", "e1", 0);
  ASSERT_TRUE(h1.ok()) << h1.status();
  EXPECT_EQ(h1->version, 2u);
  auto h2 = registry.Get("m", "e2", 0);
  ASSERT_TRUE(h2.ok()) << h2.status();
  EXPECT_EQ(h2->model->threshold(), 77);
  // Written within the last second: read again until the stamps have settled.
  sync.Poll();
  EXPECT_EQ(sync.models_read(), 2u);
  Age(dir.path(), then);  // the same old time for all: only inodes and sizes tell now
  sync.Poll();
  EXPECT_EQ(sync.models_read(), 2u);
  sync.Poll();
  EXPECT_EQ(sync.models_read(), 0u);

  // A version directory whose file is not there yet: its own stamp is watched, so the file's
  // arrival (a rename into it) is seen though e3's directory and ACTIVE do not change.
  const std::string e3dir = store.KeyDir(e3);
  ASSERT_TRUE(std::filesystem::create_directory(e3dir + "/2"));
  sync.Poll();
  EXPECT_EQ(sync.models_read(), 1u);
  Age(dir.path(), then);
  sync.Poll();
  EXPECT_EQ(sync.models_read(), 1u);
  sync.Poll();
  EXPECT_EQ(sync.models_read(), 0u) << "an old version directory without its file settles";
  ASSERT_EQ(registry.Peek(e3, 2).status().code(), absl::StatusCode::kNotFound);
  std::filesystem::copy_file(e3dir + "/1/model.pb", e3dir + "/2/.model.pb.tmp");
  std::filesystem::rename(e3dir + "/2/.model.pb.tmp", e3dir + "/2/model.pb");
  sync.Poll();
  EXPECT_EQ(sync.models_read(), 1u);
  auto e3_versions = registry.Peek(e3, 2);
  EXPECT_TRUE(e3_versions.ok()) << e3_versions.status();
  Age(dir.path(), then);

  // ACTIVE rewritten in place, same size, time put back: stat() cannot tell; the next full poll
  // (at most kFullPollEvery polls away) reads it.
  for (int i = 0; i < 3; ++i) sync.Poll();  // settled again
  ASSERT_EQ(sync.models_read(), 0u);
  {
    std::ofstream active(e3dir + "/ACTIVE", std::ios::in | std::ios::out);
    active << "2\n";
  }
  Age(dir.path(), then);
  size_t polls = 0;
  while (registry.Get("m", "e3", 0)->version != 2 && polls < server::StoreSync::kFullPollEvery) {
    sync.Poll();
    ++polls;
  }
  EXPECT_EQ(registry.Get("m", "e3", 0)->version, 2u);
  EXPECT_GT(polls, 1u) << "found by stat() alone? then this test no longer tests the full poll";
}

}  // namespace
}  // namespace aeserve::testing
