// Serves a Registry at /metrics over HTTP with civetweb.
#include "server/metrics/exposer.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

namespace {

// A shim fit to load into a process that holds a TLS key: a regular file owned by root or by
// this user, writable by no one else.
absl::Status Trusted(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return absl::NotFoundError(path);
  if (!S_ISREG(st.st_mode) || (st.st_uid != 0 && st.st_uid != geteuid()) ||
      (st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        path, " is not a regular file owned by root or this user and writable only by it"));
  }
  return absl::OkStatus();
}

// Loads civetweb_tls_shim.cc's and civetweb_crypto_shim.cc's libraries (see there why): next to
// this executable, in ../lib/aeserve, or where the build made them.
absl::Status LoadTlsShims() {
  static const absl::Status loaded = [] {
    std::vector<std::string> dirs;
    std::error_code ec;
    const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) {
      dirs.push_back(exe.parent_path().string());
      dirs.push_back((exe.parent_path() / "../lib/aeserve").string());
    }
    dirs.push_back(std::filesystem::path(AESERVE_CIVETWEB_TLS_SHIM).parent_path().string());
    std::vector<std::string> problems;
    for (const char* built : {AESERVE_CIVETWEB_CRYPTO_SHIM, AESERVE_CIVETWEB_TLS_SHIM}) {
      const std::string name = std::filesystem::path(built).filename().string();
      bool done = false;
      for (const std::string& dir : dirs) {
        const std::string p = (std::filesystem::path(dir) / name).string();
        if (!std::filesystem::exists(p, ec)) continue;
        if (absl::Status st = Trusted(p); !st.ok()) {
          problems.push_back(std::string(st.message()));
          continue;
        }
        if (dlopen(p.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
          problems.push_back(dlerror());
          continue;
        }
        done = true;
        break;
      }
      if (!done) {
        return absl::FailedPreconditionError(
            absl::StrCat("HTTPS: ", name, " not loaded (looked in: ", absl::StrJoin(dirs, ", "),
                         ")", problems.empty() ? "" : ": ", absl::StrJoin(problems, "; ")));
      }
    }
    // civetweb loads OpenSSL now, finding the shims.
    if ((mg_init_library(MG_FEATURES_TLS) & MG_FEATURES_TLS) == 0) {
      return absl::InternalError("HTTPS: civetweb could not load OpenSSL");
    }
    return absl::OkStatus();
  }();
  return loaded;
}

std::string OpenSslError() {
  std::string out;
  char buf[256];
  while (unsigned long e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof buf);
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out.empty() ? "unknown error" : out;
}

}  // namespace

int Exposer::InitTls(void* ssl_ctx, void* self) {
  Exposer* e = static_cast<Exposer*>(self);
  SSL_CTX* ctx = static_cast<SSL_CTX*>(ssl_ctx);
  const ExposerTls& t = *e->tls_;
  ERR_clear_error();
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // An encrypted key fails here (no prompt on a terminal); sessions resume (with client
  // certificates OpenSSL refuses resumption without a session id context).
  SSL_CTX_set_default_passwd_cb(ctx, [](char*, int, int, void*) { return 0; });
  static const unsigned char kContext[] = "aeserve-ingest";
  SSL_CTX_set_session_id_context(ctx, kContext, sizeof kContext - 1);
  if (SSL_CTX_use_certificate_chain_file(ctx, t.cert_file.c_str()) != 1) {
    e->tls_error_ = absl::StrCat("certificate ", t.cert_file, ": ", OpenSslError());
    return -1;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, t.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    e->tls_error_ = absl::StrCat("key ", t.key_file, ": ", OpenSslError());
    return -1;
  }
  if (!t.client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, t.client_ca_file.c_str(), nullptr) != 1) {
      e->tls_error_ = absl::StrCat("client CA ", t.client_ca_file, ": ", OpenSslError());
      return -1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    // The CAs it accepts, named to clients choosing a certificate.
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(t.client_ca_file.c_str())) {
      SSL_CTX_set_client_CA_list(ctx, names);
    }
  }
  return 1;  // configured here: civetweb loads no certificate of its own
}

