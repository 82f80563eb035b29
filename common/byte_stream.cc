#include "common/byte_stream.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/tls.h"

namespace tessera {
namespace {

// Waits until `fd` is ready for `events` or timeout_ms passes (-1: no limit): 1 ready, 0
// timeout, -1 error.
int Wait(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int rc = ::poll(&p, 1, timeout_ms);
    if (rc >= 0) return rc > 0 ? 1 : 0;
    if (errno != EINTR) return -1;
  }
}

class Plain final : public ByteStream {
 public:
  explicit Plain(int fd) : ByteStream(fd, false) {}
  ssize_t ReadSome(void* buf, size_t n, int timeout_ms) override {
    for (;;) {
      if (timeout_ms >= 0) {
        const int w = Wait(fd_, POLLIN, timeout_ms);
        if (w <= 0) return w == 0 ? -2 : -1;
      }
      const ssize_t r = ::read(fd_, buf, n);
      if (r >= 0) return r;
      if (errno != EINTR && errno != EAGAIN) return -1;
    }
  }
  WriteResult WriteSome(std::vector<iovec>& iov, size_t* first, bool block) override {
    return tessera::WriteSome(fd_, iov, first, block);
  }
};

// What OpenSSL's error queue says (and the certificate verification's result), for messages.
std::string SslError(SSL* ssl) {
  std::string out;
  char buf[256];
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof(buf));
    if (out.empty()) out = buf;
  }
  if (ssl != nullptr) {
    const long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK) {
      out += absl::StrFormat(" (certificate: %s)", X509_verify_cert_error_string(v));
    }
  }
  return out.empty() ? "connection closed during the handshake" : out;
}

// The BIO under a TLS stream. OpenSSL writes each record (16 KiB at most) to its BIO on its
// own, and its socket BIO makes a write(2) of each: hundreds of system calls for a 4 MiB
// tensor, and write(2) raises SIGPIPE on a connection the peer closed, which kills a process
// that did not ignore it (a client's). This BIO collects what OpenSSL writes and sends it in
// large pieces with MSG_NOSIGNAL when the stream flushes it (Tls::Flush, or OpenSSL's own
// flushes during the handshake); it reads with recv(2).
struct SocketBio {
  int fd = -1;
  std::string out;  // ciphertext; out[head..] is not sent yet
  size_t head = 0;
  bool empty() const { return head == out.size(); }
};

int BioWrite(BIO* b, const char* in, int n) {
  static_cast<SocketBio*>(BIO_get_data(b))->out.append(in, static_cast<size_t>(n));
  return n;
}

int BioRead(BIO* b, char* out, int n) {
  auto* s = static_cast<SocketBio*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  for (;;) {
    const ssize_t r = ::recv(s->fd, out, static_cast<size_t>(n), 0);
    if (r >= 0) return static_cast<int>(r);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_read(b);
    return -1;
  }
}

// Sends what the BIO holds; `block`: until all is sent (false: as far as the socket takes it).
// false on an error.
bool SendPending(SocketBio* s, bool block) {
  while (!s->empty()) {
    const ssize_t r = ::send(s->fd, s->out.data() + s->head, s->out.size() - s->head,
                             MSG_NOSIGNAL | (block ? 0 : MSG_DONTWAIT));
    if (r > 0) {
      s->head += static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!block) break;
      pollfd p{s->fd, POLLOUT, 0};
      ::poll(&p, 1, -1);
      continue;
    }
    return false;
  }
  if (s->empty()) {  // (the buffer is kept: the next records are appended from its start)
    s->out.clear();
    s->head = 0;
  }
  return true;
}

long BioCtrl(BIO* b, int cmd, long, void*) {
  auto* s = static_cast<SocketBio*>(BIO_get_data(b));
  switch (cmd) {
    case BIO_CTRL_FLUSH:  // (the handshake's flights)
      return SendPending(s, /*block=*/true) ? 1 : 0;
    case BIO_CTRL_WPENDING:
      return static_cast<long>(s->out.size() - s->head);
    case BIO_CTRL_PENDING:
      return 0;
    default:
      return 0;
  }
}

int BioCreate(BIO* b) {
  BIO_set_data(b, new SocketBio());
  BIO_set_init(b, 1);
  return 1;
}

int BioDestroy(BIO* b) {
  delete static_cast<SocketBio*>(BIO_get_data(b));
  BIO_set_data(b, nullptr);
  return 1;
}

const BIO_METHOD* SocketBioMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                                 "tessera socket");
    BIO_meth_set_write(m, BioWrite);
    BIO_meth_set_read(m, BioRead);
    BIO_meth_set_ctrl(m, BioCtrl);
    BIO_meth_set_create(m, BioCreate);
    BIO_meth_set_destroy(m, BioDestroy);
    return m;
  }();
  return method;
}

// TLS over a non-blocking socket. SSL calls are serialized by mu_ (one reader and one writer
// may be in it at once, never inside OpenSSL together); waits happen outside it.
class Tls final : public ByteStream {
 public:
  Tls(int fd, SSL* ssl, SocketBio* bio) : ByteStream(fd, true), ssl_(ssl), bio_(bio) {}
  ~Tls() override { SSL_free(ssl_); }

