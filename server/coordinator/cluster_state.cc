// ClusterState: the coordinator's decisions (docs/replication.md, "Coordinator transitions";
// the T and F labels below are that table's).
#include "server/coordinator/cluster_state.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"

namespace tessera {
namespace {

int FindReplica(const v1::ShardReplicas& shard, const std::string& address, uint64_t incarnation) {
  for (int i = 0; i < shard.replicas_size(); ++i) {
    const v1::Replica& r = shard.replicas(i);
    if (r.address() == address && r.incarnation() == incarnation) return i;
  }
  return -1;
}

const char* ShardStateName(v1::ShardState s) {
  switch (s) {
    case v1::SHARD_STATE_LOST:
      return "LOST";
    case v1::SHARD_STATE_RESTORING:
      return "RESTORING";
    default:
      return "SERVING";
  }
}

}  // namespace

ClusterState::ClusterState(const CoordinatorOptions& options) : options_(options) {
  map_.set_epoch(1);
  map_.set_num_shards(options.num_shards);
  map_.set_num_vshards(options.num_vshards);
  map_.set_replication(options.replication);
  for (uint32_t s = 0; s < options.num_shards; ++s) {
    map_.add_shards()->set_state(v1::SHARD_STATE_SERVING);
  }
  promoting_.assign(options.num_shards, kNone);
  lost_since_.assign(options.num_shards, kNone);
}

absl::Status ClusterState::Load(const v1::CoordinatorState& state, int64_t now_ms) {
  const v1::ClusterMap& m = state.map();
  if (m.num_shards() != options_.num_shards || m.num_vshards() != options_.num_vshards ||
      m.shards_size() != static_cast<int>(m.num_shards())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the state directory holds a cluster of %u shards and %u vshards, not %u and %u",
        m.num_shards(), m.num_vshards(), options_.num_shards, options_.num_vshards));
  }
  map_ = m;
  map_.set_replication(options_.replication);
  failovers_ = state.failovers();
  members_.clear();
  for (const v1::MemberRecord& r : state.members()) {
    Member& member = members_[r.address()];
    member.incarnation = r.incarnation();
    member.shard = r.shard();
    member.deadline_ms = now_ms + absl::ToInt64Milliseconds(options_.lease);  // T9
    member.heard_ms = now_ms;
    member.order = next_order_++;
    member.status.set_address(r.address());
    member.status.set_incarnation(r.incarnation());
    member.status.set_shard(r.shard());
  }
  // A map written before replicas carried incarnations and shards carried states.
  for (v1::ShardReplicas& shard : *map_.mutable_shards()) {
    if (shard.state() == v1::SHARD_STATE_UNSPECIFIED) {
      shard.set_state(shard.lost() ? v1::SHARD_STATE_LOST : v1::SHARD_STATE_SERVING);
    }
    for (v1::Replica& r : *shard.mutable_replicas()) {
      auto it = members_.find(r.address());
      if (r.incarnation() == 0 && it != members_.end()) r.set_incarnation(it->second.incarnation);
    }
  }
  promoting_.assign(options_.num_shards, kNone);
  lost_since_.assign(options_.num_shards, kNone);
  for (uint32_t s = 0; s < options_.num_shards; ++s) {
    // Any echo of this (new) life proves a holder alive after the loss.
    if (map_.shards(s).state() == v1::SHARD_STATE_LOST) lost_since_[s] = 0;
  }
  Touch();
  return absl::OkStatus();
}

void ClusterState::Save(v1::CoordinatorState* state) const {
  *state->mutable_map() = map_;
  state->set_failovers(failovers_);
  for (const auto& [addr, m] : members_) {
    v1::MemberRecord* r = state->add_members();
    r->set_address(addr);
    r->set_incarnation(m.incarnation);
    r->set_shard(m.shard);
  }
}

bool ClusterState::Alive(const v1::Replica& r) const {
  auto it = members_.find(r.address());
  return it != members_.end() && it->second.incarnation == r.incarnation() && !it->second.expired;
}

