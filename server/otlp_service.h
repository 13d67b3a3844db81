// OpenTelemetry in: `opentelemetry.proto.collector.metrics.v1.MetricsService/Export` (OTLP/gRPC) on
// the gRPC port. Gauge and sum number points become the series Ingest reads, as Prometheus's own
// OTLP translation names them: the metric name and attribute keys with every character outside
// [a-zA-Z0-9_:] as '_' (system.cpu.time -> system_cpu_time), the resource's attributes and then
// the point's as labels. The same bindings, rows and results as remote write (ingest.h). The
// answer's partial_success counts the points refused (NaN or no recorded value, late, over a
// bound) with the reason; points no binding selects are ignored, as for remote write.
#pragma once

#include "opentelemetry/proto/collector/metrics/v1/metrics_service.grpc.pb.h"
#include "prometheus/remote.pb.h"
#include "server/auth.h"
#include "server/ingest.h"
#include "server/raw_call.h"

namespace aeserve::server {

namespace otlp = opentelemetry::proto::collector::metrics::v1;

// The points of `request` as remote-write series (one sample each); `skipped` counts points with
// no value (flag NO_RECORDED_VALUE or neither value set).
prometheus::WriteRequest FromOtlp(const otlp::ExportMetricsServiceRequest& request,
                                  uint64_t* skipped);

using RawOtlpService = otlp::MetricsService::WithRawCallbackMethod_Export<
    WithStreamedMethods<otlp::MetricsService::Service>>;

class OtlpService final : public RawOtlpService {
 public:
  // With `auth` enabled the token is checked before the request is read (raw_call.h).
  OtlpService(Ingest* ingest, const Authorizer* auth);

  using Raw = grpc::ByteBuffer;
  grpc::ServerUnaryReactor* Export(grpc::CallbackServerContext* ctx, const Raw* req,
                                   Raw* resp) override;

 private:
  UnaryHandler<otlp::ExportMetricsServiceRequest, otlp::ExportMetricsServiceResponse> Handler();

  Ingest* const ingest_;
  const Authorizer* const auth_;
};

}  // namespace aeserve::server
