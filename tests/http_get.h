// A minimal HTTP/1.0 GET (no chunked replies) over loopback for tests (no curl on a fresh machine).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace aeserve::testing {

// The response body of GET `path` on 127.0.0.1:`port`, or "" on failure.
inline std::string HttpGet(int port, const std::string& path, std::string* headers = nullptr,
                           const std::string& extra_headers = "") {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n" + extra_headers +
                          "Connection: close\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "";
  }
  std::string resp;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) resp.append(buf, n);
  close(fd);
  const size_t split = resp.find("\r\n\r\n");
  if (split == std::string::npos) return "";
  if (headers != nullptr) *headers = resp.substr(0, split);
  return resp.substr(split + 4);
}

}  // namespace aeserve::testing
