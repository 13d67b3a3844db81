// The Prometheus remote-write endpoint.
#include "server/remote_write.h"

#include <snappy.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/write_view.h"

namespace aeserve::server {
namespace {

int HttpStatusOf(const absl::Status& st) {
  switch (st.code()) {
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kFailedPrecondition:
      return 411;
    case absl::StatusCode::kResourceExhausted:
      return 413;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kInvalidArgument:
      return 400;
    case absl::StatusCode::kDeadlineExceeded:
      return 503;  // a body too slow to arrive: retried (Prometheus drops a batch on 408)
    default:
      return 500;
  }
}

// Every 503 is worth retrying: it says when.
metrics::HttpResponse Reply(int status, std::string body) {
  metrics::HttpResponse r;
  r.status = status;
  r.body = std::move(body) + "\n";
  if (status == 503) r.headers.emplace_back("Retry-After", "1");
  return r;
}

metrics::HttpResponse Reply(const absl::Status& st) {
  return Reply(HttpStatusOf(st), std::string(st.message()));
}

}  // namespace

metrics::HttpResponse HandleRemoteWrite(const metrics::HttpRequest& request, Ingest& ingest,
                                        const Authorizer& auth, const RemoteWriteLimits& limits) {
  if (request.method != "POST") {
    metrics::HttpResponse r = Reply(405, "remote write takes POST");
    r.headers.emplace_back("Allow", "POST");
    return r;
  }
  if (absl::Status st = auth.CheckHeader(request.header("Authorization"), Role::kScore); !st.ok()) {
    return Reply(st);
  }
  const std::string encoding =
      absl::AsciiStrToLower(request.header("Content-Encoding").value_or(""));
  if (encoding != "snappy") {
    return Reply(415, absl::StrCat("remote write bodies are snappy-compressed protobuf "
                                   "(Content-Encoding: snappy); got Content-Encoding '",
                                   encoding, "'"));
  }
  const std::string type = request.header("Content-Type").value_or("application/x-protobuf");
  if (!absl::StartsWithIgnoreCase(type, "application/x-protobuf")) {
    return Reply(415,
                 absl::StrCat("remote write bodies are application/x-protobuf; got '", type, "'"));
  }
  // Remote write 2.0 names its message (proto=io.prometheus.write.v2.Request); read as 1.0 it
  // would look empty and be lost.
  for (absl::string_view param : absl::StrSplit(type, ';')) {
    param = absl::StripAsciiWhitespace(param);
    if (!absl::StartsWithIgnoreCase(param, "proto=")) continue;
    if (param.substr(6) != "prometheus.WriteRequest") {
      return Reply(415, absl::StrCat("only remote write 1.0 (proto=prometheus.WriteRequest) is "
                                     "served; got '",
                                     std::string(param),
                                     "' (set protobuf_message: prometheus.WriteRequest in "
                                     "Prometheus's remote_write)"));
    }
  }
  auto body = request.read_body(limits.max_body_bytes);
  if (!body.ok()) return Reply(body.status());
  size_t decoded_size = 0;
  if (!snappy::GetUncompressedLength(body->data(), body->size(), &decoded_size)) {
    return Reply(400, "body is not snappy-compressed data");
  }
  if (decoded_size > limits.max_decoded_bytes) {
    return Reply(413, absl::StrCat("body decompresses to ", decoded_size,
                                   " bytes, over the limit of ", limits.max_decoded_bytes));
  }
  ByteBudget::Reservation held;
  if (limits.in_flight != nullptr) {
    held = limits.in_flight->Reserve(decoded_size);
    if (decoded_size > 0 && held.bytes() == 0) {
      return Reply(503, "too many remote-write bodies in flight; retry");
    }
  }
  std::string decoded;
  if (!snappy::Uncompress(body->data(), body->size(), &decoded)) {
    return Reply(400, "body is not valid snappy-compressed data");
  }
  WriteView::Shape shape;
  if (absl::Status st = MeasureWriteRequest(decoded, &shape); !st.ok()) {
    return Reply(st);  // INVALID_ARGUMENT: 400
  }
  // The decoded view is held too: up to 16 bytes of it per byte of body (empty labels).
  ByteBudget::Reservation view_held;
  if (limits.in_flight != nullptr) {
    if (decoded_size + shape.bytes() > limits.in_flight->limit()) {
      return Reply(413, absl::StrCat("body decodes to ", shape.series, " series, ", shape.labels,
                                     " labels and ", shape.samples,
                                     " samples, more than this server holds at once: send "
                                     "fewer per request"));
    }
    view_held = limits.in_flight->Reserve(shape.bytes());
    if (shape.bytes() > 0 && view_held.bytes() == 0) {
      return Reply(503, "too many remote-write bodies in flight; retry");
    }
  }
  WriteView write;
  DecodeWriteRequest(decoded, shape, &write);
  auto counts = ingest.Write(write);
  if (!counts.ok()) return Reply(counts.status());
  return Reply(200, absl::StrCat("accepted ", counts->accepted, ", unmatched ", counts->unmatched,
                                 ", late ", counts->late, ", limited ", counts->limited,
                                 ", invalid ", counts->invalid, "; rows scored ", counts->rows));
}

}  // namespace aeserve::server
