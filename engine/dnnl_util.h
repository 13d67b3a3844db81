// Small helpers at the one boundary where aeserve calls oneDNN.
#pragma once

#include <omp.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "aeserve/v1/model.pb.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace aeserve::engine {

// oneDNN's eltwise algorithm and alpha for an activation (not for ACTIVATION_LINEAR).
dnnl::algorithm AlgorithmOf(v1::Activation a);
float AlphaOf(v1::Activation a, float leaky_relu_slope);

// Runs `f`, turning a dnnl::error into an INTERNAL status: dnnl::error never leaves the engine.
template <typename F>
absl::Status CatchDnnl(absl::string_view what, F&& f) {
  try {
    f();
    return absl::OkStatus();
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat(what, ": oneDNN: ", e.what()));
  }
}

// Sets the OpenMP thread count of this thread for its lifetime. oneDNN fixes a primitive's thread
// count when it is created, so primitives are created inside one of these.
class ScopedThreads {
 public:
  explicit ScopedThreads(int threads) : saved_(omp_get_max_threads()) {
    omp_set_num_threads(threads);
  }
  ~ScopedThreads() { omp_set_num_threads(saved_); }
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;

 private:
  int saved_;
};

}  // namespace aeserve::engine
