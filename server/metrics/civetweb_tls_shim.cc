// civetweb 1.15 as Debian builds it loads OpenSSL at run time — dlopen("libssl.so"), then dlsym
// for each function it uses — and one of those, SSL_get_peer_certificate, is no longer exported
// by OpenSSL 3 (it became a macro for SSL_get1_peer_certificate). Without it civetweb's TLS
// completes the handshake and then drops every connection (and crashes on stop).
//
// This library's soname is libssl.so and it depends on the real libssl.so.3. The exposer loads it
// before civetweb starts TLS; civetweb's dlopen("libssl.so") then finds it already loaded (by
// soname), its lookup of SSL_get_peer_certificate finds the function below, and every other
// lookup falls through to OpenSSL 3 itself.
#include <openssl/ssl.h>

#undef SSL_get_peer_certificate

extern "C" __attribute__((visibility("default"))) X509* SSL_get_peer_certificate(const SSL* s) {
  return SSL_get1_peer_certificate(s);  // a new reference, as OpenSSL 1.1's was
}
