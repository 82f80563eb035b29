// The data plane's streams (common/byte_stream.h) over a real socket pair: TLS both ways at
// once with a reader and a writer on each side, writes that would block continued by another
// call, and handshakes that must fail.
#include "common/byte_stream.h"

#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/tls.h"

namespace tessera {
namespace {

// A CA and a certificate for 127.0.0.1 in a new directory, by the openssl command.
struct Pki {
  std::string dir, ca, cert, key;
};
Pki MakePki() {
  char dir[] = "/tmp/tessera_byte_stream_test_XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  const std::string d = dir;
  std::ofstream(d + "/ext") << "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n";
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  for (const std::string& c :
       {absl::StrCat("openssl req -x509 ", ec, " -days 1 -subj /CN=ca -keyout ", d, "/ca.key -out ",
                     d, "/ca.pem"),
        absl::StrCat("openssl req ", ec, " -subj /CN=node -keyout ", d, "/node.key -out ", d,
                     "/node.csr"),
        absl::StrCat("openssl x509 -req -days 1 -in ", d, "/node.csr -CA ", d, "/ca.pem -CAkey ", d,
                     "/ca.key -CAcreateserial -extfile ", d, "/ext -out ", d, "/node.pem")}) {
    REQUIRE(std::system((c + " >/dev/null 2>&1").c_str()) == 0);
  }
  return {d, d + "/ca.pem", d + "/node.pem", d + "/node.key"};
}

struct Pair {
  int fds[2] = {-1, -1};
  std::unique_ptr<ByteStream> server, client;
  ~Pair() {
    server.reset();
    client.reset();
    for (int fd : fds) ::close(fd);
  }
};

void Connect(Pair& p, const Pki& server_pki, const Pki& client_pki) {
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, p.fds) == 0);
  absl::StatusOr<std::shared_ptr<SSL_CTX>> sctx =
      ServerTlsContext({server_pki.cert, server_pki.key, server_pki.ca});
  REQUIRE(sctx.ok());
  Credentials c{.tls_ca_file = client_pki.ca,
                .tls_cert_file = client_pki.cert,
                .tls_key_file = client_pki.key};
  absl::StatusOr<std::shared_ptr<SSL_CTX>> cctx = ClientTlsContext(c);
  REQUIRE(cctx.ok());
  auto accepted =
      std::async(std::launch::async, [&] { return AcceptTls(p.fds[0], sctx->get(), 5000); });
  absl::StatusOr<std::unique_ptr<ByteStream>> client =
      ConnectTls(p.fds[1], cctx->get(), "127.0.0.1", 5000);
  absl::StatusOr<std::unique_ptr<ByteStream>> server = accepted.get();
  if (client.ok()) p.client = *std::move(client);
  if (server.ok()) p.server = *std::move(server);
}

std::string Pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + seed) >> 3);
  return s;
}

TEST_CASE("TLS streams carry megabytes both ways at once, reader and writer apart",
          "[byte_stream]") {
  const Pki pki = MakePki();
  Pair p;
  Connect(p, pki, pki);
  REQUIRE(p.server != nullptr);
  REQUIRE(p.client != nullptr);
  const std::string a = Pattern(8 << 20, 1), b = Pattern(6 << 20, 2);
  auto send = [](ByteStream* s, const std::string& data) {
    // In pieces of odd sizes, as frames are.
    for (size_t at = 0; at < data.size();) {
      const size_t n = std::min<size_t>(data.size() - at, 100003);
      std::vector<iovec> iov = {{const_cast<char*>(data.data() + at), 7},
                                {const_cast<char*>(data.data() + at + 7), n - 7}};
      REQUIRE(s->WriteAll(iov));
      at += n;
    }
  };
  auto receive = [](ByteStream* s, size_t n) {
    std::string got(n, '\0');
    REQUIRE(s->ReadFull(got.data(), n));
    return got;
  };
  std::thread w1([&] { send(p.client.get(), a); });
  std::thread w2([&] { send(p.server.get(), b); });
  std::string at_server, at_client;
  std::thread r1([&] { at_server = receive(p.server.get(), a.size()); });
  std::thread r2([&] { at_client = receive(p.client.get(), b.size()); });
  for (auto* t : {&w1, &w2, &r1, &r2}) t->join();
  CHECK(at_server == a);
  CHECK(at_client == b);
}

TEST_CASE("a TLS write that would block is continued by the next call", "[byte_stream]") {
  const Pki pki = MakePki();
  Pair p;
  Connect(p, pki, pki);
  REQUIRE(p.client != nullptr);
  const std::string data = Pattern(16 << 20, 3);
  std::vector<iovec> iov = {{const_cast<char*>(data.data()), data.size()}};
  size_t first = 0;
  // Nobody reads yet: the socket fills and a non-blocking write stops part-way.
  CHECK(p.client->WriteSome(iov, &first, /*block=*/false) == WriteResult::kWouldBlock);
  std::string got(data.size(), '\0');
  std::thread reader([&] { REQUIRE(p.server->ReadFull(got.data(), got.size())); });
  CHECK(p.client->WriteSome(iov, &first, /*block=*/true) == WriteResult::kDone);
  reader.join();
  CHECK(got == data);
  // A read that times out says so, then the stream goes on.
  char c;
  CHECK(p.server->ReadSome(&c, 1, 50) == -2);
}

TEST_CASE("TLS handshakes fail for strangers", "[byte_stream]") {
  const Pki pki = MakePki(), other = MakePki();
  Pair p;
  Connect(p, pki, other);  // the client trusts another CA and presents its certificate
  CHECK(p.client == nullptr);
  CHECK(p.server == nullptr);
  Credentials missing{.tls_ca_file = "/nonexistent/ca.pem"};
  absl::StatusOr<std::shared_ptr<SSL_CTX>> bad = ClientTlsContext(missing);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("/nonexistent/ca.pem") != std::string::npos);
}

}  // namespace
}  // namespace tessera
