#include "common/http_get.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/byte_stream.h"

namespace tessera {

absl::StatusOr<std::string> HttpGet(int port, const std::string& path, absl::Duration timeout) {
  return HttpGet("127.0.0.1", port, path, timeout);
}

absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    absl::Duration timeout) {
  return HttpGet(host, port, path, timeout, HttpGetSecurity{});
}

absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    absl::Duration timeout, const HttpGetSecurity& security) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  timeval tv{static_cast<time_t>(absl::ToInt64Seconds(timeout)), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0 || found == nullptr) {
      return absl::UnavailableError(absl::StrFormat("cannot resolve %s", host));
    }
    addr.sin_addr = reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr;
    freeaddrinfo(found);
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(
        absl::StrFormat("connect to %s:%d: %s", host, port, strerror(errno)));
  }
  std::unique_ptr<ByteStream> stream = PlainStream(fd);
  if (!security.tls_ca_file.empty()) {
    Credentials c;
    c.tls_ca_file = security.tls_ca_file;
    absl::StatusOr<std::shared_ptr<SSL_CTX>> ctx = ClientTlsContext(c);
    if (!ctx.ok()) return ctx.status();
    absl::StatusOr<std::unique_ptr<ByteStream>> tls =
        ConnectTls(fd, ctx->get(), host, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
    if (!tls.ok()) {
      return absl::UnavailableError(
          absl::StrFormat("https://%s:%d: %s", host, port, tls.status().message()));
    }
    stream = *std::move(tls);
  }
  std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", host, "\r\n");
  if (!security.basic_auth.empty()) {
    absl::StrAppend(&req, "Authorization: Basic ", absl::Base64Escape(security.basic_auth), "\r\n");
  }
  req += "\r\n";
  std::vector<iovec> iov = {{req.data(), req.size()}};
  if (!stream->WriteAll(iov))
    return absl::UnavailableError(absl::StrCat("send: ", strerror(errno)));
  std::string response;
  char buf[65536];
  const int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  while (true) {
    const ssize_t n = stream->ReadSome(buf, sizeof(buf), timeout_ms);
    if (n == 0) break;
    if (n < 0)
      return absl::UnavailableError(absl::StrFormat("GET %s on port %d: no answer", path, port));
    response.append(buf, static_cast<size_t>(n));
  }
  const size_t header_end = response.find("\r\n\r\n");
  const bool ok_status =
      response.compare(0, 12, "HTTP/1.1 200") == 0 || response.compare(0, 12, "HTTP/1.0 200") == 0;
  if (header_end == std::string::npos || !ok_status) {
    return absl::UnavailableError(absl::StrFormat("GET %s on port %d: unexpected response '%s'",
                                                  path, port, response.substr(0, 40)));
  }
  return response.substr(header_end + 4);
}
}  // namespace tessera
