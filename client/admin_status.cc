// The admin client's view of a cluster: the primaries, and `tessera status`'s report (servers,
// each shard's replicas, their state and lag, and the tables; docs/replication.md).
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/admin.h"
#include "client/client.h"
#include "client/internal/coordinator_queries.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "common/http_get.h"
#include "common/prom_text.h"
#include "proto/cluster.grpc.pb.h"

namespace tessera {
namespace {

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

const char* StateName(v1::ReplicaState s) {
  return s == v1::REPLICA_STATE_LIVE ? "live" : "joining";
}

const char* ShardStateName(v1::ShardState s) {
  switch (s) {
    case v1::SHARD_STATE_LOST:
      return "lost";
    case v1::SHARD_STATE_RESTORING:
      return "restoring";
    default:
      return "serving";
  }
}

}  // namespace

absl::StatusOr<std::string> FormatClusterStatus(const std::string& coordinator, bool json,
                                                const Credentials& credentials) {
  absl::StatusOr<v1::GetClusterStatusResponse> status =
      client_internal::FetchClusterStatus(MakeChannel(coordinator, credentials), absl::Seconds(5));
  if (!status.ok()) {
    return absl::Status(status.status().code(), absl::StrFormat("coordinator %s: %s", coordinator,
                                                                status.status().message()));
  }
  const v1::GetClusterStatusResponse& resp = *status;
  std::map<std::string, const v1::MemberInfo*> members;
  std::string checkpoint_dir;  // the cluster's, as its servers report it
  for (const auto& m : resp.members()) {
    members[m.status().address()] = &m;
    if (checkpoint_dir.empty()) checkpoint_dir = m.status().checkpoint_dir();
  }
  const v1::ClusterMap& map = resp.map();
  std::set<uint32_t> promoting(resp.promoting_shards().begin(), resp.promoting_shards().end());
  // What recovers a shard beyond R-1 failures (docs/operations.md, "A shard is lost").
  const std::string recover =
      checkpoint_dir.empty()
          ? std::string()
          : absl::StrFormat("tessera checkpoint restore --coordinator=%s --checkpoint_dir=%s",
                            coordinator, checkpoint_dir);
  auto same_process = [&](const v1::Replica& r) {
    auto it = members.find(r.address());
    return it != members.end() && it->second->status().incarnation() == r.incarnation();
  };
  auto replica_alive = [&](const v1::Replica& r) {
    return same_process(r) && members.at(r.address())->alive();
  };

  // Tables, through a client (only when every shard has a primary).
  std::vector<TableStatus> tables;
  std::string tables_error;
  {
    ClientOptions o;
    o.coordinator = coordinator;
    o.credentials = credentials;
    o.connect_timeout_ms = 2000;
    o.retry_timeout_ms = 2000;
    o.num_vshards = map.num_vshards();
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(o);
    absl::StatusOr<std::vector<TableStatus>> listed =
        client.ok() ? (*client)->ListTables()
                    : absl::StatusOr<std::vector<TableStatus>>(client.status());
    if (listed.ok()) {
      tables = *listed;
    } else {
      tables_error = std::string(listed.status().message());
    }
  }

  // Each live server's checkpoint figures, from its /metrics.
  struct Checkpoints {
    std::string error;  // why the figures are missing
    double ok = 0, failed = 0, last_unix_s = 0, last_bytes = 0;
  };
  std::map<std::string, Checkpoints> checkpoints;
  const double now_s = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  for (const auto& m : resp.members()) {
    Checkpoints& c = checkpoints[m.status().address()];
    const std::string& address = m.status().address();
    const std::string host = address.substr(0, address.rfind(':'));
    if (!m.alive() || m.status().metrics_port() <= 0) {
      c.error = !m.alive() ? "dead" : "no /metrics";
      continue;
    }
    absl::StatusOr<std::string> text = HttpGet(
        host, m.status().metrics_port(), "/metrics", absl::Seconds(2),
        {credentials.metrics_tls ? credentials.tls_ca_file : "", credentials.metrics_basic_auth});
    if (!text.ok()) {
      c.error = std::string(text.status().message());
      continue;
    }
    const std::vector<PromSample> s = ParsePromText(*text);
    c.ok = SumSamples(s, "tessera_checkpoints_total", {{"result", "ok"}});
    c.failed = SumSamples(s, "tessera_checkpoints_total", {{"result", "error"}});
    c.last_unix_s = SumSamples(s, "tessera_checkpoint_last_success_timestamp_seconds");
    c.last_bytes = SumSamples(s, "tessera_checkpoint_last_bytes");
  }
  auto checkpoint_line = [&](const std::string& address) {
    const Checkpoints& c = checkpoints[address];
    if (!c.error.empty()) return absl::StrCat("(", c.error, ")");
    if (c.last_unix_s <= 0) {
      return absl::StrFormat("none written%s",
                             c.failed > 0 ? absl::StrFormat(", %.0f failed", c.failed) : "");
    }
    return absl::StrFormat("last part written %.0f s ago (%.1f MB); %.0f ok, %.0f failed",
                           now_s - c.last_unix_s, c.last_bytes / 1e6, c.ok, c.failed);
  };

  auto lsn_of = [&](const std::string& address) -> uint64_t {
    auto it = members.find(address);
    return it == members.end() ? 0 : it->second->status().lsn();
  };
  std::string out;
  if (json) {
    std::vector<std::string> shards;
    for (int s = 0; s < map.shards_size(); ++s) {
      const auto& shard = map.shards(s);
      const uint64_t primary_lsn =
          shard.replicas().empty() ? 0 : lsn_of(shard.replicas(0).address());
      std::vector<std::string> replicas;
      for (int i = 0; i < shard.replicas_size(); ++i) {
        const auto& r = shard.replicas(i);
        const bool alive = replica_alive(r);
        const uint64_t lsn = same_process(r) ? lsn_of(r.address()) : 0;
        replicas.push_back(absl::StrFormat(
            "{\"address\":%s,\"role\":\"%s\",\"state\":\"%s\",\"alive\":%s,\"lsn\":%u,"
            "\"lag\":%u}",
            JsonString(r.address()), i == 0 ? "primary" : "backup", StateName(r.state()),
            alive ? "true" : "false", lsn, primary_lsn > lsn ? primary_lsn - lsn : 0));
      }
      const bool lost = shard.state() == v1::SHARD_STATE_LOST;
      shards.push_back(absl::StrFormat(
          "{\"shard\":%d,\"state\":\"%s\",\"lost\":%s,\"promoting\":%s,\"replicas\":[%s]%s}", s,
          ShardStateName(shard.state()), lost ? "true" : "false",
          promoting.contains(s) ? "true" : "false", absl::StrJoin(replicas, ","),
          lost ? absl::StrCat(",\"recover\":", JsonString(recover)) : ""));
    }
    std::vector<std::string> servers;
    for (const auto& m : resp.members()) {
      servers.push_back(absl::StrFormat(
          "{\"address\":%s,\"alive\":%s,\"shard\":%d,\"role\":\"%s\",\"lsn\":%u,"
          "\"seconds_since_heartbeat\":%.3f,\"metrics_port\":%d,\"checkpoints_ok\":%.0f,"
          "\"checkpoints_failed\":%.0f,\"last_checkpoint_unix_s\":%.3f}",
          JsonString(m.status().address()), m.alive() ? "true" : "false", m.status().shard(),
          v1::ServerRole_Name(m.status().role()), m.status().lsn(), m.seconds_since_heartbeat(),
          m.status().metrics_port(), checkpoints[m.status().address()].ok,
          checkpoints[m.status().address()].failed, checkpoints[m.status().address()].last_unix_s));
    }
    std::vector<std::string> tj;
    for (const TableStatus& t : tables) {
      tj.push_back(absl::StrFormat(
          "{\"name\":%s,\"kind\":\"%s\",\"rows\":%u,\"bytes\":%u,\"lifecycle\":%s,"
          "\"evicted_ttl\":%u,\"evicted_capacity\":%u,\"evicted_memory\":%u,"
          "\"would_evict\":%u,\"update_age_quantiles_s\":[%s],\"demoted\":%u,"
          "\"promoted\":%u,\"disk_rows\":%u,\"disk_bytes\":%u}",
          JsonString(t.config.name), TableKindName(t.config.kind), t.rows, t.bytes,
          JsonString(DescribeLifecycle(t.config.lifecycle)), t.evicted_ttl, t.evicted_capacity,
          t.evicted_memory, t.would_evict, absl::StrJoin(t.update_age_quantiles_s, ","), t.demoted,
          t.promoted, t.disk_rows, t.disk_bytes));
    }
    out = absl::StrFormat(
        "{\"epoch\":%u,\"num_shards\":%u,\"replication\":%u,\"failovers\":%u,"
        "\"persist_failures\":%u,\"persist_error\":%s,\"shards\":[%s],"
        "\"servers\":[%s],\"tables\":[%s]%s}\n",
        map.epoch(), map.num_shards(), map.replication(), resp.failovers(), resp.persist_failures(),
        JsonString(resp.persist_error()), absl::StrJoin(shards, ","), absl::StrJoin(servers, ","),
        absl::StrJoin(tj, ","),
        tables_error.empty() ? "" : absl::StrCat(",\"tables_error\":", JsonString(tables_error)));
    return out;
  }
  absl::StrAppendFormat(&out,
                        "cluster: shard-map epoch %u, %u shards x %u replicas, %u failovers so "
                        "far\n",
                        map.epoch(), map.num_shards(), map.replication(), resp.failovers());
  if (!resp.persist_error().empty()) {
    absl::StrAppendFormat(&out,
                          "coordinator: CANNOT WRITE ITS STATE (%u failed writes; no map change "
                          "is published until a write succeeds): %s\n",
                          resp.persist_failures(), resp.persist_error());
  }
  absl::StrAppend(&out, "shards:\n");
  for (int s = 0; s < map.shards_size(); ++s) {
    const auto& shard = map.shards(s);
    int live = 0;
    for (const auto& r : shard.replicas()) live += r.state() == v1::REPLICA_STATE_LIVE;
    std::string state;
    if (shard.state() == v1::SHARD_STATE_LOST) {
      state = "LOST: no replica holding its data is alive; it serves nothing";
    } else if (shard.state() == v1::SHARD_STATE_RESTORING) {
      state = "RESTORING from a checkpoint (run the restore again if it was interrupted)";
    } else if (shard.replicas().empty()) {
      state = "no server yet";
    } else if (promoting.contains(s)) {
      state = "primary failed: promoting a LIVE backup";
    } else {
      state = static_cast<uint32_t>(live) < map.replication() ? "degraded" : "ok";
    }
    absl::StrAppendFormat(&out, "  shard %d: %s\n", s, state);
    const uint64_t primary_lsn = shard.replicas().empty() ? 0 : lsn_of(shard.replicas(0).address());
    for (int i = 0; i < shard.replicas_size(); ++i) {
      const auto& r = shard.replicas(i);
      const bool alive = replica_alive(r);
      const uint64_t lsn = same_process(r) ? lsn_of(r.address()) : 0;
      const char* role = shard.state() == v1::SHARD_STATE_LOST ? "holder"
                         : i == 0                              ? "primary"
                                                               : "backup";
      absl::StrAppendFormat(
          &out, "    %-8s %-21s %-8s %-5s lsn %u%s\n", role, r.address(), StateName(r.state()),
          alive ? "alive" : (same_process(r) ? "DEAD" : "GONE"), lsn,
          i > 0 && primary_lsn > lsn ? absl::StrFormat(" (lag %u)", primary_lsn - lsn) : "");
    }
    if (shard.state() == v1::SHARD_STATE_LOST) {
      absl::StrAppend(&out,
                      "    if a holder was only paused (SIGSTOP, a VM pause) the shard comes back "
                      "with it by itself; otherwise its data is gone from memory:\n");
      if (recover.empty()) {
        absl::StrAppend(&out,
                        "    no server reports a --checkpoint_dir: without a checkpoint the "
                        "shard's data cannot be recovered (docs/operations.md, \"A shard is "
                        "lost\")\n");
      } else {
        absl::StrAppendFormat(&out,
                              "    recover: start a server if none is spare (any address, same "
                              "--checkpoint_dir), then\n      %s\n    (every shard goes back to "
                              "the checkpoint; restart training from its step)\n",
                              recover);
      }
    }
  }
  absl::StrAppend(&out, "servers:\n");
  for (const auto& m : resp.members()) {
    absl::StrAppendFormat(&out, "  %-21s %-5s %-20s shard %2d, last heartbeat %.1f s ago\n",
                          m.status().address(), m.alive() ? "alive" : "DEAD",
                          v1::ServerRole_Name(m.status().role()), m.status().shard(),
                          m.seconds_since_heartbeat());
  }
  absl::StrAppend(&out, "checkpoints:\n");
  for (const auto& m : resp.members()) {
    absl::StrAppendFormat(&out, "  %-21s %s\n", m.status().address(),
                          checkpoint_line(m.status().address()));
  }
  absl::StrAppend(&out, "tables:\n");
  if (!tables_error.empty()) absl::StrAppend(&out, "  (cannot list: ", tables_error, ")\n");
  for (const TableStatus& t : tables) {
    absl::StrAppendFormat(&out, "  %-20s %-6s %12u rows %10.1f MB\n", t.config.name,
                          TableKindName(t.config.kind), t.rows, t.bytes / 1e6);
    if (t.config.lifecycle.enabled()) {
      absl::StrAppendFormat(
          &out,
          "    lifecycle: %s; evicted %u by ttl, %u by capacity, %u near the memory limit%s\n",
          DescribeLifecycle(t.config.lifecycle), t.evicted_ttl, t.evicted_capacity,
          t.evicted_memory,
          t.config.lifecycle.dry_run ? absl::StrFormat(", %u would be (dry run)", t.would_evict)
                                     : "");
      if (t.config.lifecycle.tier()) {
        absl::StrAppendFormat(&out,
                              "    disk tier: %u rows, %.1f MB on disk; %u demoted, %u promoted\n",
                              t.disk_rows, t.disk_bytes / 1e6, t.demoted, t.promoted);
      }
      if (t.update_age_quantiles_s.size() == 3) {
        absl::StrAppendFormat(
            &out, "    seconds since the rows' last update (sampled): p50 %u, p90 %u, p99 %u\n",
            t.update_age_quantiles_s[0], t.update_age_quantiles_s[1], t.update_age_quantiles_s[2]);
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> PrimaryAddresses(const std::string& coordinator,
                                                          const Credentials& credentials) {
  absl::StatusOr<v1::ClusterMap> m =
      client_internal::FetchClusterMap(MakeChannel(coordinator, credentials));
  if (!m.ok()) return m.status();
  std::vector<std::string> out;
  for (int s = 0; s < m->shards_size(); ++s) {
    const auto& shard = m->shards(s);
    if (shard.state() == v1::SHARD_STATE_LOST) {
      return absl::UnavailableError(absl::StrFormat(
          "shard %d is LOST (`tessera status --coordinator=%s` says how to recover it)", s,
          coordinator));
    }
    if (shard.replicas().empty() || shard.lost()) {
      return absl::UnavailableError(absl::StrFormat("shard %d has no primary", s));
    }
    out.push_back(shard.replicas(0).address());
  }
  return out;
}

namespace client_internal {

absl::StatusOr<v1::ClusterMap> FetchClusterMap(const std::shared_ptr<grpc::Channel>& coordinator,
                                               absl::Duration timeout, bool wait_for_ready) {
  if (coordinator == nullptr)
    return absl::FailedPreconditionError("no coordinator (static shards)");
  auto stub = v1::Coordinator::NewStub(coordinator);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  ctx.set_wait_for_ready(wait_for_ready);
  v1::GetClusterMapResponse resp;
  if (grpc::Status s = stub->GetClusterMap(&ctx, v1::GetClusterMapRequest(), &resp); !s.ok()) {
    return FromGrpcStatus(s);
  }
  return resp.map();
}

absl::StatusOr<v1::GetClusterStatusResponse> FetchClusterStatus(
    const std::shared_ptr<grpc::Channel>& coordinator, absl::Duration timeout,
    bool wait_for_ready) {
  if (coordinator == nullptr)
    return absl::FailedPreconditionError("no coordinator (static shards)");
  auto stub = v1::Coordinator::NewStub(coordinator);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  ctx.set_wait_for_ready(wait_for_ready);
  v1::GetClusterStatusResponse resp;
  if (grpc::Status s = stub->GetClusterStatus(&ctx, v1::GetClusterStatusRequest(), &resp);
      !s.ok()) {
    return FromGrpcStatus(s);
  }
  return resp;
}

}  // namespace client_internal
}  // namespace tessera
