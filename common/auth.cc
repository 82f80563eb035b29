#include "common/auth.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace tessera {
namespace {

constexpr RoleSet kAnyClient = kRoleAdmin | kRoleWorker | kRoleReader;

// The one table of methods and the roles they allow (docs/security.md, "The check").
const absl::flat_hash_map<std::string, RoleSet>& MethodRoles() {
  static const auto* table = new absl::flat_hash_map<std::string, RoleSet>{
      {"/tessera.v1.ParameterServer/CreateTable", kRoleAdmin},
      {"/tessera.v1.ParameterServer/DropTable", kRoleAdmin},
      {"/tessera.v1.ParameterServer/WriteCheckpoint", kRoleAdmin},
      {"/tessera.v1.ParameterServer/GetCheckpointState", kRoleAdmin},
      {"/tessera.v1.ParameterServer/RestoreCheckpoint", kRoleAdmin},
      {"/tessera.v1.ParameterServer/DescribeTable", kAnyClient},
      {"/tessera.v1.ParameterServer/ListTables", kAnyClient},
      {"/tessera.v1.ParameterServer/PullSparse", kRoleWorker | kRoleReader},
      {"/tessera.v1.ParameterServer/PullDense", kRoleWorker | kRoleReader},
      {"/tessera.v1.ParameterServer/GetDataPlane", kRoleWorker | kRoleReader},
      {"/tessera.v1.ParameterServer/PushSparse", kRoleWorker},
      {"/tessera.v1.ParameterServer/PushDense", kRoleWorker},
      {"/tessera.v1.ParameterServer/ApplyStep", kRoleWorker},
      {"/tessera.v1.ParameterServer/RemoveRows", kRoleAdmin},
      {"/tessera.v1.Coordinator/Heartbeat", kRoleServer},
      {"/tessera.v1.Coordinator/ReportCaughtUp", kRoleServer},
      {"/tessera.v1.Coordinator/ReportReplicaFailed", kRoleServer},
      {"/tessera.v1.Coordinator/GetClusterMap", kAnyClient | kRoleServer},
      {"/tessera.v1.Coordinator/GetClusterStatus", kRoleAdmin},
      {"/tessera.v1.Coordinator/RecoverShard", kRoleAdmin},
      {"/tessera.v1.Coordinator/FinishRecovery", kRoleAdmin},
      {"/tessera.v1.Coordinator/JoinJob", kRoleWorker},
      {"/tessera.v1.Coordinator/Clock", kRoleWorker},
      {"/tessera.v1.Coordinator/AllReduce", kRoleWorker},
      {"/tessera.v1.Replication/Replicate", kRoleServer},
      {"/tessera.v1.Replication/InstallSnapshot", kRoleServer},
      {"/tessera.serving.v1.Serving/Lookup", kRoleWorker | kRoleReader},
      {"/tessera.serving.v1.Serving/LookupDense", kRoleWorker | kRoleReader},
      {"/tessera.serving.v1.Serving/Subscribe", kRoleServer | kRoleReader},
      {"/tessera.serving.v1.Serving/GetServingStatus", kAnyClient | kRoleServer},
      {"/tessera.serving.v1.Serving/Rollback", kRoleAdmin},
      {"/tessera.serving.v1.Serving/Resume", kRoleAdmin},
  };
  return *table;
}

std::optional<AuthRole> ParseRole(absl::string_view name) {
  if (name == "admin") return kRoleAdmin;
  if (name == "worker") return kRoleWorker;
  if (name == "reader") return kRoleReader;
  if (name == "server") return kRoleServer;
  return std::nullopt;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read the token file ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad())
    return absl::InvalidArgumentError(absl::StrCat("cannot read the token file ", path));
  return text.str();
}

bool ValidToken(absl::string_view t) {
  if (t.size() < kMinTokenBytes || t.size() > kMaxTokenBytes) return false;
  for (char c : t) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

}  // namespace

RoleSet RolesOfMethod(absl::string_view full_method) {
  const auto& table = MethodRoles();
  auto it = table.find(full_method);
  return it == table.end() ? 0 : it->second;
}

std::string RoleNames(RoleSet roles) {
  std::vector<const char*> names;
  if (roles & kRoleAdmin) names.push_back("admin");
  if (roles & kRoleWorker) names.push_back("worker");
  if (roles & kRoleReader) names.push_back("reader");
  if (roles & kRoleServer) names.push_back("server");
  return names.empty() ? "none" : absl::StrJoin(names, ", ");
}

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text, absl::string_view origin) {
  TokenTable t;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s line %d: want 'ROLE TOKEN' (roles: admin, worker, reader, server)",
                          origin, line_number));
    }
    const std::optional<AuthRole> role = ParseRole(fields[0]);
    if (!role.has_value()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s line %d: unknown role (want admin, worker, reader or server)", origin, line_number));
    }
    if (!ValidToken(fields[1])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s line %d: a token is %d to %d printable characters without spaces",
                          origin, line_number, kMinTokenBytes, kMaxTokenBytes));
    }
    Entry* entry = nullptr;
    for (Entry& e : t.entries_) {
      if (absl::string_view(e.token.data(), e.length) == fields[1]) entry = &e;
    }
    if (entry == nullptr) {
      entry = &t.entries_.emplace_back();
      std::memcpy(entry->token.data(), fields[1].data(), fields[1].size());
      entry->length = fields[1].size();
    }
    entry->roles |= *role;
  }
  if (t.entries_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": no tokens"));
  }
  return t;
}

absl::StatusOr<TokenTable> TokenTable::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

