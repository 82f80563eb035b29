// The control-plane simulation: the invariants of docs/replication.md, checked after every step.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "server/coordinator/control_plane_sim.h"

namespace tessera::control_plane_sim {

Sim::ProcPtr Sim::Holder(const v1::Replica& r) {
  ProcPtr p = ProcAt(r.address());
  return p != nullptr && p->alive && p->incarnation == r.incarnation() ? p : nullptr;
}

void Sim::CheckSafety() {
  for (uint32_t s = 0; s < shards_; ++s) {
    const v1::ShardReplicas& shard = committed_.shards(s);
    if (shard.state() == v1::SHARD_STATE_RESTORING) continue;
    for (const v1::Replica& r : shard.replicas()) {
      if (r.state() != v1::REPLICA_STATE_LIVE) continue;
      ProcPtr p = Holder(r);
      if (p == nullptr || p->held_acked == acked_[s].size()) continue;
      size_t really = 0;
      for (uint64_t e : acked_[s]) really += p->has.contains(e);
      Fail(
          absl::StrFormat("I1: %s (incarnation %u), LIVE in shard %u of epoch %u, holds %u of "
                          "its %u acknowledged updates (recounted: %u; %u entries)",
                          r.address(), r.incarnation(), s, committed_.epoch(), p->held_acked,
                          acked_[s].size(), really, p->data.size()));
      return;
    }
  }
  for (const ProcPtr& p : slots_) {  // I4
    if (p == nullptr || !p->alive || p->placement.role != Role::kPrimary) continue;
    for (const auto& [key, sender] : p->senders) {
      (void)key;
      if (sender.live_in_map && !Counted(sender.live_in_map, sender.found)) {
        Fail(absl::StrFormat("I4: %s does not count its LIVE backup %s", p->address,
                             sender.id.address));
      }
    }
  }
}

void Sim::CheckTransition(const v1::ClusterMap& before, const v1::ClusterMap& after) {
  for (uint32_t s = 0; s < shards_; ++s) {
    const v1::ShardReplicas& a = before.shards(s);
    const v1::ShardReplicas& b = after.shards(s);
    if (b.replicas().empty() || b.state() == v1::SHARD_STATE_RESTORING) continue;
    const v1::Replica& np = b.replicas(0);
    if (b.state() == v1::SHARD_STATE_SERVING && a.state() == v1::SHARD_STATE_RESTORING) {
      if (a.replicas().empty() || a.replicas(0).address() != np.address() ||
          a.replicas(0).incarnation() != np.incarnation()) {
        Fail(absl::StrFormat("I2: shard %u served from %s after a restore onto another", s,
                             np.address()));
      }
      continue;
    }
    if (b.state() != v1::SHARD_STATE_SERVING) continue;
    if (a.replicas().empty()) continue;  // T6': a new shard's first primary
    if (a.replicas(0).address() == np.address() &&
        a.replicas(0).incarnation() == np.incarnation() && a.state() == b.state()) {
      continue;
    }
    bool was_live = false;
    for (const v1::Replica& r : a.replicas()) {
      was_live |= r.address() == np.address() && r.incarnation() == np.incarnation() &&
                  r.state() == v1::REPLICA_STATE_LIVE;
    }
    if (!was_live) {
      Fail(
          absl::StrFormat("I2/I3/I6: shard %u (%s at epoch %u) got primary %s (incarnation %u), "
                          "which was not one of its LIVE replicas",
                          s, a.state() == v1::SHARD_STATE_LOST ? "LOST" : "SERVING", before.epoch(),
                          np.address(), np.incarnation()));
    }
  }
}

bool Sim::Readable(uint32_t s) {
  const v1::ShardReplicas& shard = committed_.shards(s);
  if (shard.state() != v1::SHARD_STATE_SERVING || shard.replicas().empty()) return false;
  ProcPtr p = Holder(shard.replicas(0));
  return p != nullptr && now_ >= p->stalled_until && p->placement.role == Role::kPrimary &&
         p->placement.shard == static_cast<int32_t>(s);
}

void Sim::TrackOutage() {
  const bool readable = Readable(focus_);
  if (!readable && !outage_start_.has_value()) {
    outage_start_ = now_;
    promoting_seen_.reset();
  }
  if (!readable || !outage_start_.has_value()) return;
  const int64_t start = *outage_start_;
  outage_start_.reset();
  const int64_t promotion = kHeartbeatMs + 3 * kTickMs + 6 * max_delay_ + 20;
  // The promotion began when the primary's lease ended, or earlier when the coordinator saw
  // its restart (T1).
  int64_t began = start + kLeaseMs - kHeartbeatMs - 2 * max_delay_ - kTickMs;
  if (promoting_seen_.has_value() && *promoting_seen_ >= start) {
    began = std::min(began, *promoting_seen_ - kTickMs);
  }
  promoting_seen_.reset();
  int late_failures = 0;
  for (int64_t f : failures_) late_failures += f > began && f < now_;
  const int64_t allowed = (1 + late_failures) * (kLeaseMs + promotion);
  if (now_ - start > allowed) {
    Fail(
        absl::StrFormat("I7: shard %u was unreadable for %d ms (from t=%d), over the %d ms a "
                        "lease plus the promotion time allow",
                        focus_, now_ - start, start, allowed));
  }
}

std::string Sim::Describe(uint32_t s) {
  const v1::ShardReplicas& shard = committed_.shards(s);
  std::string out = absl::StrFormat("[epoch %u:", committed_.epoch());
  for (const v1::Replica& r : shard.replicas()) {
    ProcPtr p = ProcAt(r.address());
    absl::StrAppendFormat(&out, " %s/%u%s", r.address(), r.incarnation(),
                          r.state() == v1::REPLICA_STATE_LIVE ? "" : "?");
    if (p == nullptr || !p->alive || p->incarnation != r.incarnation()) {
      absl::StrAppend(&out, "(gone)");
    } else {
      absl::StrAppendFormat(&out, "(%s at epoch %u%s)", RoleName(p->placement.role), p->epoch,
                            now_ < p->stalled_until ? ", stalled" : "");
    }
  }
  if (core_ != nullptr) {
    v1::GetClusterStatusResponse status;
    core_->state().Status(now_, &status);
    absl::StrAppend(&out, "; members:");
    for (const auto& m : status.members()) {
      ProcPtr p = ProcAt(m.status().address());
      absl::StrAppendFormat(&out, " %s/%u%s(shard %d; process %s)", m.status().address(),
                            m.status().incarnation(), m.alive() ? "" : " expired",
                            m.status().shard(),
                            p == nullptr ? "none"
                                         : absl::StrFormat("%u%s bound %d", p->incarnation,
                                                           p->alive ? "" : " dead", p->bound));
    }
  }
  return out + "]";
}

void Sim::CheckHealed(bool after_restore) {
  for (uint32_t s = 0; s < shards_ && failure_.empty(); ++s) {
    const v1::ShardReplicas& shard = committed_.shards(s);
    bool holder = false;  // a LIVE entry (of a LOST shard: a holder) alive with its memory
    for (const v1::Replica& r : shard.replicas()) {
      holder |= r.state() == v1::REPLICA_STATE_LIVE && Holder(r) != nullptr;
    }
    if (shard.state() == v1::SHARD_STATE_LOST && !after_restore && !holder) continue;
    int live = 0;
    for (const v1::Replica& r : shard.replicas()) live += r.state() == v1::REPLICA_STATE_LIVE;
    // "Servers permitting": a process holds one shard for life; R replicas need enough
    // processes that hold this shard or none.
    int want = static_cast<int>(replication_);
    if (shard.replicas_size() < want) {
      int spares = 0;
      for (const ProcPtr& p : slots_) {
        if (p == nullptr || !p->alive || (p->bound != -1 && p->bound != static_cast<int32_t>(s))) {
          continue;
        }
        bool placed = false;
        for (const v1::ShardReplicas& other : committed_.shards()) {
          for (const v1::Replica& r : other.replicas()) {
            placed |= r.address() == p->address && r.incarnation() == p->incarnation;
          }
        }
        spares += !placed;
      }
      want = std::min(want, shard.replicas_size() + spares);
    }
    if (!Readable(s) || live < want || shard.replicas_size() != live) {
      Fail(absl::StrFormat(
          "I8: %s healing, shard %u is %s with %d of %d replicas LIVE "
          "(want %u)%s %s",
          after_restore ? "after a restore and" : "12 s after", s,
          shard.state() == v1::SHARD_STATE_LOST ? "LOST" : "SERVING", live, shard.replicas_size(),
          want, Readable(s) ? "" : ", and its primary does not serve", Describe(s)));
    }
  }
}

}  // namespace tessera::control_plane_sim
