// Test fixtures shared by the service tests: a model store with small trained models.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "engine/synthetic_data.h"
#include "engine/trainer.h"
#include "gtest/gtest.h"
#include "server/model_store.h"

namespace aeserve::testing {

inline constexpr uint32_t kFeatures = 12;

// A fresh directory under /tmp, removed by the destructor.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    path_ = std::filesystem::temp_directory_path() /
            (tag + "_" + std::to_string(getpid()) + "_" + std::to_string(counter_++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string path() const { return path_.string(); }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

// A model of `kind` with the given encoder layers (code size 3), trained on synthetic data.
inline v1::ModelFile TrainModel(v1::ModelKind kind, uint64_t seed,
                                const std::vector<uint32_t>& units, uint32_t epochs) {
  auto data = engine::MakeSynthetic(1500, 0, kFeatures, 3, 77);
  engine::TrainRequest req;
  req.spec.set_kind(kind);
  for (uint32_t u : units) req.spec.add_encoder_units(u);
  req.spec.set_code_size(3);
  if (kind == v1::MODEL_KIND_VARIATIONAL) req.spec.set_beta(0.01f);
  req.options.set_epochs(epochs);
  req.options.set_seed(seed);
  std::vector<std::string> names;
  for (uint32_t i = 0; i < kFeatures; ++i) names.push_back("m" + std::to_string(i));
  auto f = engine::Train(req, engine::TrainingData{data.normal, 1500, kFeatures, names, {}});
  if (!f.ok()) {
    ADD_FAILURE() << f.status();
    return {};
  }
  return *std::move(f);
}

inline v1::ModelFile TrainSmall(v1::ModelKind kind, uint64_t seed = 1) {
  return TrainModel(kind, seed, {16}, 15);
}

// Writes `file` as a new version of `model` and makes it active.
inline uint64_t Store(const std::string& dir, const std::string& model, const v1::ModelFile& file,
                      const std::string& entity = "") {
  server::ModelStore store(dir);
  const server::ModelKey key{model, entity};
  auto v = store.AddVersion(key, file);
  if (!v.ok()) {
    ADD_FAILURE() << v.status();
    return 0;
  }
  EXPECT_TRUE(store.WriteActive(key, *v).ok());
  return *v;
}

}  // namespace aeserve::testing