RoleSet TokenTable::RolesOf(absl::string_view token) const {
  // Every entry, every byte: the time depends on the number of entries only. The presented token
  // is copied into a fixed buffer first (longer ones cannot match: their length differs).
  std::array<char, kMaxTokenBytes> presented{};
  const size_t n = std::min(token.size(), kMaxTokenBytes);
  std::memcpy(presented.data(), token.data(), n);
  RoleSet roles = 0;
  for (const Entry& e : entries_) {
    unsigned diff = static_cast<unsigned>(e.length ^ token.size());
    for (size_t i = 0; i < kMaxTokenBytes; ++i) {
      diff |= static_cast<unsigned char>(e.token[i] ^ presented[i]);
    }
    // (all ones when diff == 0, else 0: no branch on the bytes)
    const unsigned nonzero = (diff | (0u - diff)) >> 31;
    const RoleSet mask = static_cast<RoleSet>(nonzero - 1u);
    roles |= e.roles & mask;
  }
  return roles;
}

std::string TokenTable::FirstWith(RoleSet roles) const {
  for (const Entry& e : entries_) {
    if ((e.roles & roles) == roles) return std::string(e.token.data(), e.length);
  }
  return "";
}

absl::StatusOr<std::string> ReadClientToken(const std::string& path, RoleSet roles) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    if (line.find_first_of(" \t") == absl::string_view::npos) {  // the token alone
      if (!ValidToken(line)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: a token is %d to %d printable characters without spaces", path,
                            kMinTokenBytes, kMaxTokenBytes));
      }
      return std::string(line);
    }
    break;  // a token table
  }
  absl::StatusOr<TokenTable> table = TokenTable::Parse(*text, path);
  if (!table.ok()) return table.status();
  std::string token = table->FirstWith(roles);
  if (token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s has no token with the roles %s", path, RoleNames(roles)));
  }
  return token;
}

absl::StatusOr<BasicAuthUsers> ReadBasicAuthUsers(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  BasicAuthUsers users;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<std::string> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s line %d: want 'USER PASSWORD'", path, line_number));
    }
    users.emplace_back(fields[0], fields[1]);
  }
  if (users.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no users"));
  return users;
}

absl::StatusOr<std::string> ReadBasicAuthUser(const std::string& path) {
  absl::StatusOr<BasicAuthUsers> users = ReadBasicAuthUsers(path);
  if (!users.ok()) return users.status();
  return absl::StrCat(users->front().first, ":", users->front().second);
}

bool EqualInConstantTime(absl::string_view a, absl::string_view b) {
  unsigned diff = static_cast<unsigned>(a.size() ^ b.size());
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    diff |= static_cast<unsigned char>(i < a.size() ? a[i] : 0) ^
            static_cast<unsigned char>(i < b.size() ? b[i] : 0);
  }
  return diff == 0;
}

absl::string_view BearerToken(absl::string_view header) {
  constexpr absl::string_view kBearer = "Bearer ";
  if (header.size() <= kBearer.size() || header.substr(0, kBearer.size()) != kBearer) return {};
  return header.substr(kBearer.size());
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(const std::string& path) {
  std::unique_ptr<Authenticator> a(new Authenticator(path));
  if (!path.empty()) {
    if (absl::Status s = a->Reload(); !s.ok()) return s;
  }
  return a;
}

absl::Status Authenticator::Reload() {
  if (path_.empty()) return absl::OkStatus();
  absl::StatusOr<TokenTable> t = TokenTable::Load(path_);
  if (reload_hook_) reload_hook_(t.ok());
  if (!t.ok()) return t.status();
  auto table = std::make_shared<const TokenTable>(*std::move(t));
  absl::MutexLock lock(&mu_);
  table_ = std::move(table);
  return absl::OkStatus();
}

std::shared_ptr<const TokenTable> Authenticator::table() const {
  absl::MutexLock lock(&mu_);
  return table_;
}

RoleSet Authenticator::RolesOf(absl::string_view token) const {
  if (!enabled()) return kRoleAdmin | kRoleWorker | kRoleReader | kRoleServer;
  return table()->RolesOf(token);
}

std::string Authenticator::OutgoingToken(AuthRole role) const {
  if (!enabled()) return "";
  return table()->FirstWith(role);
}

grpc::Status Authenticator::Check(const grpc::ServerContextBase& ctx,
                                  absl::string_view full_method) const {
  if (!enabled()) return grpc::Status::OK;
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  absl::string_view token;
  if (it != md.end()) token = BearerToken(absl::string_view(it->second.data(), it->second.size()));
  return CheckToken(token, full_method);
}

grpc::Status Authenticator::CheckToken(absl::string_view token,
                                       absl::string_view full_method) const {
  if (!enabled()) return grpc::Status::OK;
  const RoleSet roles = token.empty() ? 0 : table()->RolesOf(token);
  grpc::Status refusal;
  if (roles == 0) {
    refusal = grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                           "missing or unknown token (send 'authorization: Bearer TOKEN' with a "
                           "token from this daemon's --auth_token_file; docs/security.md)");
  } else {
    const RoleSet allowed = RolesOfMethod(full_method);
    if ((roles & allowed) != 0) return grpc::Status::OK;
    refusal = grpc::Status(
        grpc::StatusCode::PERMISSION_DENIED,
        absl::StrFormat("%s needs a token with the %s role%s; this one has %s", full_method,
                        RoleNames(allowed), allowed & (allowed - 1) ? " (any of them)" : "",
                        RoleNames(roles)));
  }
  if (hook_) hook_(full_method, refusal.error_code());
  return refusal;
}

}  // namespace tessera
