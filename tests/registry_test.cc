// The registry's parts in process: StoreSync lists every stored model as LOADING before loading
// any, ModelView renders entries (entities under their model, drift from live statistics), and
// the lifecycle core answers "is loading" for what is not built yet.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/model_registry.h"
#include "server/model_view.h"
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

}  // namespace
}  // namespace aeserve::testing
