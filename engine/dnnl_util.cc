// Small helpers at the one boundary where aeserve calls oneDNN.
#include "engine/dnnl_util.h"

namespace aeserve::engine {

dnnl::algorithm AlgorithmOf(v1::Activation a) {
  switch (a) {
    case v1::ACTIVATION_RELU:
    case v1::ACTIVATION_LEAKY_RELU:
      return dnnl::algorithm::eltwise_relu;
    case v1::ACTIVATION_TANH:
      return dnnl::algorithm::eltwise_tanh;
    case v1::ACTIVATION_SIGMOID:
      return dnnl::algorithm::eltwise_logistic;
    case v1::ACTIVATION_ELU:
      return dnnl::algorithm::eltwise_elu;
    default:
      return dnnl::algorithm::eltwise_linear;
  }
}

float AlphaOf(v1::Activation a, float leaky_relu_slope) {
  switch (a) {
    case v1::ACTIVATION_LEAKY_RELU:
      return leaky_relu_slope;
    case v1::ACTIVATION_ELU:
      return 1.0f;
    case v1::ACTIVATION_LINEAR:
      return 1.0f;  // eltwise_linear: alpha * x + beta
    default:
      return 0.0f;
  }
}

}  // namespace aeserve::engine
