// civetweb also loads dlopen("libcrypto.so"): the unversioned name exists only where libssl-dev is
// installed (not in the runtime image). This library's soname is libcrypto.so and it depends on
// the real libcrypto.so.3, so civetweb finds it already loaded and its lookups fall through to
// OpenSSL 3 (see civetweb_tls_shim.cc).
#include <openssl/crypto.h>

// A use of libcrypto, so that the linker keeps the dependency.
extern "C" __attribute__((visibility("default"))) unsigned long aeserve_civetweb_crypto_version() {
  return OpenSSL_version_num();
}
