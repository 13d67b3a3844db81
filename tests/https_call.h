// The HTTP test client over TLS (OpenSSL): the server's certificate checked against a CA file and
// the address 127.0.0.1, and optionally a client certificate (mutual TLS).
#pragma once

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>

#include "tests/http_get.h"

namespace aeserve::testing {

struct ClientTls {
  std::string ca_file;              // trusted for the server's certificate
  std::string cert_file, key_file;  // optional: the client's
};

// As HttpCall; status 0 when the connection or the handshake fails (a certificate refused on
// either side) or no reply comes.
inline HttpReply HttpsCall(int port, const ClientTls& tls, const std::string& method,
                           const std::string& path, const std::string& headers,
                           const std::string& body, int timeout_seconds = 10) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                        &SSL_CTX_free);
  if (ctx == nullptr || SSL_CTX_load_verify_locations(ctx.get(), tls.ca_file.c_str(), nullptr) != 1)
    return HttpReply{};
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (!tls.cert_file.empty() &&
      (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.cert_file.c_str()) != 1 ||
       SSL_CTX_use_PrivateKey_file(ctx.get(), tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1)) {
    return HttpReply{};
  }
  const int fd = ConnectLoopback(port, timeout_seconds);
  if (fd < 0) return HttpReply{};
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), &SSL_free);
  X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), "127.0.0.1");
  SSL_set_fd(ssl.get(), fd);
  std::string resp;
  if (SSL_connect(ssl.get()) == 1) {
    const std::string req = HttpRequestText(method, path, headers, body);
    if (SSL_write(ssl.get(), req.data(), static_cast<int>(req.size())) > 0) {
      char buf[65536];
      int n;
      while ((n = SSL_read(ssl.get(), buf, sizeof buf)) > 0) resp.append(buf, n);
    }
  }
  ERR_clear_error();
  ssl.reset();
  close(fd);
  return ParseHttpReply(resp);
}

}  // namespace aeserve::testing
