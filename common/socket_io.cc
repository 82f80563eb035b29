#include "common/socket_io.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"

namespace tessera {

bool ReadFull(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r > 0) {
      p += r;
      n -= static_cast<size_t>(r);
    } else if (r == 0) {
      errno = 0;
      return false;
    } else if (errno != EINTR) {
      return false;
    }
  }
  return true;
}

bool Discard(int fd, size_t n) {
  char scratch[64 << 10];
  while (n > 0) {
    const size_t step = std::min(n, sizeof(scratch));
    if (!ReadFull(fd, scratch, step)) return false;
    n -= step;
  }
  return true;
}

WriteResult WriteSome(int fd, std::vector<iovec>& iov, size_t* first, bool block) {
  size_t& f = *first;
  while (f < iov.size() && iov[f].iov_len == 0) ++f;
  while (f < iov.size()) {
    msghdr msg{};
    msg.msg_iov = iov.data() + f;
    msg.msg_iovlen = std::min<size_t>(iov.size() - f, IOV_MAX);
    const ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL | (block ? 0 : MSG_DONTWAIT));
    if (w < 0) {
      if (errno == EINTR) continue;
      if (!block && (errno == EAGAIN || errno == EWOULDBLOCK)) return WriteResult::kWouldBlock;
      return WriteResult::kError;
    }
    size_t left = static_cast<size_t>(w);
    while (left > 0 && f < iov.size()) {
      iovec& v = iov[f];
      const size_t take = std::min(left, v.iov_len);
      v.iov_base = static_cast<char*>(v.iov_base) + take;
      v.iov_len -= take;
      left -= take;
      if (v.iov_len == 0) ++f;
    }
    while (f < iov.size() && iov[f].iov_len == 0) ++f;
  }
  return WriteResult::kDone;
}

bool WriteAll(int fd, std::vector<iovec>& iov) {
  size_t first = 0;
  return WriteSome(fd, iov, &first, /*block=*/true) == WriteResult::kDone;
}

void TuneSocket(int fd) {
  const int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

namespace {

absl::StatusOr<addrinfo*> Resolve(const std::string& host, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
      rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cannot resolve '%s': %s", host, ::gai_strerror(rc)));
  }
  return res;
}

}  // namespace

absl::StatusOr<Listener> ListenTcp(const std::string& address, int port) {
  absl::StatusOr<addrinfo*> res = Resolve(address == "0.0.0.0" ? "" : address, port, true);
  if (!res.ok()) return res.status();
  std::string error = "no address";
  Listener l;
  for (addrinfo* a = *res; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    (void)::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
      sockaddr_storage bound{};
      socklen_t len = sizeof(bound);
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
      l.fd = fd;
      l.port = bound.ss_family == AF_INET6
                   ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                   : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
      break;
    }
    error = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(*res);
  if (l.fd < 0) {
    return absl::UnavailableError(
        absl::StrFormat("cannot listen on %s:%d: %s", address, port, error));
  }
  return l;
}

absl::StatusOr<int> ConnectTcp(const std::string& host, int port, int timeout_ms) {
  absl::StatusOr<addrinfo*> res = Resolve(host, port, false);
  if (!res.ok()) return res.status();
  std::string error = "no address";
  int connected = -1;
  for (addrinfo* a = *res; a != nullptr && connected < 0; a = a->ai_next) {
    const int fd =
        ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc < 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = ::poll(&p, 1, timeout_ms);
      int err = 0;
      socklen_t len = sizeof(err);
      if (rc == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
        rc = 0;
      } else {
        errno = rc == 0 ? ETIMEDOUT : (err != 0 ? err : errno);
        rc = -1;
      }
    }
    if (rc == 0) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      TuneSocket(fd);
      connected = fd;
    } else {
      error = std::strerror(errno);
      ::close(fd);
    }
  }
  ::freeaddrinfo(*res);
  if (connected < 0) {
    return absl::UnavailableError(
        absl::StrFormat("cannot connect to %s:%d: %s", host, port, error));
  }
  return connected;
}

}  // namespace tessera
