// One interceptor per call: records the status the call ends with, once.
#include "server/rpc_metrics.h"

#include <atomic>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"

namespace aeserve::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

class RpcMetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  RpcMetricsInterceptor(ServerMetrics* metrics, const RpcMetricsFactory::Method* method)
      : metrics_(metrics), method_(method) {}
  ~RpcMetricsInterceptor() override {
    // A call that ended without a status of its own (gRPC's core gave up on it).
    Record(grpc::StatusCode::CANCELLED);
  }
  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    // Recorded before the status leaves, so a client that has its answer sees it counted.
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      Record(m->GetSendStatus().error_code());
    }
    m->Proceed();
  }

 private:
  // Once per call. The hooks of one call run on whichever gRPC thread completes its operations
  // (gRPC orders them, but invisibly to TSan), so the flag is atomic.
  void Record(grpc::StatusCode code) {
    if (recorded_.exchange(true, std::memory_order_acq_rel)) return;
    const double seconds =
        method_->streaming
            ? -1
            : std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    metrics_->RecordRequest(method_->name, code, seconds);
  }
  ServerMetrics* metrics_;
  const RpcMetricsFactory::Method* method_;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::atomic<bool> recorded_{false};
};

}  // namespace

RpcMetricsFactory::RpcMetricsFactory(ServerMetrics* metrics) : metrics_(metrics) {
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const char* service : {"aeserve.v1.Scoring", "aeserve.v1.ModelAdmin"}) {
    const google::protobuf::ServiceDescriptor* s = pool->FindServiceByName(service);
    if (s == nullptr) continue;  // not linked in: its calls are not counted
    for (int i = 0; i < s->method_count(); ++i) {
      const google::protobuf::MethodDescriptor* m = s->method(i);
      Method& entry = methods_[absl::StrCat("/", service, "/", m->name())];
      entry.name = m->name();
      entry.streaming = m->client_streaming() || m->server_streaming();
      metrics_->AddRpc(entry.name);
    }
  }
}

grpc::experimental::Interceptor* RpcMetricsFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  auto it = methods_.find(info->method());
  if (it == methods_.end()) return nullptr;  // health checks, reflection: not counted
  return new RpcMetricsInterceptor(metrics_, &it->second);
}

}  // namespace aeserve::server
