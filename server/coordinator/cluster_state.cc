// ClusterState: the coordinator's decisions (docs/replication.md).
#include <algorithm>
#include <map>

#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "proto/cluster.pb.h"
#include "server/coordinator/coordinator.h"

namespace tessera {

struct ClusterState::Impl {
  struct Member {
    uint64_t incarnation = 0;
    int32_t shard = -1;  // bound shard
    bool alive = false;
    absl::Time deadline;
    uint64_t order = 0;  // first registration, for deterministic placement
    v1::ServerStatus status;
  };

  CoordinatorOptions options;
  v1::ClusterMap map;
  std::map<std::string, Member> members;
  uint64_t next_order = 0;
  uint64_t failovers = 0;

  explicit Impl(const CoordinatorOptions& o) : options(o) {
    map.set_epoch(1);
    map.set_num_shards(o.num_shards);
    map.set_num_vshards(o.num_vshards);
    map.set_replication(o.replication);
    for (uint32_t s = 0; s < o.num_shards; ++s) map.add_shards();
  }

  bool Placed(const std::string& address) const {
    for (const auto& shard : map.shards()) {
      for (const auto& r : shard.replicas()) {
        if (r.address() == address) return true;
      }
    }
    return false;
  }

  // The alive, unplaced member to add to shard s: one bound to s first, then an unbound one,
  // earliest registered first. Empty: none.
  std::string Candidate(int32_t s) const {
    const std::string* best = nullptr;
    const Member* best_m = nullptr;
    for (const auto& [addr, m] : members) {
      if (!m.alive || (m.shard != s && m.shard != -1) || Placed(addr)) continue;
      const bool better = best_m == nullptr || (m.shard == s && best_m->shard != s) ||
                          ((m.shard == s) == (best_m->shard == s) && m.order < best_m->order);
      if (better) {
        best = &addr;
        best_m = &m;
      }
    }
    return best == nullptr ? std::string() : *best;
  }

  void Bump(const std::string& why) {
    map.set_epoch(map.epoch() + 1);
    LogInfo("epoch %u: %s", map.epoch(), why);
  }

  // Fills empty shards with a primary, then every shard up to R with joining replicas.
  bool Rebalance() {
    bool changed = false;
    for (int32_t s = 0; s < map.shards_size(); ++s) {
      v1::ShardReplicas* shard = map.mutable_shards(s);
      if (!shard->replicas().empty() || shard->lost()) continue;
      const std::string c = Candidate(s);
      if (c.empty()) continue;
      v1::Replica* r = shard->add_replicas();
      r->set_address(c);
      r->set_state(v1::REPLICA_STATE_LIVE);
      members[c].shard = s;
      Bump(absl::StrFormat("%s is the primary of new shard %d", c, s));
      changed = true;
    }
    for (int32_t s = 0; s < map.shards_size(); ++s) {
      v1::ShardReplicas* shard = map.mutable_shards(s);
      while (!shard->lost() && !shard->replicas().empty() &&
             static_cast<uint32_t>(shard->replicas_size()) < options.replication) {
        const std::string c = Candidate(s);
        if (c.empty()) break;
        v1::Replica* r = shard->add_replicas();
        r->set_address(c);
        r->set_state(v1::REPLICA_STATE_JOINING);
        members[c].shard = s;
        Bump(absl::StrFormat("%s joins shard %d", c, s));
        changed = true;
      }
    }
    return changed;
  }

  // The process at `address` is gone (lease expired, or it restarted): fail over or remove.
  bool Remove(const std::string& address) {
    bool changed = false;
    for (int32_t s = 0; s < map.shards_size(); ++s) {
      v1::ShardReplicas* shard = map.mutable_shards(s);
      auto* replicas = shard->mutable_replicas();
      int index = -1;
      for (int i = 0; i < replicas->size(); ++i) {
        if (replicas->Get(i).address() == address) index = i;
      }
      if (index < 0) continue;
      changed = true;
      if (index > 0) {
        replicas->DeleteSubrange(index, 1);
        Bump(absl::StrFormat("replica %s of shard %d removed", address, s));
        continue;
      }
      // The primary: promote the LIVE backup with the highest LSN it reported.
      int best = -1;
      uint64_t best_lsn = 0;
      for (int i = 1; i < replicas->size(); ++i) {
        const v1::Replica& r = replicas->Get(i);
        auto m = members.find(r.address());
        if (r.state() != v1::REPLICA_STATE_LIVE || m == members.end() || !m->second.alive) {
          continue;
        }
        if (best < 0 || m->second.status.lsn() > best_lsn) {
          best = i;
          best_lsn = m->second.status.lsn();
        }
      }
      if (best < 0) {
        shard->set_lost(true);
        Bump(absl::StrFormat(
            "primary %s of shard %d is gone and no LIVE backup is left: the shard is lost "
            "until a checkpoint is restored",
            address, s));
        continue;
      }
      v1::ShardReplicas next;
      v1::Replica* p = next.add_replicas();
      p->set_address(replicas->Get(best).address());
      p->set_state(v1::REPLICA_STATE_LIVE);
      for (int i = 1; i < replicas->size(); ++i) {
        if (i == best) continue;
        v1::Replica* r = next.add_replicas();
        r->set_address(replicas->Get(i).address());
        r->set_state(v1::REPLICA_STATE_JOINING);  // re-synced from the new primary
      }
      *shard = std::move(next);
      ++failovers;
      Bump(absl::StrFormat("primary %s of shard %d is gone; %s (LSN %u) is promoted", address, s,
                           p->address(), best_lsn));
    }
    return changed;
  }
};

ClusterState::ClusterState(const CoordinatorOptions& options)
    : impl_(std::make_unique<Impl>(options)) {}
ClusterState::ClusterState(ClusterState&&) = default;
ClusterState& ClusterState::operator=(ClusterState&&) = default;
ClusterState::~ClusterState() = default;

absl::Status ClusterState::Load(const v1::CoordinatorState& state, absl::Time now) {
  const v1::ClusterMap& m = state.map();
  if (m.num_shards() != impl_->options.num_shards ||
      m.num_vshards() != impl_->options.num_vshards ||
      m.shards_size() != static_cast<int>(m.num_shards())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the state directory holds a cluster of %u shards and %u vshards, not %u and %u",
        m.num_shards(), m.num_vshards(), impl_->options.num_shards, impl_->options.num_vshards));
  }
  impl_->map = m;
  impl_->map.set_replication(impl_->options.replication);
  impl_->failovers = state.failovers();
  impl_->members.clear();
  for (const v1::MemberRecord& r : state.members()) {
    Impl::Member& member = impl_->members[r.address()];
    member.incarnation = r.incarnation();
    member.shard = r.shard();
    member.alive = true;  // a fresh lease: the coordinator's downtime is not the server's
    member.deadline = now + impl_->options.lease;
    member.order = impl_->next_order++;
    member.status.set_address(r.address());
    member.status.set_incarnation(r.incarnation());
    member.status.set_shard(r.shard());
  }
  return absl::OkStatus();
}

