// A data-plane connection's bytes (docs/data_plane.md): plain TCP, or TLS over it with OpenSSL
// (docs/security.md, "TLS on the data plane"). One thread reads while others write; writes are
// serialized by the caller (one writer at a time).
#ifndef TESSERA_COMMON_BYTE_STREAM_H_
#define TESSERA_COMMON_BYTE_STREAM_H_

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/credentials.h"
#include "common/socket_io.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace tessera {

struct TlsFiles;

class ByteStream {
 public:
  virtual ~ByteStream() = default;
  int fd() const { return fd_; }
  bool tls() const { return tls_; }

  // Reads 1 to n bytes, waiting at most timeout_ms (-1: no limit): the count; 0 at the end of
  // the stream; -1 on an error; -2 when the time ran out.
  virtual ssize_t ReadSome(void* buf, size_t n, int timeout_ms) = 0;
  // Writes iov[*first..] (consuming it) until all is sent, or, unless `block`, until the
  // connection takes no more without waiting (as socket_io.h's WriteSome). A write that would
  // block must be continued with the same iov (the same bytes from the same place).
  virtual WriteResult WriteSome(std::vector<iovec>& iov, size_t* first, bool block) = 0;

  bool ReadFull(void* buf, size_t n);
  // The same within `timeout_ms` (false when it runs out).
  bool ReadFullWithin(void* buf, size_t n, int timeout_ms);
  bool Discard(size_t n);
  bool WriteAll(std::vector<iovec>& iov);
  // Ends the stream both ways: a blocked reader or writer returns. Does not close the fd.
  void Shutdown();

 protected:
  ByteStream(int fd, bool tls) : fd_(fd), tls_(tls) {}
  const int fd_;
  const bool tls_;
};

// A plain stream over `fd` (not owned).
std::unique_ptr<ByteStream> PlainStream(int fd);

// TLS contexts for the data plane, from a daemon's files (its certificate, and with a CA,
// client certificates required and verified) or a client's credentials (the daemons verified
// against the CA; a client certificate when given). Errors name the file.
absl::StatusOr<std::shared_ptr<SSL_CTX>> ServerTlsContext(const TlsFiles& files);
absl::StatusOr<std::shared_ptr<SSL_CTX>> ClientTlsContext(const Credentials& credentials);

// The TLS handshake on a connected `fd` (not owned), within timeout_ms; the client checks that
// the daemon's certificate names `host` (an IP address or a DNS name).
absl::StatusOr<std::unique_ptr<ByteStream>> AcceptTls(int fd, SSL_CTX* ctx, int timeout_ms);
absl::StatusOr<std::unique_ptr<ByteStream>> ConnectTls(int fd, SSL_CTX* ctx,
                                                       const std::string& host, int timeout_ms);

}  // namespace tessera

#endif  // TESSERA_COMMON_BYTE_STREAM_H_
