// A minimal HTTP/1.0 client (no chunked replies) over loopback for tests (no curl on a fresh
// machine): GET, and any request with a body.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace aeserve::testing {

struct HttpReply {
  int status = 0;  // 0 = no reply
  std::string headers, body;
};

// `method` `path` with `headers` (each line ending in \r\n; a Content-Length for `body` is added
// unless `headers` has one) and `body`.
// Waits at most `timeout_seconds` for each read of the reply.
inline HttpReply HttpCall(int port, const std::string& method, const std::string& path,
                          const std::string& headers, const std::string& body,
                          int timeout_seconds = 10) {
  HttpReply r;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{timeout_seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return r;
  }
  std::string req = method + " " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n" + headers;
  if (headers.find("Content-Length:") == std::string::npos && !body.empty()) {
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "Connection: close\r\n\r\n" + body;
  size_t sent = 0;
  while (sent < req.size()) {
    const ssize_t n = write(fd, req.data() + sent, req.size() - sent);
    if (n <= 0) break;  // the server may answer (413) and close before reading everything
    sent += static_cast<size_t>(n);
  }
  std::string resp;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) resp.append(buf, n);
  close(fd);
  const size_t split = resp.find("\r\n\r\n");
  if (split == std::string::npos || resp.size() < 12) return r;
  r.status = std::atoi(resp.substr(9, 3).c_str());
  r.headers = resp.substr(0, split);
  r.body = resp.substr(split + 4);
  return r;
}

// The response body of GET `path` on 127.0.0.1:`port`, or "" on failure.
inline std::string HttpGet(int port, const std::string& path, std::string* headers = nullptr,
                           const std::string& extra_headers = "") {
  HttpReply r = HttpCall(port, "GET", path, extra_headers, "", 5);
  if (headers != nullptr) *headers = r.headers;
  return r.body;
}

}  // namespace aeserve::testing
