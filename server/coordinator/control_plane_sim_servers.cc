// The control-plane simulation: the servers' side, by the servers' rules (replica_rules.h).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "server/coordinator/control_plane_sim.h"

namespace tessera::control_plane_sim {

void Sim::HeartbeatTimer(const ProcPtr& p) {
  OnProc(p, [this, p] {
    if (!p->hb_in_flight) Heartbeat(p);
    At(kHeartbeatMs, [this, p] { HeartbeatTimer(p); });
  });
}

void Sim::Poke(const ProcPtr& p) {
  if (p->hb_soon) return;
  p->hb_soon = true;
  At(20, [this, p] {
    OnProc(p, [this, p] {
      p->hb_soon = false;
      if (!p->hb_in_flight) Heartbeat(p);
    });
  });
}

void Sim::Heartbeat(const ProcPtr& p) {
  auto r = std::make_shared<HeartbeatReq>();
  v1::ServerStatus* st = r->req.mutable_status();
  st->set_address(p->address);
  st->set_incarnation(p->incarnation);
  st->set_shard(p->bound);
  st->set_epoch(p->epoch);
  st->set_lsn(p->data.size());
  st->set_echo_life(p->echo_life);
  st->set_echo_seq(p->echo_seq);
  p->hb_in_flight = true;
  ToCoordinator(p, r, kHeartbeatTimeoutMs, [this, p, r](bool ok, absl::Status status) {
    p->hb_in_flight = false;
    if (!ok || !status.ok()) return;
    p->echo_life = r->resp.life();
    p->echo_seq = r->resp.seq();
    auto it = persisted_.find(r->resp.map().epoch());
    if (it == persisted_.end() || it->second != r->resp.map().SerializeAsString()) {
      Fail(absl::StrFormat("I5: %s received map epoch %u, which was not committed first",
                           p->address, r->resp.map().epoch()));
      return;
    }
    ApplyMap(p, r->resp.map());
    if (r->resp.confirm()) Heartbeat(p);  // R7
  });
}

void Sim::ApplyMap(const ProcPtr& p, const v1::ClusterMap& m) {
  if (m.epoch() < p->epoch) return;  // R2
  Placement where = Locate(m, p->address, p->incarnation);
  if (where.shard >= 0) {
    if (p->bound == -1) {
      p->bound = where.shard;
    } else if (p->bound != where.shard) {
      where = Placement();  // (Bind refuses another shard)
    }
  }
  p->epoch = m.epoch();
  if (!SameUpstream(where, p->placement)) {
    ++p->term;
    p->synced_term = 0;
    p->snapshot_floor = 0;
  }
  p->placement = where;
  const bool primary = where.role == Role::kPrimary || where.role == Role::kRestoring;
  if (!primary) {
    p->senders.clear();
    for (PendingAck& a : p->pending) a.reply(false);
    p->pending.clear();
    return;
  }
  std::map<std::string, BackupEntry> in_map;
  for (const BackupEntry& b : BackupsOf(m, where.shard)) in_map[b.id.Key()] = b;
  for (auto it = p->senders.begin(); it != p->senders.end();) {
    it = in_map.contains(it->first) ? std::next(it) : p->senders.erase(it);
  }
  for (const auto& [key, b] : in_map) {
    auto [it, inserted] = p->senders.try_emplace(key);
    if (inserted) {
      it->second.id = b.id;
      it->second.gen = p->next_gen++;
    }
    it->second.live_in_map = b.live;
  }
  Recompute(p);
  Pump(p);
}

void Sim::Append(const ProcPtr& p, uint64_t entry) {
  p->data.push_back(entry);
  p->has.insert(entry);
  if (p->bound >= 0 && acked_[p->bound].contains(entry)) ++p->held_acked;
}

void Sim::ReplaceData(const ProcPtr& p, std::vector<uint64_t> data) {
  p->data = std::move(data);
  p->has = absl::flat_hash_set<uint64_t>(p->data.begin(), p->data.end());
  p->held_acked = 0;
  if (p->bound < 0) return;
  for (uint64_t e : p->data) p->held_acked += acked_[p->bound].contains(e);
}

void Sim::Ack(uint32_t s, uint64_t entry) {
  if (!acked_[s].insert(entry).second) return;
  for (const ProcPtr& q : slots_) {
    if (q != nullptr && q->alive && q->bound == static_cast<int32_t>(s) && q->has.contains(entry)) {
      ++q->held_acked;
    }
  }
}

void Sim::Recompute(const ProcPtr& p) {  // R5
  uint64_t reached = p->data.size();
  for (const auto& [key, s] : p->senders) {
    if (Counted(s.live_in_map, s.found)) reached = std::min(reached, s.acked);
  }
  std::vector<PendingAck> keep;
  for (PendingAck& a : p->pending) {
    if (a.lsn > reached) {
      keep.push_back(std::move(a));
      continue;
    }
    p->max_completed = std::max(p->max_completed, a.lsn);
    Ack(static_cast<uint32_t>(p->placement.shard), a.entry);
    a.reply(true);
  }
  p->pending = std::move(keep);
}

void Sim::MaybeCaughtUp(const ProcPtr& p, Sender& s) {  // R6
  if (Counted(s.live_in_map, s.found)) return;
  if (!IsCaughtUp(!s.needs_snapshot, s.acked, p->max_completed)) return;
  s.found = true;
  s.report_pending = true;
  Note(absl::StrFormat("%s finds %s caught up at LSN %u (acknowledged up to %u)", p->address,
                       s.id.Key(), s.acked, p->max_completed));
}

void Sim::Pump(const ProcPtr& p) {
  for (auto& [key, s] : p->senders) {
    if (!s.in_flight) {
      if (now_ < s.retry_at) {
        const int64_t wait = s.retry_at - now_;
        At(wait, [this, p] { OnProc(p, [this, p] { Pump(p); }); });
      } else if (s.needs_snapshot) {
        SendSnapshot(p, s);
      } else if (s.acked < p->data.size()) {
        SendBatch(p, s);
      }
    }
    if (s.report_pending && !s.report_in_flight) SendReport(p, s);
    if (s.failed_report_pending && !s.failed_report_in_flight) SendFailedReport(p, s);
  }
}

Sim::Sender* Sim::Live(const ProcPtr& p, const std::string& key, uint64_t gen) {
  auto it = p->senders.find(key);
  return it != p->senders.end() && it->second.gen == gen ? &it->second : nullptr;
}

std::optional<Sim::BatchReply> Sim::Check(const ProcPtr& b, uint64_t epoch, uint32_t shard,
                                          const std::string& sender, uint64_t incarnation) {
  switch (CheckSender(b->epoch, b->placement, epoch, shard, sender, incarnation)) {  // R4
    case SenderCheck::kBehind:
      Poke(b);
      return BatchReply{Answer::kBehind, 0};
    case SenderCheck::kNotPrimary:
      return BatchReply{Answer::kFenced, 0};
    case SenderCheck::kOk:
      break;
  }
  return std::nullopt;
}

Sim::Header Sim::Outgoing(const ProcPtr& p, Sender& s) {
  s.in_flight = true;
  return {s.id.Key(), s.gen,         p->epoch, static_cast<uint32_t>(p->placement.shard),
          p->address, p->incarnation};
}

void Sim::SendBatch(const ProcPtr& p, Sender& s) {
  const uint64_t first = s.acked + 1;
  const uint64_t last = std::min<uint64_t>(p->data.size(), s.acked + 64);
  std::vector<uint64_t> entries(p->data.begin() + (first - 1), p->data.begin() + last);
  const Header h = Outgoing(p, s);
  ProcPtr b = ProcAt(s.id.address);
  Call<BatchReply>(
      p, b, kCallTimeoutMs,
      [this, b, h, first, entries]() -> std::optional<BatchReply> {
        if (auto refused = Check(b, h.epoch, h.shard, h.from, h.from_inc)) return refused;
        if (b->synced_term != b->term) return BatchReply{Answer::kNeedsSnapshot, 0};
        if (b->failed) return BatchReply{Answer::kReplicaFailed, 0};  // applies nothing
        for (size_t i = 0; i < entries.size(); ++i) {
          const uint64_t lsn = first + i;
          if (lsn <= b->data.size()) {
            if (b->data[lsn - 1] != entries[i]) {
              Fail(
                  absl::StrFormat("log mismatch: %s holds entry %u at LSN %u, its primary %s "
                                  "sent %u",
                                  b->address, b->data[lsn - 1], lsn, h.from, entries[i]));
            }
            continue;
          }
          if (lsn != b->data.size() + 1) return BatchReply{Answer::kGap, b->data.size()};
          Append(b, entries[i]);
        }
        return BatchReply{Answer::kOk, b->data.size()};
      },
      [this, p, h](std::optional<BatchReply> r) {
        Sender* s = Live(p, h.key, h.gen);
        if (s == nullptr) return;
        s->in_flight = false;
        if (r.has_value() && r->answer == Answer::kOk) {
          s->acked = std::max(s->acked, r->lsn);
          MaybeCaughtUp(p, *s);
          Recompute(p);
        } else {
          if (r.has_value() && r->answer == Answer::kNeedsSnapshot) s->needs_snapshot = true;
          if (r.has_value() && r->answer == Answer::kReplicaFailed && !s->needs_snapshot) {
            s->needs_snapshot = true;  // still counted while the coordinator is asked
            s->failed_report_pending = true;
            if (options_.uncount_failed_backup_for_testing) {
              s->live_in_map = s->found = false;
              Recompute(p);
            }
          }
          s->retry_at = now_ + kRetryMs;
        }
        Pump(p);
      });
}

void Sim::SendSnapshot(const ProcPtr& p, Sender& s) {
  const Header h = Outgoing(p, s);
  std::vector<uint64_t> copy = p->data;
  const uint64_t cut = copy.size();
  const uint64_t id = ++p->snapshots_sent;
  ProcPtr b = ProcAt(s.id.address);
  Call<BatchReply>(
      p, b, kCallTimeoutMs,
      [this, b, h, copy, id]() -> std::optional<BatchReply> {
        if (auto refused = Check(b, h.epoch, h.shard, h.from, h.from_inc)) return refused;
        if (id <= b->snapshot_floor) return BatchReply{Answer::kFenced, 0};  // a stale one
        b->snapshot_floor = id;
        ReplaceData(b, copy);
        b->synced_term = b->term;
        if (b->failed)
          Note(absl::StrFormat("%s installs a snapshot: no longer FAILED", b->address));
        b->failed = false;
        return BatchReply{Answer::kOk, b->data.size()};
      },
      [this, p, h, cut](std::optional<BatchReply> r) {
        Sender* s = Live(p, h.key, h.gen);
        if (s == nullptr) return;
        s->in_flight = false;
        if (r.has_value() && r->answer == Answer::kOk) {
          s->needs_snapshot = false;
          s->acked = cut;
          MaybeCaughtUp(p, *s);
          Recompute(p);
        } else {
          s->retry_at = now_ + kRetryMs;
        }
        Pump(p);
      });
}

// What a primary's report about one of its backup entries names (T7, T10), as the
// Replicator fills it.
template <typename Report>
void Sim::FillReport(const Proc& p, const Sender& s, Report* r) {
  r->set_epoch(p.epoch);
  r->set_shard(static_cast<uint32_t>(p.placement.shard));
  r->set_primary(p.address);
  r->set_primary_incarnation(p.incarnation);
  r->set_replica(s.id.address);
  r->set_replica_incarnation(s.id.incarnation);
  r->set_join_epoch(s.id.join_epoch);
}

void Sim::SendReport(const ProcPtr& p, Sender& s) {
  s.report_in_flight = true;
  auto r = std::make_shared<CaughtUpReq>();
  FillReport(*p, s, &r->req);
  const std::string key = s.id.Key();
  const uint64_t gen = s.gen;
  ToCoordinator(p, r, kCallTimeoutMs, [this, p, key, gen](bool ok, absl::Status st) {
    Sender* s = Live(p, key, gen);
    if (s == nullptr) return;
    s->report_in_flight = false;
    if (ok && st.ok()) {
      s->report_pending = false;
      Poke(p);
      return;
    }
    At(kRetryMs * 3, [this, p] { OnProc(p, [this, p] { Pump(p); }); });
  });
}

void Sim::SendFailedReport(const ProcPtr& p, Sender& s) {
  s.failed_report_in_flight = true;
  auto r = std::make_shared<FailedReq>();
  FillReport(*p, s, &r->req);
  r->req.set_reason("simulated");
  const std::string key = s.id.Key();
  const uint64_t gen = s.gen;
  ToCoordinator(p, r, kCallTimeoutMs, [this, p, key, gen](bool ok, absl::Status st) {
    Sender* s = Live(p, key, gen);
    if (s == nullptr) return;
    s->failed_report_in_flight = false;
    s->failed_report_pending = false;  // one attempt, as the Replicator makes
    if (ok && st.ok()) Poke(p);
  });
}

}  // namespace tessera::control_plane_sim
