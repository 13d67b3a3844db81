// libFuzzer target: arbitrary bytes as a model file must give a Status, never a crash, a hang or
// an unbounded allocation.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/model.h"
#include "engine/model_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1 << 20)) return 0;
  auto file =
      aeserve::engine::ParseModelFile(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!file.ok()) return 0;
  // A file that parses goes on to the loader, with small plans so a run stays fast.
  auto model = aeserve::engine::Model::Create(*file, {1, 16});
  if (model.ok()) {
    auto ctx = (*model)->NewContext();
    std::vector<float> x((*model)->num_features(), 0.5f);
    aeserve::engine::ScoreResult r;
    (void)(*model)->Score(*ctx, x, {.per_feature = true}, &r);
  }
  return 0;
}
