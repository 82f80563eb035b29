#include "common/auth.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>

namespace tessera {
namespace {

const std::string kAdmin = "admin-token-0123456789";
const std::string kWorker = "worker-token-0123456789";
const std::string kServer = "server-token-0123456789";

std::string TempFile(const std::string& text) {
  char path[] = "/tmp/tessera_auth_test_XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  close(fd);
  return path;
}

TEST_CASE("a token file gives each token its roles", "[auth]") {
  absl::StatusOr<TokenTable> t =
      TokenTable::Parse("# comment\n\nadmin " + kAdmin + "\nworker " + kWorker + "\n  worker\t" +
                            kAdmin + "  \nserver " + kServer + "\n",
                        "f");
  REQUIRE(t.ok());
  CHECK(t->size() == 3);
  CHECK(t->RolesOf(kAdmin) == (kRoleAdmin | kRoleWorker));
  CHECK(t->RolesOf(kWorker) == kRoleWorker);
  CHECK(t->RolesOf(kServer) == kRoleServer);
  // Prefixes, extensions, one byte off, empty and very long tokens are unknown.
  CHECK(t->RolesOf(kWorker.substr(0, kWorker.size() - 1)) == 0);
  CHECK(t->RolesOf(kWorker + "x") == 0);
  std::string off = kWorker;
  off[5] ^= 1;
  CHECK(t->RolesOf(off) == 0);
  CHECK(t->RolesOf("") == 0);
  CHECK(t->RolesOf(std::string(1000, 'a')) == 0);
  CHECK(t->FirstWith(kRoleServer) == kServer);
  CHECK(t->FirstWith(kRoleReader).empty());
}

TEST_CASE("a bad token file is refused naming the line, never the token", "[auth]") {
  for (const std::string& text :
       {"admin " + kAdmin + "\nroot " + kWorker + "\n", "admin " + kAdmin + "\nworker\n",
        "admin " + kAdmin + "\nworker short\n", "admin " + kAdmin + " extra\n",
        std::string("# only\n")}) {
    absl::StatusOr<TokenTable> t = TokenTable::Parse(text, "tokens.txt");
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().code() == absl::StatusCode::kInvalidArgument);
    const std::string m(t.status().message());
    INFO(m);
    CHECK(m.find("tokens.txt") != std::string::npos);
    CHECK(m.find(kAdmin) == std::string::npos);
    CHECK(m.find(kWorker) == std::string::npos);
  }
  CHECK(std::string(TokenTable::Parse("admin a\n", "f").status().message()).find("line 1") !=
        std::string::npos);
}

TEST_CASE("methods allow their roles only", "[auth]") {
  CHECK(RolesOfMethod("/tessera.v1.ParameterServer/PushSparse") == kRoleWorker);
  CHECK(RolesOfMethod("/tessera.v1.ParameterServer/CreateTable") == kRoleAdmin);
  CHECK(RolesOfMethod("/tessera.v1.ParameterServer/RemoveRows") == kRoleAdmin);  // (not workers)
  CHECK(RolesOfMethod("/tessera.v1.Replication/Replicate") == kRoleServer);
  CHECK(RolesOfMethod("/tessera.v1.ParameterServer/NoSuchMethod") == 0);
  CHECK((RolesOfMethod("/tessera.v1.ParameterServer/PullSparse") & kRoleReader) != 0);
  CHECK((RolesOfMethod("/tessera.v1.ParameterServer/PushSparse") & kRoleReader) == 0);

  const std::string path = TempFile("admin " + kAdmin + "\nworker " + kWorker + "\n");
  absl::StatusOr<std::unique_ptr<Authenticator>> a = Authenticator::Create(path);
  REQUIRE(a.ok());
  int refusals = 0;
  (*a)->set_refusal_hook([&](absl::string_view, grpc::StatusCode) { ++refusals; });
  const std::string push = "/tessera.v1.ParameterServer/PushSparse";
  CHECK((*a)->CheckToken(kWorker, push).ok());
  CHECK((*a)->CheckToken("", push).error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK((*a)->CheckToken("unknown-token-0123456789", push).error_code() ==
        grpc::StatusCode::UNAUTHENTICATED);
  const grpc::Status denied = (*a)->CheckToken(kAdmin, push);
  CHECK(denied.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK(denied.error_message().find("worker") != std::string::npos);
  CHECK(denied.error_message().find(kAdmin) == std::string::npos);
  CHECK(refusals == 3);

  // A reload replaces the table; a bad file keeps the old one.
  { std::ofstream(path) << "worker " << kAdmin << "\n"; }
  REQUIRE((*a)->Reload().ok());
  CHECK((*a)->CheckToken(kAdmin, push).ok());
  CHECK((*a)->CheckToken(kWorker, push).error_code() == grpc::StatusCode::UNAUTHENTICATED);
  { std::ofstream(path) << "bogus line\n"; }
  CHECK_FALSE((*a)->Reload().ok());
  CHECK((*a)->CheckToken(kAdmin, push).ok());
  std::remove(path.c_str());

  // Without a file: everything passes.
  absl::StatusOr<std::unique_ptr<Authenticator>> off = Authenticator::Create("");
  REQUIRE(off.ok());
  CHECK((*off)->CheckToken("", push).ok());
  CHECK_FALSE(Authenticator::Create("/nonexistent/tokens").ok());
}

TEST_CASE("a client reads its token alone or from a token table", "[auth]") {
  const std::string alone = TempFile("# mine\n" + kWorker + "\n");
  CHECK(*ReadClientToken(alone, kRoleWorker) == kWorker);
  const std::string table = TempFile("worker " + kWorker + "\nadmin " + kAdmin + "\n");
  CHECK(*ReadClientToken(table, kRoleAdmin) == kAdmin);
  CHECK(*ReadClientToken(table, kRoleWorker) == kWorker);
  CHECK_FALSE(ReadClientToken(table, kRoleServer).ok());
  std::remove(alone.c_str());
  std::remove(table.c_str());
  CHECK(BearerToken("Bearer abc") == "abc");
  CHECK(BearerToken("Basic abc").empty());
  CHECK(BearerToken("Bearer ").empty());
}

}  // namespace
}  // namespace tessera