bool ClusterState::Proven(const Member& m, int64_t batch) const {
  return life_ != 0 && m.status.echo_life() == life_ &&
         static_cast<int64_t>(m.status.echo_seq()) >= batch;
}

bool ClusterState::Placed(const std::string& address, uint64_t incarnation) const {
  for (const v1::ShardReplicas& shard : map_.shards()) {
    if (FindReplica(shard, address, incarnation) >= 0) return true;
  }
  return false;
}

std::string ClusterState::Candidate(int32_t s) const {
  const std::string* best = nullptr;
  const Member* best_m = nullptr;
  for (const auto& [addr, m] : members_) {
    if (m.expired || !m.heard || (m.shard != s && m.shard != -1) || Placed(addr, m.incarnation)) {
      continue;
    }
    const bool better = best_m == nullptr || (m.shard == s && best_m->shard != s) ||
                        ((m.shard == s) == (best_m->shard == s) && m.order < best_m->order);
    if (better) {
      best = &addr;
      best_m = &m;
    }
  }
  return best == nullptr ? std::string() : *best;
}

void ClusterState::Bump(const std::string& why) {
  map_.set_epoch(map_.epoch() + 1);
  Touch();
  LogInfo("epoch %u: %s", map_.epoch(), why);
}

void ClusterState::SetShardState(int32_t s, v1::ShardState state) {
  v1::ShardReplicas* shard = map_.mutable_shards(s);
  shard->set_state(state);
  shard->set_lost(state != v1::SHARD_STATE_SERVING);
}

v1::Replica* ClusterState::AddReplica(int32_t s, const std::string& address,
                                      v1::ReplicaState state) {
  Member& m = members_.at(address);
  v1::Replica* r = map_.mutable_shards(s)->add_replicas();
  r->set_address(address);
  r->set_incarnation(m.incarnation);
  r->set_state(state);
  r->set_join_epoch(map_.epoch() + 1);  // the epoch the caller's Bump makes
  if (m.shard != s) {
    m.shard = s;
    Touch();
  }
  return r;
}

void ClusterState::Rebalance() {
  for (int32_t s = 0; s < map_.shards_size(); ++s) {  // T6': a new cluster's shards
    const v1::ShardReplicas& shard = map_.shards(s);
    if (shard.state() != v1::SHARD_STATE_SERVING || !shard.replicas().empty()) continue;
    const std::string c = Candidate(s);
    if (c.empty()) continue;
    AddReplica(s, c, v1::REPLICA_STATE_LIVE);
    Bump(absl::StrFormat("%s is the primary of new shard %d", c, s));
  }
  for (int32_t s = 0; s < map_.shards_size(); ++s) {  // T6
    while (map_.shards(s).state() == v1::SHARD_STATE_SERVING && promoting_[s] == kNone &&
           !map_.shards(s).replicas().empty() &&
           static_cast<uint32_t>(map_.shards(s).replicas_size()) < options_.replication) {
      const std::string c = Candidate(s);
      if (c.empty()) break;
      AddReplica(s, c, v1::REPLICA_STATE_JOINING);
      Bump(absl::StrFormat("%s joins shard %d", c, s));
    }
  }
}

void ClusterState::Promote(int32_t s, int index, const char* why) {
  const v1::ShardReplicas& shard = map_.shards(s);
  const v1::Replica old = shard.replicas(0);
  v1::ShardReplicas next;
  next.set_state(v1::SHARD_STATE_SERVING);
  *next.add_replicas() = shard.replicas(index);
  for (int i = 1; i < shard.replicas_size(); ++i) {
    // The LIVE survivors stay LIVE: they hold every acknowledged update, and the new primary
    // counts them at once (it re-syncs them before it acknowledges anything new).
    if (i != index && Alive(shard.replicas(i))) *next.add_replicas() = shard.replicas(i);
  }
  const v1::Replica& p = next.replicas(0);
  const uint64_t lsn = members_.at(p.address()).status.lsn();
  *map_.mutable_shards(s) = std::move(next);
  promoting_[s] = kNone;
  ++failovers_;
  Bump(
      absl::StrFormat("primary %s (incarnation %x) of shard %d failed; %s (LSN %u, %s) is promoted",
                      old.address(), old.incarnation(), s, p.address(), lsn, why));
}