void ClusterState::Save(v1::CoordinatorState* state) const {
  *state->mutable_map() = impl_->map;
  state->set_failovers(impl_->failovers);
  for (const auto& [addr, m] : impl_->members) {
    v1::MemberRecord* r = state->add_members();
    r->set_address(addr);
    r->set_incarnation(m.incarnation);
    r->set_shard(m.shard);
  }
}

bool ClusterState::Heartbeat(const v1::ServerStatus& status, absl::Time now) {
  bool changed = false;
  auto it = impl_->members.find(status.address());
  if (it != impl_->members.end() && it->second.incarnation != status.incarnation()) {
    // The same address, a new process: the old one and its memory are gone.
    LogInfo("%s restarted (incarnation %x -> %x)", status.address(), it->second.incarnation,
            status.incarnation());
    changed |= impl_->Remove(status.address());
    it->second.incarnation = status.incarnation();
    it->second.shard = -1;
    changed = true;
  }
  if (it == impl_->members.end()) {
    it = impl_->members.emplace(status.address(), Impl::Member{}).first;
    it->second.incarnation = status.incarnation();
    it->second.alive = true;
    it->second.order = impl_->next_order++;
    LogInfo("%s registered", status.address());
    changed = true;
  }
  Impl::Member& m = it->second;
  m.status = status;
  m.deadline = now + impl_->options.lease;
  if (!m.alive) {
    m.alive = true;
    LogInfo("%s is back (same process)", status.address());
    // A shard lost because this primary's lease expired has its state back.
    for (int32_t s = 0; s < impl_->map.shards_size(); ++s) {
      v1::ShardReplicas* shard = impl_->map.mutable_shards(s);
      if (shard->lost() && !shard->replicas().empty() &&
          shard->replicas(0).address() == status.address()) {
        shard->set_lost(false);
        impl_->Bump(absl::StrFormat("shard %d is back with its primary %s", s, status.address()));
        changed = true;
      }
    }
  }
  if (status.shard() >= 0 && m.shard != status.shard()) {
    m.shard = status.shard();
    changed = true;
  }
  changed |= impl_->Rebalance();
  return changed;
}

bool ClusterState::ExpireLeases(absl::Time now) {
  bool changed = false;
  for (auto& [addr, m] : impl_->members) {
    if (!m.alive || m.deadline > now) continue;
    m.alive = false;
    LogWarning("lease of %s expired", addr);
    changed |= impl_->Remove(addr);
  }
  changed |= impl_->Rebalance();
  return changed;
}

absl::StatusOr<bool> ClusterState::CaughtUp(uint32_t shard, const std::string& primary,
                                            const std::string& replica) {
  if (shard >= impl_->options.num_shards) {
    return absl::InvalidArgumentError(absl::StrFormat("no shard %u", shard));
  }
  v1::ShardReplicas* s = impl_->map.mutable_shards(shard);
  if (s->replicas().empty() || s->replicas(0).address() != primary) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s is not the primary of shard %u", primary, shard));
  }
  for (auto& r : *s->mutable_replicas()) {
    if (r.address() != replica) continue;
    if (r.state() == v1::REPLICA_STATE_LIVE) return false;
    r.set_state(v1::REPLICA_STATE_LIVE);
    impl_->Bump(absl::StrFormat("%s is a LIVE replica of shard %u", replica, shard));
    return true;
  }
  return absl::FailedPreconditionError(
      absl::StrFormat("%s is not a replica of shard %u", replica, shard));
}

const v1::ClusterMap& ClusterState::map() const { return impl_->map; }
uint64_t ClusterState::failovers() const { return impl_->failovers; }

void ClusterState::Status(absl::Time now, v1::GetClusterStatusResponse* out) const {
  *out->mutable_map() = impl_->map;
  out->set_failovers(impl_->failovers);
  for (const auto& [addr, m] : impl_->members) {
    v1::MemberInfo* info = out->add_members();
    *info->mutable_status() = m.status;
    info->set_alive(m.alive);
    info->set_seconds_since_heartbeat(
        absl::ToDoubleSeconds(now - (m.deadline - impl_->options.lease)));
  }
}

}  // namespace tessera