  ssize_t ReadSome(void* buf, size_t n, int timeout_ms) override {
    const absl::Time deadline =
        timeout_ms < 0 ? absl::InfiniteFuture() : absl::Now() + absl::Milliseconds(timeout_ms);
    for (;;) {
      size_t got = 0;
      int err;
      {
        absl::MutexLock lock(&mu_);
        ERR_clear_error();
        const int r = SSL_read_ex(ssl_, buf, n, &got);
        err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, r);
      }
      if (err == SSL_ERROR_NONE) return static_cast<ssize_t>(got);
      if (err == SSL_ERROR_ZERO_RETURN) return 0;
      if (err == SSL_ERROR_SYSCALL && errno == 0) return 0;  // (the peer closed the socket)
      if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) return -1;
      const int left = timeout_ms < 0 ? -1
                                      : static_cast<int>(std::max<int64_t>(
                                            0, absl::ToInt64Milliseconds(deadline - absl::Now())));
      const int w = Wait(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, left);
      if (w < 0) return -1;
      if (w == 0) return -2;
    }
  }

  // Encrypts the next piece (the BIO collects its records), then sends it; what the socket does
  // not take without waiting stays in the BIO, and the next WriteSome (the writer's) sends it
  // first.
  WriteResult WriteSome(std::vector<iovec>& iov, size_t* first, bool block) override {
    size_t& f = *first;
    for (;;) {
      // (the BIO is the SSL's: a reader may add to it too; never wait holding the lock, so
      // that the reader goes on while this waits for the peer to read)
      for (;;) {
        bool ok, sent;
        {
          absl::MutexLock lock(&mu_);
          ok = SendPending(bio_, /*block=*/false);
          sent = bio_->empty();
        }
        if (!ok) return WriteResult::kError;
        if (sent) break;
        if (!block) return WriteResult::kWouldBlock;
        if (Wait(fd_, POLLOUT, -1) < 0) return WriteResult::kError;
      }
      while (f < iov.size() && iov[f].iov_len == 0) ++f;
      if (f >= iov.size()) return WriteResult::kDone;
      // The next piece: a large buffer straight from where it is, small ones gathered first
      // (the same bytes again after a would-block).
      const char* piece = scratch_;
      size_t n = 0;
      if (iov[f].iov_len >= kDirect) {
        piece = static_cast<const char*>(iov[f].iov_base);
        n = std::min(iov[f].iov_len, kChunk);
      } else {
        for (size_t i = f; i < iov.size() && n < kDirect; ++i) {
          const size_t take = std::min(iov[i].iov_len, kDirect - n);
          std::memcpy(scratch_ + n, iov[i].iov_base, take);
          n += take;
        }
      }
      size_t written = 0;
      int err;
      {
        absl::MutexLock lock(&mu_);
        ERR_clear_error();
        const int r = SSL_write_ex(ssl_, piece, n, &written);
        err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, r);
      }
      if (err == SSL_ERROR_NONE) {
        for (size_t left = written; left > 0 && f < iov.size();) {
          iovec& v = iov[f];
          const size_t take = std::min(left, v.iov_len);
          v.iov_base = static_cast<char*>(v.iov_base) + take;
          v.iov_len -= take;
          left -= take;
          if (v.iov_len == 0) ++f;
        }
        continue;
      }
      if (err == SSL_ERROR_WANT_WRITE && !block) return WriteResult::kWouldBlock;
      if (err != SSL_ERROR_WANT_WRITE && err != SSL_ERROR_WANT_READ) return WriteResult::kError;
      if (Wait(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, -1) < 0) {
        return WriteResult::kError;
      }
    }
  }

 private:
  static constexpr size_t kChunk = 256 << 10;  // the most encrypted per SSL_write
  static constexpr size_t kDirect = 16 << 10;  // buffers this large are not gathered first
  absl::Mutex mu_;
  SSL* const ssl_;
  SocketBio* const bio_;   // SSL's; its `out` changes only under mu_
  char scratch_[kDirect];  // (used by the one writer at a time)
};

std::shared_ptr<SSL_CTX> Own(SSL_CTX* ctx) { return std::shared_ptr<SSL_CTX>(ctx, SSL_CTX_free); }

absl::StatusOr<std::shared_ptr<SSL_CTX>> NewContext(const SSL_METHOD* method) {
  SSL_CTX* ctx = SSL_CTX_new(method);
  if (ctx == nullptr) return absl::InternalError("OpenSSL: " + SslError(nullptr));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // AES-128-GCM first (TLS 1.3's default order puts AES-256 first, about 30% slower here).
  SSL_CTX_set_ciphersuites(
      ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Read many records per recv(2), not a header and a body per record.
  SSL_CTX_set_read_ahead(ctx, 1);
  SSL_CTX_set_default_read_buffer_len(ctx, 256 << 10);
  return Own(ctx);
}

absl::Status UseIdentity(SSL_CTX* ctx, const std::string& cert_file, const std::string& key_file) {
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: not a usable certificate (%s)", cert_file, SslError(nullptr)));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: not the key of %s (%s)", key_file, cert_file, SslError(nullptr)));
  }
  return absl::OkStatus();
}

