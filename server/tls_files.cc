// Reads and checks the server's TLS files with OpenSSL (which gRPC itself uses).
#include "server/tls_files.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "engine/file_io.h"

namespace aeserve::server {
namespace {

constexpr uint64_t kMaxPemBytes = 1 << 20;

absl::StatusOr<std::string> ReadPem(const char* flag, const std::string& path) {
  auto text = engine::ReadRegularFile(path, kMaxPemBytes);
  if (!text.ok())
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", text.status().message()));
  return *text;
}

template <typename T, void (*Free)(T*)>
using Owned = std::unique_ptr<T, std::integral_constant<decltype(Free), Free>>;

// The first certificate in PEM text; INVALID_ARGUMENT naming the flag and file when there is none.
absl::StatusOr<Owned<X509, X509_free>> FirstCertificate(const std::string& pem, const char* flag,
                                                        const std::string& path) {
  Owned<BIO, BIO_free_all> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Owned<X509, X509_free> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " ", path, " holds no PEM certificate"));
  }
  return cert;
}

}  // namespace

absl::StatusOr<TlsFiles> ReadTlsFiles(const Options& o) {
  if (o.tls_cert.empty() || o.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together: give both");
  }
  TlsFiles f;
  auto cert = ReadPem("tls_cert", o.tls_cert);
  if (!cert.ok()) return cert.status();
  auto key = ReadPem("tls_key", o.tls_key);
  if (!key.ok()) return key.status();
  f.cert = *std::move(cert);
  f.key = *std::move(key);
  if (!o.tls_client_ca.empty()) {
    auto ca = ReadPem("tls_client_ca", o.tls_client_ca);
    if (!ca.ok()) return ca.status();
    f.client_ca = *std::move(ca);
  }
  auto x509 = FirstCertificate(f.cert, "tls_cert", o.tls_cert);
  if (!x509.ok()) return x509.status();
  Owned<BIO, BIO_free_all> kbio(BIO_new_mem_buf(f.key.data(), static_cast<int>(f.key.size())));
  Owned<EVP_PKEY, EVP_PKEY_free> pkey(
      PEM_read_bio_PrivateKey(kbio.get(), nullptr, nullptr, nullptr));
  if (!pkey) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_key ", o.tls_key, " holds no PEM private key (or it is encrypted)"));
  }
  if (X509_check_private_key(x509->get(), pkey.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls_key ", o.tls_key, " does not match the certificate in --tls_cert ", o.tls_cert));
  }
  if (!o.tls_client_ca.empty()) {
    if (auto ca = FirstCertificate(f.client_ca, "tls_client_ca", o.tls_client_ca); !ca.ok())
      return ca.status();
  }
  return f;
}

}  // namespace aeserve::server
