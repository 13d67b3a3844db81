// Counts every aeserve call by method and final status, in one place: a gRPC server interceptor
// sees the status each call ends with, whichever path answered it (a refused token, a body that
// does not parse, a handler, the end of a stream, a full queue). Unary calls also get their time
// from arrival to status in aeserve_request_duration_seconds; streams get none there (StreamScore
// records each batch itself; a watch or an upload lasts as long as its client wants).
#pragma once

#include <string>

#include "absl/container/flat_hash_map.h"
#include "grpcpp/support/server_interceptor.h"
#include "server/server_metrics.h"

namespace aeserve::server {

class RpcMetricsFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // Registers every method of the aeserve.v1 services with `metrics` (which outlives the server).
  explicit RpcMetricsFactory(ServerMetrics* metrics);
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

  struct Method {
    std::string name;  // the method's short name, the `rpc` label
    bool streaming = false;
  };

 private:
  ServerMetrics* metrics_;
  absl::flat_hash_map<std::string, Method> methods_;  // by path: "/aeserve.v1.Scoring/Score"
};

}  // namespace aeserve::server
