// RestoreThroughCoordinator: a checkpoint restored into a replicated cluster, LOST shards
// included (docs/replication.md, T8 and T8').
#include <grpcpp/grpcpp.h>

#include <thread>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/admin.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "proto/cluster.grpc.pb.h"

namespace tessera {
namespace {

template <typename Call>
absl::Status Ask(Call&& call, absl::Duration timeout = absl::Seconds(10)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return FromGrpcStatus(call(&ctx));
}

}  // namespace

absl::StatusOr<ClusterRestoreResult> RestoreThroughCoordinator(const std::string& coordinator,
                                                               const std::string& dir, uint64_t id,
                                                               absl::Duration timeout,
                                                               const Credentials& credentials,
                                                               RestoreLifecycle lifecycle) {
  auto stub = v1::Coordinator::NewStub(MakeChannel(coordinator, credentials));
  v1::GetClusterMapResponse map;
  absl::Status st = Ask([&](grpc::ClientContext* ctx) {
    return stub->GetClusterMap(ctx, v1::GetClusterMapRequest(), &map);
  });
  if (!st.ok())
    return absl::Status(st.code(), absl::StrCat("coordinator ", coordinator, ": ", st.message()));

  // 1. Every LOST (or interrupted RESTORING) shard gets a server (T8).
  ClusterRestoreResult result;
  struct Target {
    uint32_t shard;
    std::string server;
    uint64_t incarnation;
  };
  std::vector<Target> targets;
  for (int s = 0; s < map.map().shards_size(); ++s) {
    const v1::ShardState state = map.map().shards(s).state();
    if (state != v1::SHARD_STATE_LOST && state != v1::SHARD_STATE_RESTORING) continue;
    v1::RecoverShardRequest req;
    req.set_shard(s);
    v1::RecoverShardResponse resp;
    st = Ask([&](grpc::ClientContext* ctx) { return stub->RecoverShard(ctx, req, &resp); });
    if (!st.ok()) return absl::Status(st.code(), absl::StrFormat("shard %d: %s", s, st.message()));
    targets.push_back({static_cast<uint32_t>(s), resp.server(), resp.incarnation()});
    result.recovered_shards.push_back(s);
  }

  // 2. Wait until every shard has a primary acting as one (the targets learn that they restore
  // from their next heartbeat).
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  std::vector<std::string> primaries;
  std::string waiting;
  while (true) {
    v1::GetClusterStatusResponse status;
    st = Ask([&](grpc::ClientContext* ctx) {
      return stub->GetClusterStatus(ctx, v1::GetClusterStatusRequest(), &status);
    });
    if (!st.ok()) return st;
    primaries.clear();
    waiting.clear();
    for (int s = 0; s < status.map().shards_size(); ++s) {
      const v1::ShardReplicas& shard = status.map().shards(s);
      const bool restoring = shard.state() == v1::SHARD_STATE_RESTORING;
      if (shard.replicas().empty() || (shard.lost() && !restoring)) {
        return absl::UnavailableError(
            absl::StrFormat("shard %d lost its server while restoring; run the restore again", s));
      }
      const v1::Replica& p = shard.replicas(0);
      primaries.push_back(p.address());
      bool acting = false;
      for (const v1::MemberInfo& m : status.members()) {
        acting |=
            m.alive() && m.status().address() == p.address() &&
            m.status().incarnation() == p.incarnation() &&
            m.status().epoch() >= status.map().epoch() &&
            m.status().role() == (restoring ? v1::SERVER_ROLE_RESTORING : v1::SERVER_ROLE_PRIMARY);
      }
      if (!acting) waiting = absl::StrFormat("shard %d's primary %s", s, p.address());
    }
    if (waiting.empty()) break;
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("waited 60 s for ", waiting, " to act on the new map"));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }

  // 3. Every shard restores (two phases); 4. the recovered ones serve again (T8').
  absl::StatusOr<RestoreResult> restored =
      RestoreCluster(dir, primaries, 1, id, timeout, credentials, lifecycle);
  if (!restored.ok()) return restored.status();
  result.restore = *restored;
  for (const Target& t : targets) {
    v1::FinishRecoveryRequest req;
    req.set_shard(t.shard);
    req.set_server(t.server);
    req.set_incarnation(t.incarnation);
    v1::FinishRecoveryResponse resp;
    st = Ask([&](grpc::ClientContext* ctx) { return stub->FinishRecovery(ctx, req, &resp); });
    if (!st.ok()) {
      return absl::Status(st.code(), absl::StrFormat("shard %u restored on %s but not resumed: %s",
                                                     t.shard, t.server, st.message()));
    }
  }
  return result;
}

}  // namespace tessera
