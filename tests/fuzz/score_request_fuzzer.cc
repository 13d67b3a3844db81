// libFuzzer target: an arbitrary decoded ScoreRequest (any sizes, values, ids, options) against a
// small model through the server's validation and scoring path: a Status, never a crash.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/model.h"
#include "server/executor.h"
#include "server/scoring.h"
#include "tests/fuzz/small_model.h"

namespace {

std::shared_ptr<const aeserve::engine::Model> SmallModel() {
  using namespace aeserve;
  v1::ModelFile f = fuzz::SmallModelFile();
  f.add_calibration_errors(0.5f);
  f.set_threshold_value(0.5);
  f.mutable_critical_threshold()->set_method(v1::THRESHOLD_FIXED);
  f.set_critical_threshold_value(1.0);
  return *engine::Model::Create(f, {1, 64});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto model = SmallModel();
  static aeserve::server::Worker worker;
  aeserve::v1::ScoreRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  aeserve::server::ModelHandle h{model, "fuzz", "", 1, nullptr};
  aeserve::v1::ScoreResponse resp;
  (void)aeserve::server::ScoreSamples(h, req.samples(), req.options(), 4096, worker, &resp);
  aeserve::v1::EncodeResponse enc;
  (void)aeserve::server::EncodeSamples(h, req.samples(), 4096, worker, &enc);
  return 0;
}
