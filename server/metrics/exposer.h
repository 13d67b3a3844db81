// Serves a Registry at /metrics over HTTP with civetweb (what prometheus-cpp's Exposer uses):
// Content-Type text/plain; version=0.0.4, gzip when the scraper accepts it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/metrics/metrics.h"

struct mg_context;
struct mg_connection;

namespace aeserve::metrics {

class Exposer {
 public:
  // `port` 0 picks a free port (see port()).
  static absl::StatusOr<std::unique_ptr<Exposer>> Start(const std::string& host, int port,
                                                        const Registry* registry);
  ~Exposer();
  int port() const { return port_; }

 private:
  explicit Exposer(const Registry* registry) : registry_(registry) {}
  static int Handle(mg_connection* conn, void* self);

  const Registry* registry_;
  mg_context* ctx_ = nullptr;
  std::string host_;
  int port_ = 0;
};

// gzip (RFC 1952) of `data`, for Content-Encoding: gzip.
std::string Gzip(const std::string& data);

}  // namespace aeserve::metrics