void ClusterState::Revive(int32_t s, int index) {
  const v1::Replica holder = map_.shards(s).replicas(index);
  v1::ShardReplicas* shard = map_.mutable_shards(s);
  shard->clear_replicas();
  *shard->add_replicas() = holder;
  SetShardState(s, v1::SHARD_STATE_SERVING);
  lost_since_[s] = kNone;
  Bump(absl::StrFormat("shard %d is back: its holder %s returned with its memory", s,
                       holder.address()));
}

void ClusterState::MaybeLost(int32_t s) {
  v1::ShardReplicas* shard = map_.mutable_shards(s);
  if (shard->state() != v1::SHARD_STATE_SERVING || promoting_[s] == kNone) return;
  for (const v1::Replica& r : shard->replicas()) {
    if (r.state() == v1::REPLICA_STATE_LIVE && Alive(r)) return;
  }
  v1::ShardReplicas next;
  std::vector<std::string> holders;
  for (const v1::Replica& r : shard->replicas()) {
    if (r.state() != v1::REPLICA_STATE_LIVE) continue;
    *next.add_replicas() = r;
    holders.push_back(r.address());
  }
  *shard = std::move(next);
  SetShardState(s, v1::SHARD_STATE_LOST);
  promoting_[s] = kNone;
  lost_since_[s] = static_cast<int64_t>(seq_);
  Bump(absl::StrFormat(
      "shard %d is LOST: no LIVE replica is alive (holders of its data: %s); it serves nothing "
      "until one of them returns or a checkpoint is restored",
      s, absl::StrJoin(holders, ", ")));
}

void ClusterState::Fail(const std::string& address, uint64_t incarnation) {
  for (int32_t s = 0; s < map_.shards_size(); ++s) {
    v1::ShardReplicas* shard = map_.mutable_shards(s);
    const int index = FindReplica(*shard, address, incarnation);
    if (index < 0) continue;
    switch (shard->state()) {
      case v1::SHARD_STATE_LOST:
        continue;
      case v1::SHARD_STATE_RESTORING:
        shard->clear_replicas();
        SetShardState(s, v1::SHARD_STATE_LOST);
        lost_since_[s] = static_cast<int64_t>(seq_);
        Bump(absl::StrFormat("%s, restoring shard %d, failed: the shard is LOST; restore again",
                             address, s));
        continue;
      default:
        break;
    }
    if (index == 0 && promoting_[s] == kNone) {
      promoting_[s] = static_cast<int64_t>(seq_);
      if (options_.promote_unproven_for_testing) {  // the broken rule: an unexpired lease
        int best = -1;
        for (int i = 1; i < shard->replicas_size(); ++i) {
          const v1::Replica& r = shard->replicas(i);
          if (r.state() == v1::REPLICA_STATE_LIVE && Alive(r)) {
            best = i;
            break;
          }
        }
        if (best > 0) {
          Promote(s, best, "lease unexpired");
          continue;
        }
      }
      LogWarning(
          "primary %s of shard %d failed; a LIVE backup is promoted once it proves it is "
          "alive",
          address, s);
    } else if (index > 0 && (shard->replicas(index).state() == v1::REPLICA_STATE_JOINING ||
                             promoting_[s] == kNone)) {
      shard->mutable_replicas()->DeleteSubrange(index, 1);
      Bump(absl::StrFormat("replica %s of shard %d failed and is removed", address, s));
    }
    MaybeLost(s);
  }
}

