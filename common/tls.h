// TLS for gRPC (docs/security.md, "TLS"): a daemon's certificate, key and CA, checked, and
// reloaded on demand (SIGHUP) without dropping connections; channel credentials for clients.
#ifndef TESSERA_COMMON_TLS_H_
#define TESSERA_COMMON_TLS_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/credentials.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace grpc::experimental {
class FileWatcherCertificateProvider;
}  // namespace grpc::experimental

namespace tessera {

// A daemon's TLS files (PEM). cert_file and key_file: TLS on; ca_file also: peers must present
// a certificate from that CA (mutual TLS), and the daemon's own calls to its peers verify them.
struct TlsFiles {
  std::string cert_file;
  std::string key_file;
  std::string ca_file;
  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
};

// Checks that `files` can be used: the certificate chain and the key parse and belong together,
// the CA parses. Errors (INVALID_ARGUMENT) name the file and what is wrong.
absl::Status CheckTlsFiles(const TlsFiles& files);

// A daemon's TLS material. The files are checked, then copied into a private directory that
// gRPC watches (every second); Reload() checks and copies them again, so new connections use
// the new certificate within a second while open ones go on. Thread-safe.
class TlsMaterial {
 public:
  // TLS off when !files.enabled() (then the credentials are insecure).
  static absl::StatusOr<std::unique_ptr<TlsMaterial>> Create(const TlsFiles& files);
  ~TlsMaterial();  // removes the private directory

  bool enabled() const { return files_.enabled(); }
  bool mutual() const { return enabled() && !files_.ca_file.empty(); }
  // Checks the files again and, when they are good, puts them where gRPC reads them; a bad one
  // changes nothing (and is returned).
  absl::Status Reload() ABSL_LOCKS_EXCLUDED(mu_);

  // For listening ports: TLS with this certificate; with a CA, client certificates required
  // and verified.
  std::shared_ptr<grpc::ServerCredentials> ServerCredentials() const;
  // For this daemon's own calls to its peers: verifies them against the CA, presents this
  // certificate. REQUIRES: mutual() (a daemon needs the CA to check whom it calls).
  std::shared_ptr<grpc::ChannelCredentials> PeerCredentials() const;
  // The data plane's TLS context (common/byte_stream.h) as of the last good (re)load; null
  // without TLS.
  std::shared_ptr<SSL_CTX> DataPlaneContext() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit TlsMaterial(TlsFiles files) : files_(std::move(files)) {}
  const TlsFiles files_;
  std::string dir_;  // the private copies gRPC watches
  std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> provider_;
  mutable absl::Mutex mu_;  // one reload at a time
  std::shared_ptr<SSL_CTX> data_plane_ ABSL_GUARDED_BY(mu_);
};

// A client's channel credentials from `credentials` (TLS when tls_ca_file is set, else
// insecure); the files are read now.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientChannelCredentials(
    const Credentials& credentials);

}  // namespace tessera

#endif  // TESSERA_COMMON_TLS_H_
