// `tessera serving status|lookup|rollback|resume`: serving replicas (docs/online_serving.md).
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "client/serving_client.h"
#include "tools/commands.h"

namespace tessera {
namespace {

int Fail(const std::string& what, const absl::Status& s) {
  std::fprintf(stderr, "tessera serving %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

void PrintStatus(const std::string& address, const ServingStatusInfo& s, bool json) {
  if (json) {
    std::string tables = absl::StrJoin(s.tables, ",", [](std::string* out, const auto& t) {
      absl::StrAppendFormat(out,
                            "{\"name\":\"%s\",\"kind\":\"%s\",\"dim\":%u,\"dense_size\":%u,"
                            "\"rows\":%u,\"digest\":\"%016x\"}",
                            t.name, t.dense ? "dense" : "sparse", t.dim, t.dense_size, t.rows,
                            t.digest);
    });
    std::printf(
        "{\"replica\":\"%s\",\"version\":%lu,\"newest_version\":%lu,\"held_versions\":[%s],"
        "\"pinned\":%s,\"staleness_seconds\":%.3f,\"bytes\":%lu,\"source\":\"%s\","
        "\"last_error\":\"%s\",\"tables\":[%s]}\n",
        address.c_str(), s.version, s.newest_version, absl::StrJoin(s.held_versions, ",").c_str(),
        s.pinned ? "true" : "false", s.staleness_seconds, s.bytes, s.source.c_str(),
        absl::StrReplaceAll(s.last_error, {{"\\", "\\\\"}, {"\"", "\\\""}}).c_str(),
        tables.c_str());
    return;
  }
  std::printf("%s: version %lu%s (newest %lu; held %s), %.1f s stale, %.1f MB; from %s\n",
              address.c_str(), s.version, s.pinned ? " PINNED (rolled back)" : "", s.newest_version,
              absl::StrJoin(s.held_versions, ",").c_str(), s.staleness_seconds, s.bytes / 1e6,
              s.source.c_str());
  for (const auto& t : s.tables) {
    std::printf(
        "  %-24s %-6s %8s %12lu rows  digest %016lx\n", t.name.c_str(),
        t.dense ? "dense" : "sparse",
        t.dense ? absl::StrCat(t.dense_size, " el").c_str() : absl::StrCat("dim ", t.dim).c_str(),
        t.rows, t.digest);
  }
  if (!s.last_error.empty()) std::printf("  last error: %s\n", s.last_error.c_str());
}

}  // namespace

int RunServing(const ServingCommandOptions& o) {
  if (o.replicas.empty()) {
    std::fprintf(stderr, "tessera serving %s: --connect=host:port[,...] (serving replicas)\n",
                 o.action.c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<ServingClient>> client =
      ServingClient::Connect({.replicas = o.replicas, .credentials = o.credentials});
  if (!client.ok()) return Fail(o.action, client.status());
  if (o.action == "status") {
    int rc = 0;
    for (size_t i = 0; i < o.replicas.size(); ++i) {
      absl::StatusOr<ServingStatusInfo> s = (*client)->Status(i);
      if (!s.ok()) {
        rc = Fail("status", absl::Status(s.status().code(),
                                         absl::StrCat(o.replicas[i], ": ", s.status().message())));
        continue;
      }
      PrintStatus(o.replicas[i], *s, o.json);
    }
    return rc;
  }
  if (o.action == "lookup") {
    if (o.table.empty() || o.keys.empty()) {
      std::fprintf(stderr, "tessera serving lookup: --table and --keys=K[,K...] are required\n");
      return 2;
    }
    absl::StatusOr<ServingStatusInfo> s = (*client)->Status(0);
    if (!s.ok()) return Fail("lookup", s.status());
    uint32_t dim = 0;
    for (const auto& t : s->tables) {
      if (t.name == o.table) dim = t.dim;
    }
    if (dim == 0) dim = 1;  // the replica names the error below
    std::vector<float> values(o.keys.size() * dim);
    std::vector<bool> found;
    absl::StatusOr<uint64_t> v =
        (*client)->Lookup(o.table, o.keys, absl::MakeSpan(values), o.version, &found);
    if (!v.ok()) return Fail("lookup", v.status());
    for (size_t i = 0; i < o.keys.size(); ++i) {
      std::printf("%lu%s", o.keys[i], found[i] ? "" : " (no row: initializer)");
      for (uint32_t c = 0; c < dim; ++c) std::printf(" %.9g", values[i * dim + c]);
      std::printf("\n");
    }
    std::printf("version %lu\n", *v);
    return 0;
  }
  if (o.action == "rollback" || o.action == "resume") {
    if (o.action == "rollback" && o.version == 0) {
      std::fprintf(stderr, "tessera serving rollback: --version=V is required\n");
      return 2;
    }
    int rc = 0;
    for (size_t i = 0; i < o.replicas.size(); ++i) {
      absl::StatusOr<uint64_t> v =
          o.action == "rollback" ? (*client)->Rollback(i, o.version) : (*client)->Resume(i);
      if (!v.ok()) {
        rc = Fail(o.action, absl::Status(v.status().code(),
                                         absl::StrCat(o.replicas[i], ": ", v.status().message())));
        continue;
      }
      std::printf("%s: serving version %lu%s\n", o.replicas[i].c_str(), *v,
                  o.action == "rollback" ? " (pinned until `tessera serving resume`)" : "");
    }
    return rc;
  }
  std::fprintf(stderr, "tessera serving: unknown action '%s' (status, lookup, rollback, resume)\n",
               o.action.c_str());
  return 2;
}

}  // namespace tessera