absl::Status ClusterState::Heartbeat(const v1::ServerStatus& status, int64_t now_ms) {
  const std::string& address = status.address();
  if (address.empty() || status.incarnation() == 0) {
    return absl::InvalidArgumentError("a heartbeat needs the server's address and incarnation");
  }
  auto it = members_.find(address);
  if (it != members_.end() && it->second.incarnation != status.incarnation()) {
    const uint64_t old = it->second.incarnation;
    if (options_.ignore_incarnation_for_testing) {  // the broken rule: identity by address
      for (v1::ShardReplicas& shard : *map_.mutable_shards()) {
        for (v1::Replica& r : *shard.mutable_replicas()) {
          if (r.address() == address) r.set_incarnation(status.incarnation());
        }
      }
      it->second.incarnation = status.incarnation();
      Bump(absl::StrFormat("%s restarted; (broken rule) it keeps its places", address));
    } else if (status.incarnation() < old) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: this process (incarnation %x) was replaced by a newer one at this address "
          "(incarnation %x); it must not serve",
          address, status.incarnation(), old));
    } else {
      LogInfo("%s restarted (incarnation %x -> %x): the old process and its memory are gone",
              address, old, status.incarnation());
      it->second.expired = true;
      Fail(address, old);  // T1
      members_.erase(it);
      it = members_.end();
    }
  }
  if (it == members_.end()) {
    it = members_.emplace(address, Member{}).first;
    it->second.incarnation = status.incarnation();
    it->second.order = next_order_++;
    Touch();
    LogInfo("%s registered (incarnation %x)", address, status.incarnation());
  }
  Member& m = it->second;
  if (m.expired) LogInfo("%s is back (same process)", address);
  m.status = status;
  m.expired = false;
  m.heard = true;
  m.deadline_ms = now_ms + absl::ToInt64Milliseconds(options_.lease);
  m.heard_ms = now_ms;
  // The process's own binding is the truth (ServerCore::Bind): a member placed and removed
  // before it learned of it is unbound again, unless it is placed now (about to bind).
  if (status.shard() != m.shard && (status.shard() >= 0 || !Placed(address, m.incarnation))) {
    m.shard = std::max(status.shard(), -1);
    Touch();
  }
  for (int32_t s = 0; s < map_.shards_size(); ++s) {
    const v1::ShardReplicas& shard = map_.shards(s);
    const int index = FindReplica(shard, address, m.incarnation);
    if (index < 0 || shard.replicas(index).state() != v1::REPLICA_STATE_LIVE) continue;
    if (shard.state() == v1::SHARD_STATE_SERVING && promoting_[s] != kNone &&
        Proven(m, promoting_[s])) {
      if (index > 0) {
        Promote(s, index, "proven alive after the failure");  // T4
      } else {
        promoting_[s] = kNone;  // T4'
        LogInfo("primary %s of shard %d proved it is alive: no failover", address, s);
      }
    } else if (shard.state() == v1::SHARD_STATE_LOST && Proven(m, lost_since_[s])) {
      Revive(s, index);  // T5
    }
  }
  Rebalance();
  return absl::OkStatus();
}

bool ClusterState::NeedsProof(const std::string& address, uint64_t incarnation) const {
  auto it = members_.find(address);
  if (it == members_.end() || it->second.incarnation != incarnation || it->second.expired) {
    return false;
  }
  for (int32_t s = 0; s < map_.shards_size(); ++s) {
    const v1::ShardReplicas& shard = map_.shards(s);
    const int index = FindReplica(shard, address, incarnation);
    if (index < 0 || shard.replicas(index).state() != v1::REPLICA_STATE_LIVE) continue;
    if (shard.state() == v1::SHARD_STATE_SERVING && promoting_[s] != kNone &&
        !Proven(it->second, promoting_[s])) {
      return true;
    }
    if (shard.state() == v1::SHARD_STATE_LOST && !Proven(it->second, lost_since_[s])) {
      return true;
    }
  }
  return false;
}

