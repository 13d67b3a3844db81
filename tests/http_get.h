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

// The request's bytes: `method` `path` with `headers` (each line ending in \r\n; a
// Content-Length for `body` is added unless `headers` has one) and `body`.
inline std::string HttpRequestText(const std::string& method, const std::string& path,
                                   const std::string& headers, const std::string& body) {
  std::string req = method + " " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n" + headers;
  if (headers.find("Content-Length:") == std::string::npos && !body.empty()) {
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  return req + "Connection: close\r\n\r\n" + body;
}

// A whole reply as received (status 0 when it is not one).
inline HttpReply ParseHttpReply(const std::string& resp) {
  HttpReply r;
  const size_t split = resp.find("\r\n\r\n");
  if (split == std::string::npos || resp.size() < 12) return r;
  r.status = std::atoi(resp.substr(9, 3).c_str());
  r.headers = resp.substr(0, split);
  r.body = resp.substr(split + 4);
  return r;
}

// A TCP connection to 127.0.0.1:`port` whose reads wait at most `timeout_seconds`; -1 on failure.
inline int ConnectLoopback(int port, int timeout_seconds) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{timeout_seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// One request (HttpRequestText) and its reply. Waits at most `timeout_seconds` for each read.
inline HttpReply HttpCall(int port, const std::string& method, const std::string& path,
                          const std::string& headers, const std::string& body,
                          int timeout_seconds = 10) {
  const int fd = ConnectLoopback(port, timeout_seconds);
  if (fd < 0) return HttpReply{};
  const std::string req = HttpRequestText(method, path, headers, body);
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
  return ParseHttpReply(resp);
}

// The response body of GET `path` on 127.0.0.1:`port`, or "" on failure.
inline std::string HttpGet(int port, const std::string& path, std::string* headers = nullptr,
                           const std::string& extra_headers = "") {
  HttpReply r = HttpCall(port, "GET", path, extra_headers, "", 5);
  if (headers != nullptr) *headers = r.headers;
  return r.body;
}

}  // namespace aeserve::testing
