// Serves a Registry at /metrics over HTTP with civetweb (what prometheus-cpp's Exposer uses):
// Content-Type text/plain; version=0.0.4, gzip when the scraper accepts it. Other paths can be
// routed to handlers (the ingest endpoint, /api/v1/write).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "server/metrics/metrics.h"

struct mg_context;
struct mg_connection;

namespace aeserve::metrics {

// A request as a route handler sees it: headers first; the body only when the handler asks.
struct HttpRequest {
  std::string method;
  std::function<std::optional<std::string>(const char* name)> header;
  // Reads the whole body: FAILED_PRECONDITION without a Content-Length (answer 411),
  // RESOURCE_EXHAUSTED when it declares more than `max_bytes` (answer 413; nothing is read),
  // INVALID_ARGUMENT when the connection ends before it does.
  std::function<absl::StatusOr<std::string>(uint64_t max_bytes)> read_body;
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "text/plain; charset=utf-8";
  std::vector<std::pair<std::string, std::string>> headers;
};

// HTTPS instead of HTTP: PEM files (the certificate file may hold its chain); with a client CA,
// clients must present a certificate it signed.
struct ExposerTls {
  std::string cert_file, key_file, client_ca_file;
};

class Exposer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  // `port` 0 picks a free port (see port()). `registry` null: no /metrics (routes only).
  static absl::StatusOr<std::unique_ptr<Exposer>> Start(const std::string& host, int port,
                                                        const Registry* registry,
                                                        const ExposerTls* tls = nullptr);
  ~Exposer();
  int port() const { return port_; }
  // Serves `uri` with `handler` (called on civetweb's threads, concurrently).
  void Route(const std::string& uri, Handler handler);

 private:
  explicit Exposer(const Registry* registry) : registry_(registry) {}
  static int Handle(mg_connection* conn, void* self);
  static int HandleRoute(mg_connection* conn, void* handler);
  // civetweb's init_ssl callback: configures its SSL_CTX from tls_ (1), or -1 with tls_error_.
  static int InitTls(void* ssl_ctx, void* self);

  const Registry* registry_;
  std::list<Handler> routes_;
  mg_context* ctx_ = nullptr;
  std::string host_;
  int port_ = 0;
  std::optional<ExposerTls> tls_;
  std::string tls_error_;
};

// gzip (RFC 1952) of `data`, for Content-Encoding: gzip.
std::string Gzip(const std::string& data);

}  // namespace aeserve::metrics