void ClusterState::ExpireLeases(int64_t now_ms) {
  for (auto& [addr, m] : members_) {
    if (m.expired || m.deadline_ms > now_ms) continue;
    m.expired = true;
    LogWarning("lease of %s (incarnation %x) ended", addr, m.incarnation);
    Fail(addr, m.incarnation);  // T3
  }
  // Entries naming a process that is no longer a member (replaced by a newer incarnation at
  // its address) have failed too: after a restart of the coordinator that forgot a promotion
  // in progress, nothing else would fail them again.
  std::vector<std::pair<std::string, uint64_t>> gone;
  for (const v1::ShardReplicas& shard : map_.shards()) {
    if (shard.state() == v1::SHARD_STATE_LOST) continue;
    for (const v1::Replica& r : shard.replicas()) {
      auto it = members_.find(r.address());
      if (it == members_.end() || it->second.incarnation != r.incarnation()) {
        gone.emplace_back(r.address(), r.incarnation());
      }
    }
  }
  for (const auto& [address, incarnation] : gone) Fail(address, incarnation);
  Rebalance();
}

void ClusterState::RestartLeases(int64_t now_ms) {
  for (auto& [addr, m] : members_) {
    if (!m.expired) m.deadline_ms = now_ms + absl::ToInt64Milliseconds(options_.lease);
  }
}

absl::StatusOr<int> ClusterState::ReportedReplica(uint32_t s, const std::string& primary,
                                                  uint64_t primary_incarnation,
                                                  const std::string& replica,
                                                  uint64_t replica_incarnation,
                                                  uint64_t join_epoch) const {
  if (s >= options_.num_shards) {
    return absl::InvalidArgumentError(absl::StrFormat("no shard %u", s));
  }
  const v1::ShardReplicas& shard = map_.shards(s);
  if (shard.state() != v1::SHARD_STATE_SERVING) {
    return absl::FailedPreconditionError(
        absl::StrFormat("shard %u is %s", s, ShardStateName(shard.state())));
  }
  if (shard.replicas().empty() || shard.replicas(0).address() != primary ||
      shard.replicas(0).incarnation() != primary_incarnation) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s (incarnation %x) is not the primary of shard %u", primary, primary_incarnation, s));
  }
  const int index = FindReplica(shard, replica, replica_incarnation);
  if (index <= 0 || shard.replicas(index).join_epoch() != join_epoch) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s (incarnation %x, joined at epoch %u) is not a replica of shard %u any more", replica,
        replica_incarnation, join_epoch, s));
  }
  return index;
}

absl::Status ClusterState::CaughtUp(const v1::ReportCaughtUpRequest& report) {
  absl::StatusOr<int> index =
      ReportedReplica(report.shard(), report.primary(), report.primary_incarnation(),
                      report.replica(), report.replica_incarnation(), report.join_epoch());
  if (!index.ok()) return index.status();
  v1::Replica* r = map_.mutable_shards(report.shard())->mutable_replicas(*index);
  if (r->state() == v1::REPLICA_STATE_LIVE) return absl::OkStatus();
  r->set_state(v1::REPLICA_STATE_LIVE);
  Bump(absl::StrFormat("%s is a LIVE replica of shard %u", report.replica(), report.shard()));
  return absl::OkStatus();
}

absl::Status ClusterState::ReplicaFailed(const v1::ReportReplicaFailedRequest& report) {
  absl::StatusOr<int> index =
      ReportedReplica(report.shard(), report.primary(), report.primary_incarnation(),
                      report.replica(), report.replica_incarnation(), report.join_epoch());
  if (!index.ok()) return index.status();
  // A new entry for the same process: the primary's sender for the old one stops (and with it
  // the counting), a new one snapshots it as a joiner; the replica sees a new upstream (R4).
  v1::Replica* r = map_.mutable_shards(report.shard())->mutable_replicas(*index);
  r->set_state(v1::REPLICA_STATE_JOINING);
  r->set_join_epoch(map_.epoch() + 1);  // the epoch Bump makes
  Bump(absl::StrFormat("%s of shard %u is FAILED (%s): JOINING again until it is re-synced",
                       report.replica(), report.shard(), report.reason().substr(0, 200)));
  return absl::OkStatus();
}

