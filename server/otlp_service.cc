// OpenTelemetry in: OTLP/gRPC metrics export into Ingest.
#include "server/otlp_service.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "server/status_util.h"

namespace aeserve::server {
namespace {

// Prometheus's translation of OTLP names: characters outside [a-zA-Z0-9_:] become '_' (':' too
// in label names), and a leading digit gets a '_' before it.
std::string Sanitized(const std::string& in, bool label) {
  std::string out;
  out.reserve(in.size() + 1);
  if (!in.empty() && std::isdigit(static_cast<unsigned char>(in[0]))) out.push_back('_');
  for (char c : in) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (!label && c == ':');
    out.push_back(ok ? c : '_');
  }
  return out;
}

// An attribute's value as a label value; false for bytes and nested values (not labels).
bool LabelValue(const otlp::AnyValue& v, std::string* out) {
  switch (v.value_case()) {
    case otlp::AnyValue::kStringValue:
      *out = v.string_value();
      return true;
    case otlp::AnyValue::kBoolValue:
      *out = v.bool_value() ? "true" : "false";
      return true;
    case otlp::AnyValue::kIntValue:
      *out = std::to_string(v.int_value());
      return true;
    case otlp::AnyValue::kDoubleValue: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", v.double_value());
      *out = buf;
      return true;
    }
    default:
      return false;
  }
}

void AddAttributes(const google::protobuf::RepeatedPtrField<otlp::KeyValue>& attributes,
                   prometheus::TimeSeries* ts) {
  for (const otlp::KeyValue& kv : attributes) {
    std::string value;
    if (kv.key().empty() || !LabelValue(kv.value(), &value)) continue;
    const std::string name = Sanitized(kv.key(), true);
    // A point's attribute replaces the resource's of the same name.
    prometheus::Label* label = nullptr;
    for (prometheus::Label& l : *ts->mutable_labels()) {
      if (l.name() == name) label = &l;
    }
    if (label == nullptr) label = ts->add_labels();
    label->set_name(name);
    label->set_value(std::move(value));
  }
}

constexpr uint32_t kNoRecordedValue = 1;  // DataPointFlags.FLAG_NO_RECORDED_VALUE

}  // namespace

prometheus::WriteRequest FromOtlp(const otlp::ExportMetricsServiceRequest& request,
                                  uint64_t* skipped) {
  prometheus::WriteRequest out;
  *skipped = 0;
  for (const otlp::ResourceMetrics& rm : request.resource_metrics()) {
    for (const otlp::ScopeMetrics& sm : rm.scope_metrics()) {
      for (const otlp::Metric& m : sm.metrics()) {
        const google::protobuf::RepeatedPtrField<otlp::NumberDataPoint>* points = nullptr;
        if (m.has_gauge()) points = &m.gauge().data_points();
        if (m.has_sum()) points = &m.sum().data_points();
        if (points == nullptr) continue;  // histograms and summaries are not read
        const std::string name = Sanitized(m.name(), false);
        for (const otlp::NumberDataPoint& p : *points) {
          if ((p.flags() & kNoRecordedValue) != 0 ||
              p.value_case() == otlp::NumberDataPoint::VALUE_NOT_SET) {
            ++*skipped;
            continue;
          }
          prometheus::TimeSeries* ts = out.add_timeseries();
          prometheus::Label* n = ts->add_labels();
          n->set_name("__name__");
          n->set_value(name);
          AddAttributes(rm.resource().attributes(), ts);
          AddAttributes(p.attributes(), ts);
          prometheus::Sample* s = ts->add_samples();
          s->set_timestamp(static_cast<int64_t>(p.time_unix_nano() / 1000000));
          s->set_value(p.value_case() == otlp::NumberDataPoint::kAsDouble
                           ? p.as_double()
                           : static_cast<double>(p.as_int()));
        }
      }
    }
  }
  return out;
}

OtlpService::OtlpService(Ingest* ingest, const Authorizer* auth) : ingest_(ingest), auth_(auth) {
  if (!auth_->enabled()) return;
  StreamUnary(
      "opentelemetry.proto.collector.metrics.v1.MetricsService", 0,
      [this](grpc::CallbackServerContext* ctx) { return auth_->Check(ctx, Role::kScore); },
      Handler());
}

grpc::ServerUnaryReactor* OtlpService::Export(grpc::CallbackServerContext* ctx, const Raw* body,
                                              Raw* out) {
  return Buffered(ctx, body, out, Handler());
}

UnaryHandler<otlp::ExportMetricsServiceRequest, otlp::ExportMetricsServiceResponse>
OtlpService::Handler() {
  return
      [this](
          grpc::CallbackServerContext* ctx,
          UnaryCall<otlp::ExportMetricsServiceRequest, otlp::ExportMetricsServiceResponse>* call) {
        if (grpc::Status st = auth_->Check(ctx, Role::kScore); !st.ok()) {
          call->Reply(st);
          return;
        }
        uint64_t skipped = 0;
        const prometheus::WriteRequest write = FromOtlp(call->request(), &skipped);
        // The rows are scored on the workers; this gRPC thread does not wait for them.
        auto counts = ingest_->Write(ViewOf(write), /*wait=*/false);
        if (!counts.ok()) {
          call->Reply(ToGrpc(counts.status()));  // UNAVAILABLE: exporters retry with backoff
          return;
        }
        const uint64_t rejected = skipped + counts->invalid + counts->late + counts->limited;
        if (rejected > 0) {
          auto* partial = call->response()->mutable_partial_success();
          partial->set_rejected_data_points(static_cast<int64_t>(rejected));
          partial->set_error_message(absl::StrCat(
              skipped + counts->invalid, " without a finite value, ", counts->late,
              " at or before a row already scored, ", counts->limited, " over a bound"));
        }
        call->Reply(grpc::Status::OK);
      };
}

}  // namespace aeserve::server
