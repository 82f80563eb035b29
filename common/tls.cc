#include "common/tls.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/byte_stream.h"

namespace tessera {
namespace {

namespace ex = grpc::experimental;

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrFormat("cannot read %s %s", what, path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The first certificate of `pem` (with the BIO over it), or null.
struct Bio {
  explicit Bio(const std::string& pem)
      : bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()))) {}
  ~Bio() { BIO_free(bio); }
  BIO* bio;
};

std::string OpensslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no PEM data of that kind";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

// Writes `text` to dir/name (mode 0600) through a temporary file and a rename.
absl::Status WritePrivate(const std::string& dir, const std::string& name,
                          const std::string& text) {
  const std::string tmp = absl::StrCat(dir, "/.", name, ".tmp");
  const std::string path = absl::StrCat(dir, "/", name);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  ::chmod(tmp.c_str(), 0600);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckTlsFiles(const TlsFiles& files) {
  if (files.cert_file.empty() != files.key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate file and a key file");
  }
  if (!files.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPem(files.cert_file, "the certificate file");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(files.key_file, "the key file");
    if (!key.ok()) return key.status();
    Bio cert_bio(*cert), key_bio(*key);
    X509* x = PEM_read_bio_X509(cert_bio.bio, nullptr, nullptr, nullptr);
    if (x == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s holds no PEM certificate (%s)", files.cert_file, OpensslError()));
    }
    EVP_PKEY* k = PEM_read_bio_PrivateKey(key_bio.bio, nullptr, nullptr, nullptr);
    if (k == nullptr) {
      X509_free(x);
      return absl::InvalidArgumentError(
          absl::StrFormat("%s holds no PEM private key (%s)", files.key_file, OpensslError()));
    }
    const bool match = X509_check_private_key(x, k) == 1;
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(k);
    if (!match) {
      return absl::InvalidArgumentError(
          absl::StrFormat("the key in %s does not belong to the certificate in %s", files.key_file,
                          files.cert_file));
    }
  }
  if (!files.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPem(files.ca_file, "the CA file");
    if (!ca.ok()) return ca.status();
    Bio ca_bio(*ca);
    X509* x = PEM_read_bio_X509(ca_bio.bio, nullptr, nullptr, nullptr);
    if (x == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s holds no PEM certificate (%s)", files.ca_file, OpensslError()));
    }
    X509_free(x);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TlsMaterial>> TlsMaterial::Create(const TlsFiles& files) {
  std::unique_ptr<TlsMaterial> m(new TlsMaterial(files));
  if (!files.enabled()) {
    if (!files.ca_file.empty()) {
      return absl::InvalidArgumentError(
          "--tls_ca_file needs --tls_cert_file and --tls_key_file (this daemon's own)");
    }
    return m;
  }
  char dir[] = "/tmp/tessera-tls-XXXXXX";  // (mode 0700)
  if (::mkdtemp(dir) == nullptr) return absl::InternalError("cannot create a directory for TLS");
  m->dir_ = dir;
  if (absl::Status s = m->Reload(); !s.ok()) return s;
  const std::string key = m->dir_ + "/key.pem", cert = m->dir_ + "/cert.pem";
  m->provider_ =
      files.ca_file.empty()
          ? std::make_shared<ex::FileWatcherCertificateProvider>(key, cert, 1)
          : std::make_shared<ex::FileWatcherCertificateProvider>(key, cert, m->dir_ + "/ca.pem", 1);
  return m;
}

TlsMaterial::~TlsMaterial() {
  provider_.reset();
  if (!dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

absl::Status TlsMaterial::Reload() {
  if (!enabled()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckTlsFiles(files_); !s.ok()) return s;
  absl::StatusOr<std::string> cert = ReadPem(files_.cert_file, "the certificate file");
  absl::StatusOr<std::string> key = ReadPem(files_.key_file, "the key file");
  if (!cert.ok()) return cert.status();
  if (!key.ok()) return key.status();
  absl::StatusOr<std::shared_ptr<SSL_CTX>> data_plane = ServerTlsContext(files_);
  if (!data_plane.ok()) return data_plane.status();
  if (!files_.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPem(files_.ca_file, "the CA file");
    if (!ca.ok()) return ca.status();
    if (absl::Status s = WritePrivate(dir_, "ca.pem", *ca); !s.ok()) return s;
  }
  if (absl::Status s = WritePrivate(dir_, "key.pem", *key); !s.ok()) return s;
  if (absl::Status s = WritePrivate(dir_, "cert.pem", *cert); !s.ok()) return s;
  data_plane_ = *std::move(data_plane);
  return absl::OkStatus();
}

std::shared_ptr<SSL_CTX> TlsMaterial::DataPlaneContext() const {
  absl::MutexLock lock(&mu_);
  return data_plane_;
}

std::shared_ptr<grpc::ServerCredentials> TlsMaterial::ServerCredentials() const {
  if (!enabled()) return grpc::InsecureServerCredentials();
  ex::TlsServerCredentialsOptions o(provider_);
  o.watch_identity_key_cert_pairs();
  if (mutual()) {
    o.watch_root_certs();
    o.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return ex::TlsServerCredentials(o);
}

std::shared_ptr<grpc::ChannelCredentials> TlsMaterial::PeerCredentials() const {
  if (!enabled()) return grpc::InsecureChannelCredentials();
  ex::TlsChannelCredentialsOptions o;
  o.set_certificate_provider(provider_);
  o.watch_root_certs();
  o.watch_identity_key_cert_pairs();
  return ex::TlsCredentials(o);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientChannelCredentials(
    const Credentials& c) {
  if (c.tls_ca_file.empty()) {
    if (!c.tls_cert_file.empty() || !c.tls_key_file.empty()) {
      return absl::InvalidArgumentError(
          "a client certificate needs tls_ca_file too (the CA that signed the daemons')");
    }
    return grpc::InsecureChannelCredentials();
  }
  TlsFiles files{c.tls_cert_file, c.tls_key_file, c.tls_ca_file};
  if (absl::Status s = CheckTlsFiles(files); !s.ok()) return s;
  grpc::SslCredentialsOptions o;
  absl::StatusOr<std::string> ca = ReadPem(c.tls_ca_file, "the CA file");
  if (!ca.ok()) return ca.status();
  o.pem_root_certs = *ca;
  if (!c.tls_cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPem(c.tls_cert_file, "the certificate file");
    absl::StatusOr<std::string> key = ReadPem(c.tls_key_file, "the key file");
    if (!cert.ok()) return cert.status();
    if (!key.ok()) return key.status();
    o.pem_cert_chain = *cert;
    o.pem_private_key = *key;
  }
  return grpc::SslCredentials(o);
}

}  // namespace tessera