absl::StatusOr<v1::RecoverShardResponse> ClusterState::RecoverShard(
    const v1::RecoverShardRequest& req) {
  const uint32_t s = req.shard();
  if (s >= options_.num_shards)
    return absl::InvalidArgumentError(absl::StrFormat("no shard %u", s));
  const v1::ShardReplicas& shard = map_.shards(s);
  v1::RecoverShardResponse resp;
  if (shard.state() == v1::SHARD_STATE_SERVING) {
    return absl::FailedPreconditionError(absl::StrFormat("shard %u is not lost: it is serving", s));
  }
  if (shard.state() == v1::SHARD_STATE_RESTORING && Alive(shard.replicas(0))) {
    resp.set_server(shard.replicas(0).address());  // (a retried recovery: the same target)
    resp.set_incarnation(shard.replicas(0).incarnation());
    *resp.mutable_map() = map_;
    return resp;
  }
  std::string target = req.server();
  if (!target.empty()) {
    auto it = members_.find(target);
    if (it == members_.end() || it->second.expired || !it->second.heard) {
      return absl::FailedPreconditionError(
          absl::StrFormat("%s is not an alive server of this cluster", target));
    }
    if (Placed(target, it->second.incarnation) ||
        (it->second.shard != -1 && it->second.shard != static_cast<int32_t>(s))) {
      return absl::FailedPreconditionError(
          absl::StrFormat("%s already holds shard %d; shard %u needs a server without one", target,
                          it->second.shard, s));
    }
  } else {
    target = Candidate(static_cast<int32_t>(s));
  }
  if (target.empty()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "no alive server without a shard can take shard %u: start a tessera-server (any address) "
        "with --coordinator and the cluster's --checkpoint_dir, then run this again",
        s));
  }
  map_.mutable_shards(s)->clear_replicas();
  const v1::Replica* r = AddReplica(static_cast<int32_t>(s), target, v1::REPLICA_STATE_LIVE);
  resp.set_server(target);
  resp.set_incarnation(r->incarnation());
  SetShardState(static_cast<int32_t>(s), v1::SHARD_STATE_RESTORING);
  lost_since_[s] = kNone;
  Bump(absl::StrFormat("operator: shard %u is restored onto %s", s, target));
  *resp.mutable_map() = map_;
  return resp;
}

absl::Status ClusterState::FinishRecovery(const v1::FinishRecoveryRequest& req) {
  const uint32_t s = req.shard();
  if (s >= options_.num_shards)
    return absl::InvalidArgumentError(absl::StrFormat("no shard %u", s));
  const v1::ShardReplicas& shard = map_.shards(s);
  const bool target = !shard.replicas().empty() && shard.replicas(0).address() == req.server() &&
                      shard.replicas(0).incarnation() == req.incarnation();
  if (target && shard.state() == v1::SHARD_STATE_SERVING) return absl::OkStatus();  // a retry
  if (!target || shard.state() != v1::SHARD_STATE_RESTORING) {
    return absl::FailedPreconditionError(
        absl::StrFormat("shard %u is %s, not restoring onto %s (incarnation %x)", s,
                        ShardStateName(shard.state()), req.server(), req.incarnation()));
  }
  SetShardState(static_cast<int32_t>(s), v1::SHARD_STATE_SERVING);
  Bump(absl::StrFormat("operator: shard %u is restored and serves again from %s", s, req.server()));
  Rebalance();
  return absl::OkStatus();
}

std::vector<uint32_t> ClusterState::PromotingShards() const {
  std::vector<uint32_t> out;
  for (uint32_t s = 0; s < promoting_.size(); ++s) {
    if (promoting_[s] != kNone) out.push_back(s);
  }
  return out;
}

void ClusterState::Status(int64_t now_ms, v1::GetClusterStatusResponse* out) const {
  *out->mutable_map() = map_;
  out->set_failovers(failovers_);
  for (uint32_t s : PromotingShards()) out->add_promoting_shards(s);
  for (const auto& [addr, m] : members_) {
    v1::MemberInfo* info = out->add_members();
    *info->mutable_status() = m.status;
    info->mutable_status()->set_shard(m.shard);
    info->set_alive(!m.expired);
    info->set_seconds_since_heartbeat(static_cast<double>(now_ms - m.heard_ms) / 1000.0);
  }
}

}  // namespace tessera
