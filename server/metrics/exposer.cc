// Serves a Registry at /metrics over HTTP with civetweb.
#include "server/metrics/exposer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "civetweb.h"
#include "server/metrics/text_serializer.h"

namespace aeserve::metrics {

std::string Gzip(const std::string& data) {
  z_stream zs{};
  deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&zs, data.size()) + 32, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

absl::StatusOr<std::unique_ptr<Exposer>> Exposer::Start(const std::string& host, int port,
                                                        const Registry* registry) {
  std::unique_ptr<Exposer> e(new Exposer(registry));
  e->host_ = host;
  mg_init_library(0);
  const std::string ports = absl::StrCat(host, ":", port);
  // Idle connections must not starve the scraper: enough workers for a few stray clients, and a
  // request timeout so that a connection that sends nothing frees its worker within 2 s.
  const char* options[] = {
      "listening_ports",   ports.c_str(), "num_threads", "16", "request_timeout_ms", "2000",
      "enable_keep_alive", "no",          nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof callbacks);
  e->ctx_ = mg_start(&callbacks, nullptr, options);
  if (e->ctx_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", ports));
  }
  mg_set_request_handler(e->ctx_, "/metrics", &Exposer::Handle, e.get());
  mg_server_port server_ports[4];
  const int n = mg_get_server_ports(e->ctx_, 4, server_ports);
  e->port_ = n > 0 ? server_ports[0].port : port;
  return e;
}

Exposer::~Exposer() {
  if (ctx_ == nullptr) return;
  // mg_stop waits for civetweb's listener, which only looks at its stop flag between polls of up
  // to 2 s; a connection to the port wakes it at once.
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    mg_stop(ctx_);
    stopped = true;
  });
  for (int i = 0; i < 100 && !stopped; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    // The listening address, or loopback when it listens on every address.
    if (inet_pton(AF_INET, host_.c_str(), &addr.sin_addr) != 1 || addr.sin_addr.s_addr == 0) {
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stopper.join();
}

int Exposer::Handle(mg_connection* conn, void* self) {
  const Exposer* e = static_cast<const Exposer*>(self);
  std::string body = TextSerializer().Serialize(e->registry_->Collect());
  const char* accept = mg_get_header(conn, "Accept-Encoding");
  const bool gzip = accept != nullptr && std::strstr(accept, "gzip") != nullptr;
  if (gzip) body = Gzip(body);
  mg_printf(conn,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            "%sContent-Length: %zu\r\nConnection: close\r\n\r\n",
            gzip ? "Content-Encoding: gzip\r\n" : "", body.size());
  mg_write(conn, body.data(), body.size());
  return 200;
}

}  // namespace aeserve::metrics
