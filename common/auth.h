// Tokens, roles and the check every daemon makes before it parses a request (docs/security.md).
#ifndef TESSERA_COMMON_AUTH_H_
#define TESSERA_COMMON_AUTH_H_

#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace tessera {

enum AuthRole : uint8_t { kRoleAdmin = 1, kRoleWorker = 2, kRoleReader = 4, kRoleServer = 8 };
using RoleSet = uint8_t;

// The roles allowed to call a method, by its full name ("/tessera.v1.ParameterServer/PullSparse");
// 0 for a method outside the table (refused to every token).
RoleSet RolesOfMethod(absl::string_view full_method);
// "admin, worker" and so on.
std::string RoleNames(RoleSet roles);

inline constexpr size_t kMaxTokenBytes = 256;
inline constexpr size_t kMinTokenBytes = 16;

// A parsed token file: lines "ROLE TOKEN" (docs/security.md). Immutable; thread-safe.
class TokenTable {
 public:
  // Errors (INVALID_ARGUMENT) name `origin` and the line, never a token.
  static absl::StatusOr<TokenTable> Parse(absl::string_view text, absl::string_view origin);
  static absl::StatusOr<TokenTable> Load(const std::string& path);

  // The roles of `token` (0: unknown). Takes the same time whatever the token's content: every
  // entry is compared over kMaxTokenBytes without an early exit.
  RoleSet RolesOf(absl::string_view token) const;
  // The first token with every role of `roles`; empty when none.
  std::string FirstWith(RoleSet roles) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::array<char, kMaxTokenBytes> token{};
    size_t length = 0;
    RoleSet roles = 0;
  };
  std::vector<Entry> entries_;
};

// A client's token from `path`: the token alone on its first non-comment line, or (a daemon's
// token file) the first token with every role of `roles`.
absl::StatusOr<std::string> ReadClientToken(const std::string& path, RoleSet roles);

// Checks calls against the token file given at creation, reloaded on demand (SIGHUP).
// Thread-safe.
class Authenticator {
 public:
  // Called on every refusal with the method and the code (for metrics).
  using RefusalHook = std::function<void(absl::string_view method, grpc::StatusCode code)>;

  // Empty path: authentication off (every call passes). Otherwise the file must load.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const std::string& path);

  bool enabled() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  void set_refusal_hook(RefusalHook hook) { hook_ = std::move(hook); }
  // Called after every Reload() with whether it succeeded (for metrics).
  void set_reload_hook(std::function<void(bool ok)> hook) { reload_hook_ = std::move(hook); }

  // Reads the file again; on an error the current table stays (and the error is returned).
  absl::Status Reload() ABSL_LOCKS_EXCLUDED(mu_);

  // A gRPC call to `full_method`: OK, UNAUTHENTICATED or PERMISSION_DENIED (docs/security.md,
  // "The check"). Reads only the call's metadata.
  grpc::Status Check(const grpc::ServerContextBase& ctx, absl::string_view full_method) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // The same for a token presented otherwise (the data plane's handshake); `token` empty: none.
  grpc::Status CheckToken(absl::string_view token, absl::string_view full_method) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // The roles of `token` now (kRoleAdmin | ... when authentication is off).
  RoleSet RolesOf(absl::string_view token) const ABSL_LOCKS_EXCLUDED(mu_);
  // What this daemon presents to its peers: the first token with `role` (empty when off).
  std::string OutgoingToken(AuthRole role) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit Authenticator(std::string path) : path_(std::move(path)) {}
  std::shared_ptr<const TokenTable> table() const ABSL_LOCKS_EXCLUDED(mu_);

  const std::string path_;
  RefusalHook hook_;                          // (set before serving)
  std::function<void(bool ok)> reload_hook_;  // (set before serving)
  mutable absl::Mutex mu_;
  std::shared_ptr<const TokenTable> table_ ABSL_GUARDED_BY(mu_);
};

// The users of an HTTP basic authentication file (/metrics: docs/security.md): lines
// "USER PASSWORD"; errors name the file and the line.
using BasicAuthUsers = std::vector<std::pair<std::string, std::string>>;
absl::StatusOr<BasicAuthUsers> ReadBasicAuthUsers(const std::string& path);
// The first of them as "USER:PASSWORD" (what a scraper sends).
absl::StatusOr<std::string> ReadBasicAuthUser(const std::string& path);
// Whether a == b, in a time that depends on their lengths only.
bool EqualInConstantTime(absl::string_view a, absl::string_view b);

// The token of an "authorization: Bearer TOKEN" value; empty when it is not one.
absl::string_view BearerToken(absl::string_view header);

}  // namespace tessera

#endif  // TESSERA_COMMON_AUTH_H_