absl::Status Trust(SSL_CTX* ctx, const std::string& ca_file) {
  if (SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: not a usable CA file (%s)", ca_file, SslError(nullptr)));
  }
  return absl::OkStatus();
}

// The handshake in blocking mode within timeout_ms, then the socket non-blocking.
absl::StatusOr<std::unique_ptr<ByteStream>> Handshake(int fd, SSL* ssl, bool server,
                                                      int timeout_ms) {
  timeval limit{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
  BIO* bio = BIO_new(SocketBioMethod());
  if (bio == nullptr) {
    SSL_free(ssl);
    return absl::InternalError("OpenSSL: " + SslError(nullptr));
  }
  static_cast<SocketBio*>(BIO_get_data(bio))->fd = fd;
  SSL_set_bio(ssl, bio, bio);
  ERR_clear_error();
  const int r = server ? SSL_accept(ssl) : SSL_connect(ssl);
  if (r != 1) {
    const std::string why = SslError(ssl);
    SSL_free(ssl);
    return absl::UnavailableError(absl::StrCat("TLS handshake failed: ", why));
  }
  limit = {0, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return std::unique_ptr<ByteStream>(
      new Tls(fd, ssl, static_cast<SocketBio*>(BIO_get_data(SSL_get_wbio(ssl)))));
}

}  // namespace

bool ByteStream::ReadFull(void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = ReadSome(p, n, -1);
    if (r <= 0) {
      if (r == 0) errno = 0;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool ByteStream::ReadFullWithin(void* buf, size_t n, int timeout_ms) {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(timeout_ms);
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    const int left =
        static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
    const ssize_t r = ReadSome(p, n, left);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool ByteStream::Discard(size_t n) {
  char scratch[64 << 10];
  while (n > 0) {
    const size_t step = std::min(n, sizeof(scratch));
    if (!ReadFull(scratch, step)) return false;
    n -= step;
  }
  return true;
}

bool ByteStream::WriteAll(std::vector<iovec>& iov) {
  size_t first = 0;
  return WriteSome(iov, &first, /*block=*/true) == WriteResult::kDone;
}

void ByteStream::Shutdown() { ::shutdown(fd_, SHUT_RDWR); }

std::unique_ptr<ByteStream> PlainStream(int fd) { return std::make_unique<Plain>(fd); }

absl::StatusOr<std::shared_ptr<SSL_CTX>> ServerTlsContext(const TlsFiles& files) {
  absl::StatusOr<std::shared_ptr<SSL_CTX>> ctx = NewContext(TLS_server_method());
  if (!ctx.ok()) return ctx.status();
  SSL_CTX* c = ctx->get();
  SSL_CTX_set_num_tickets(c, 0);  // (no session resumption: connections are long-lived)
  if (absl::Status s = UseIdentity(c, files.cert_file, files.key_file); !s.ok()) return s;
  if (!files.ca_file.empty()) {
    if (absl::Status s = Trust(c, files.ca_file); !s.ok()) return s;
    SSL_CTX_set_client_CA_list(c, SSL_load_client_CA_file(files.ca_file.c_str()));
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return ctx;
}

absl::StatusOr<std::shared_ptr<SSL_CTX>> ClientTlsContext(const Credentials& credentials) {
  absl::StatusOr<std::shared_ptr<SSL_CTX>> ctx = NewContext(TLS_client_method());
  if (!ctx.ok()) return ctx.status();
  SSL_CTX* c = ctx->get();
  if (absl::Status s = Trust(c, credentials.tls_ca_file); !s.ok()) return s;
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
  if (!credentials.tls_cert_file.empty()) {
    if (absl::Status s = UseIdentity(c, credentials.tls_cert_file, credentials.tls_key_file);
        !s.ok()) {
      return s;
    }
  }
  return ctx;
}

absl::StatusOr<std::unique_ptr<ByteStream>> AcceptTls(int fd, SSL_CTX* ctx, int timeout_ms) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return absl::InternalError("OpenSSL: " + SslError(nullptr));
  return Handshake(fd, ssl, /*server=*/true, timeout_ms);
}

absl::StatusOr<std::unique_ptr<ByteStream>> ConnectTls(int fd, SSL_CTX* ctx,
                                                       const std::string& host, int timeout_ms) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return absl::InternalError("OpenSSL: " + SslError(nullptr));
  in6_addr ip;
  if (::inet_pton(AF_INET, host.c_str(), &ip) == 1 ||
      ::inet_pton(AF_INET6, host.c_str(), &ip) == 1) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str());
  } else {
    SSL_set1_host(ssl, host.c_str());
    SSL_set_tlsext_host_name(ssl, host.c_str());
  }
  return Handshake(fd, ssl, /*server=*/false, timeout_ms);
}

}  // namespace tessera
