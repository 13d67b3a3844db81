// The TLS files of --tls_cert, --tls_key and --tls_client_ca: read with bounds (a directory or a
// FIFO is an error, never a crash or a hang) and checked before gRPC sees them, so that a key that
// does not belong to the certificate is reported as such instead of "cannot listen".
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "server/options.h"

namespace aeserve::server {

struct TlsFiles {
  std::string cert, key, client_ca;  // PEM text
};

// INVALID_ARGUMENT naming the flag and the problem: unreadable, not PEM, or a key that does not
// match the certificate.
absl::StatusOr<TlsFiles> ReadTlsFiles(const Options& o);

}  // namespace aeserve::server
