// The Prometheus remote-write endpoint (POST /api/v1/write, remote write 1.0): checks the request
// the way the specification asks — the token before the body is read, Content-Encoding snappy,
// a size bound on the compressed and the decompressed body — decodes the WriteRequest and hands
// it to Ingest. Statuses follow the specification: 2xx when taken, 400/413/415 for a request that
// must not be retried (with the reason in the body), 401/403 for tokens, 503 with Retry-After when
// the scoring queue is too full, so Prometheus backs off and sends it again.
#pragma once

#include <cstdint>

#include "server/auth.h"
#include "server/byte_budget.h"
#include "server/ingest.h"
#include "server/metrics/exposer.h"

namespace aeserve::server {

struct RemoteWriteLimits {
  uint64_t max_body_bytes = 4 << 20;      // compressed, as sent
  uint64_t max_decoded_bytes = 16 << 20;  // after snappy
  // Decoded bytes of all requests being parsed and ingested at once (null: no bound); a request
  // that does not fit gets 503 (retried).
  ByteBudget* in_flight = nullptr;
};

metrics::HttpResponse HandleRemoteWrite(const metrics::HttpRequest& request, Ingest& ingest,
                                        const Authorizer& auth, const RemoteWriteLimits& limits);

}  // namespace aeserve::server