absl::StatusOr<std::unique_ptr<Exposer>> Exposer::Start(const std::string& host, int port,
                                                        const Registry* registry,
                                                        const ExposerTls* tls) {
  std::unique_ptr<Exposer> e(new Exposer(registry));
  e->host_ = host;
  mg_init_library(0);
  if (tls != nullptr) {
    if (absl::Status st = LoadTlsShims(); !st.ok()) return st;
    e->tls_ = *tls;
  }
  const std::string ports = absl::StrCat(host, ":", port, tls != nullptr ? "s" : "");
  // Idle connections must not starve the scraper: enough workers for a few stray clients, and a
  // request timeout so that a connection that sends nothing frees its worker within 2 s.
  const char* options[] = {
      "listening_ports",   ports.c_str(), "num_threads", "16", "request_timeout_ms", "2000",
      "enable_keep_alive", "no",          nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof callbacks);
  if (tls != nullptr) callbacks.init_ssl = &Exposer::InitTls;
  e->ctx_ = mg_start(&callbacks, e.get(), options);
  if (e->ctx_ == nullptr) {
    if (!e->tls_error_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("HTTPS on ", ports, ": ", e->tls_error_));
    }
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", ports));
  }
  if (registry != nullptr) mg_set_request_handler(e->ctx_, "/metrics", &Exposer::Handle, e.get());
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

void Exposer::Route(const std::string& uri, Handler handler) {
  routes_.push_back(std::move(handler));
  // "$": this path only, not every path it begins (civetweb matches prefixes otherwise).
  mg_set_request_handler(ctx_, (uri + "$").c_str(), &Exposer::HandleRoute, &routes_.back());
}

namespace {

constexpr std::chrono::seconds kBodySeconds{10};  // to receive a whole request body

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 405:
      return "Method Not Allowed";
    case 411:
      return "Length Required";
    case 413:
      return "Payload Too Large";
    case 408:
      return "Request Timeout";
    case 415:
      return "Unsupported Media Type";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

}  // namespace

int Exposer::HandleRoute(mg_connection* conn, void* handler) {
  const mg_request_info* info = mg_get_request_info(conn);
  HttpRequest req;
  req.method = info->request_method != nullptr ? info->request_method : "";
  req.header = [conn](const char* name) -> std::optional<std::string> {
    const char* v = mg_get_header(conn, name);
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
  req.read_body = [conn, info](uint64_t max_bytes) -> absl::StatusOr<std::string> {
    const long long declared = info->content_length;
    if (declared < 0) return absl::FailedPreconditionError("a Content-Length header is required");
    if (static_cast<uint64_t>(declared) > max_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("body of ", declared, " bytes is over the limit of ", max_bytes));
    }
    std::string body(static_cast<size_t>(declared), '\0');
    size_t got = 0;
    // civetweb's request timeout bounds each read, not the whole body: a client that sends a
    // byte a second would hold this worker (and starve /metrics) for as long as it likes.
    const auto deadline = std::chrono::steady_clock::now() + kBodySeconds;
    while (got < body.size()) {
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("body not received within ",
                                                        kBodySeconds.count(), " s (", got, " of ",
                                                        declared, " bytes)"));
      }
      const int n = mg_read(conn, body.data() + got, std::min<size_t>(body.size() - got, 1 << 16));
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    if (got < body.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("body ended after ", got, " of ", declared, " bytes"));
    }
    return body;
  };
  const HttpResponse r = (*static_cast<const Handler*>(handler))(req);
  std::string head = absl::StrCat(
      "HTTP/1.1 ", r.status, " ", Reason(r.status), "\r\nContent-Type: ", r.content_type,
      "\r\nContent-Length: ", r.body.size(), "\r\nConnection: close\r\n");
  for (const auto& [name, value] : r.headers) absl::StrAppend(&head, name, ": ", value, "\r\n");
  head += "\r\n";
  mg_write(conn, head.data(), head.size());
  mg_write(conn, r.body.data(), r.body.size());
  return r.status;
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
