// The control-plane simulation: time, network, processes, the coordinator, clients, checkpoints,
// the operator and faults (control_plane_sim.h).
#include "server/coordinator/control_plane_sim.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"

namespace tessera::control_plane_sim {

Sim::Sim(uint64_t seed, Family family, const CoordinatorOptions& broken)
    : seed_(seed), family_(family), rng_(seed * 0x9e3779b97f4a7c15ULL + 1) {
  shards_ = 1 + Rand(2);
  replication_ = family == Family::kTimed ? 2 + Rand(2) : 1 + Rand(3);
  max_delay_ = family == Family::kTimed ? 1 + Rand(5) : 1 + Rand(30);
  loss_ = family == Family::kTimed ? 0 : Rand(4) * 0.01;
  late_ = family == Family::kTimed ? 0 : Rand(3) * 0.005;
  options_ = broken;
  options_.num_shards = shards_;
  options_.replication = replication_;
  options_.num_vshards = 64;
  options_.lease = absl::Milliseconds(kLeaseMs);
  acked_.resize(shards_);
  checkpoints_.resize(shards_);
  clients_.resize(shards_);
}

std::string Sim::Run() {
  Note(absl::StrFormat("seed %u (%s): %u shards x R=%u, delay <= %d ms, loss %.2f, late %.3f",
                       seed_, FamilyName(family_), shards_, replication_, max_delay_, loss_,
                       late_));
  StartCoordinator();
  const uint32_t servers = shards_ * replication_ + Rand(2);
  for (uint32_t i = 0; i < servers; ++i) NewProc(NewSlot());
  for (uint32_t s = 0; s < shards_; ++s) At(100 + Rand(50), [this, s] { ClientTick(s); });
  At(kTickMs, [this] { CoordTick(); });
  At(1000, [this] { CheckpointTick(); });
  if (family_ == Family::kChaos) {
    fault_until_ = 9000;
    At(2000 + Rand(1000), [this] { ChaosFault(); });
    RunUntil(fault_until_);
  } else {
    RunUntil(4000);
    TimedFaults();
    RunUntil(12000);
  }
  if (!failure_.empty()) return failure_;
  Heal();
  RunUntil(now_ + 12000);
  if (failure_.empty()) CheckHealed(/*after_restore=*/false);
  if (!failure_.empty()) return failure_;
  RestoreLostShards();
  RunUntil(now_ + 8000);
  const std::vector<uint64_t> acks_before = acks_per_shard_;
  RunUntil(now_ + 3000);
  if (failure_.empty()) CheckHealed(/*after_restore=*/true);
  for (uint32_t s = 0; s < shards_ && failure_.empty(); ++s) {
    if (acks_per_shard_[s] <= acks_before[s]) {
      Fail(absl::StrFormat("I8: shard %u acknowledged no push in the last 3 s after healing", s));
    }
  }
  return failure_;
}

void Sim::At(int64_t delay, std::function<void()> fn) {
  events_.push_back({now_ + delay, next_seq_++, std::move(fn)});
  std::push_heap(events_.begin(), events_.end(), Later());
}

void Sim::RunUntil(int64_t until) {
  while (!events_.empty() && failure_.empty()) {
    std::pop_heap(events_.begin(), events_.end(), Later());
    if (events_.back().at > until) {
      std::push_heap(events_.begin(), events_.end(), Later());
      break;
    }
    Event e = std::move(events_.back());
    events_.pop_back();
    now_ = e.at;
    e.fn();
    ++steps_;
    if (failure_.empty()) CheckSafety();
    if (failure_.empty() && family_ == Family::kTimed) TrackOutage();
  }
  now_ = std::max(now_, until);
}

void Sim::Fail(const std::string& what) {
  if (failure_.empty()) failure_ = absl::StrFormat("t=%d ms: %s", now_, what);
}

void Sim::Net(std::function<void()> deliver) {
  if (Chance(loss_)) return;
  const int64_t delay = Chance(late_) ? RandIn(100, 2000) : RandIn(1, max_delay_);
  At(delay, std::move(deliver));
}

int Sim::NewSlot() {
  slots_.push_back(nullptr);
  return static_cast<int>(slots_.size()) - 1;
}

Sim::ProcPtr Sim::NewProc(int slot) {
  auto p = std::make_shared<Proc>();
  p->slot = slot;
  p->address = absl::StrCat("s", slot);
  p->incarnation = ++incarnations_;  // a restart has a larger one
  slots_[slot] = p;
  Note(absl::StrFormat("%s starts (incarnation %u)", p->address, p->incarnation));
  At(RandIn(1, kHeartbeatMs), [this, p] { HeartbeatTimer(p); });
  return p;
}

Sim::ProcPtr Sim::ProcAt(const std::string& address) {
  const int slot = std::atoi(address.c_str() + 1);
  return slot >= 0 && slot < static_cast<int>(slots_.size()) ? slots_[slot] : nullptr;
}

void Sim::OnProc(const ProcPtr& p, std::function<void()> fn) {
  if (p == nullptr || !p->alive) return;
  if (now_ < p->stalled_until) {
    At(p->stalled_until - now_,
       [this, p, fn = std::move(fn)]() mutable { OnProc(p, std::move(fn)); });
    return;
  }
  fn();
}

void Sim::Crash(const ProcPtr& p) {
  Note(absl::StrFormat("%s (incarnation %u) crashes", p->address, p->incarnation));
  p->alive = false;
  p->data.clear();
  p->has.clear();
  p->senders.clear();
  for (PendingAck& a : p->pending) a.reply(false);
  p->pending.clear();
}

void Sim::Stall(const ProcPtr& p, int64_t ms) {
  Note(absl::StrFormat("%s stalls for %d ms", p->address, ms));
  p->stalled_until = std::max(p->stalled_until, now_ + ms);
}

void Sim::StartCoordinator() {
  core_ = std::make_unique<CoordinatorCore>(options_, &store_, ++lives_);
  const absl::Status st = core_->Start(now_);
  if (!st.ok()) Fail(absl::StrCat("the coordinator cannot start: ", st.ToString()));
  coord_up_ = true;
  committed_ = core_->state().map();
  RecordPersisted();
}

void Sim::ToCoordinator(const ProcPtr& caller, std::shared_ptr<CoordReq> r, int64_t timeout,
                        std::function<void(bool, absl::Status)> done) {
  auto settled = std::make_shared<bool>(false);
  auto finish = [this, caller, settled, done](bool ok, absl::Status st) {
    if (*settled) return;
    *settled = true;
    if (caller == nullptr) {
      done(ok, st);
    } else {
      OnProc(caller, [done, ok, st] { done(ok, st); });
    }
  };
  At(timeout, [finish] { finish(false, absl::DeadlineExceededError("timeout")); });
  Net([this, r, finish] {
    if (!coord_up_) {
      Net([finish] { finish(false, absl::UnavailableError("connection refused")); });
      return;
    }
    r->reply = [this, finish](absl::Status st) { Net([finish, st] { finish(true, st); }); };
    inbox_.push_back(std::move(r));
  });
}

void Sim::CoordTick() {
  At(kTickMs, [this] { CoordTick(); });
  if (!coord_up_ || now_ < coord_stalled_until_) return;
  if (coord_resumed_) {  // the adversarial order after a stall: the lease tick first
    coord_resumed_ = false;
    Commit({});
  }
  std::vector<std::shared_ptr<CoordReq>> batch;
  batch.swap(inbox_);
  std::vector<CoordinatorCall> calls;
  calls.reserve(batch.size());
  for (auto& r : batch) calls.push_back(r->MakeCall());
  Commit(absl::MakeSpan(calls));
  for (size_t i = 0; i < batch.size(); ++i) batch[i]->reply(calls[i].status);
}

void Sim::Commit(absl::Span<CoordinatorCall> calls) {
  const v1::ClusterMap before = committed_;
  const uint64_t writes = store_.writes();
  core_->Process(calls, now_);
  if (store_.writes() != writes) RecordPersisted();
  for (uint32_t s : core_->state().PromotingShards()) {
    if (s == focus_ && !promoting_seen_.has_value()) promoting_seen_ = now_;
  }
  CheckTransition(before, core_->state().map());
  committed_ = core_->state().map();
}

void Sim::RecordPersisted() {
  if (!store_.saved().has_value()) return;
  const v1::ClusterMap& m = store_.saved()->map();
  std::string bytes = m.SerializeAsString();
  auto [it, inserted] = persisted_.emplace(m.epoch(), bytes);
  if (!inserted && it->second != bytes) {
    Fail(absl::StrFormat("I5: two different maps were written for epoch %u", m.epoch()));
  }
}

void Sim::CoordinatorCrash() {
  Note("the coordinator crashes");
  coord_up_ = false;
  inbox_.clear();
  core_.reset();
  At(RandIn(50, 3000), [this] {
    Note("the coordinator restarts");
    StartCoordinator();
  });
}

void Sim::ClientTick(uint32_t s) {
  At(family_ == Family::kTimed ? 30 : 60, [this, s] { ClientTick(s); });
  Client& c = clients_[s];
  if (coord_up_ && now_ >= coord_stalled_until_ && (c.map == nullptr || Chance(0.2))) {
    c.map = std::make_shared<v1::ClusterMap>(committed_);
  }
  if (c.entry != 0 || c.map == nullptr) return;
  c.entry = ++entries_;
  c.attempts = 0;
  Push(s);
}

void Sim::Push(uint32_t s) {
  Client& c = clients_[s];
  const v1::ShardReplicas& shard = c.map->shards(s);
  if (shard.lost() || shard.replicas().empty() || ++c.attempts > 8) {
    c.entry = 0;  // given up: in doubt
    return;
  }
  const uint64_t entry = c.entry;
  ProcPtr p = ProcAt(shard.replicas(0).address());
  Call<bool>(
      nullptr, p, kCallTimeoutMs * 2,
      [this, p, s, entry]() -> std::optional<bool> {
        if (p->placement.role != Role::kPrimary || p->placement.shard != static_cast<int32_t>(s)) {
          return false;
        }
        if (!p->has.contains(entry)) Append(p, entry);  // (a duplicate: acknowledged later)
        p->pending.push_back({p->data.size(), entry, [this, s, entry](bool ok) {
                                Net([this, s, entry, ok] { PushDone(s, entry, ok); });
                              }});
        Recompute(p);
        Pump(p);
        return std::nullopt;  // answered by the pending acknowledgement
      },
      [this, s, entry](std::optional<bool>) { PushDone(s, entry, false); });
}

void Sim::PushDone(uint32_t s, uint64_t entry, bool acked) {
  Client& c = clients_[s];
  if (c.entry != entry) return;  // (settled by another attempt)
  if (acked) {
    c.entry = 0;
    ++acks_per_shard_[s];
    return;
  }
  if (coord_up_) c.map = std::make_shared<v1::ClusterMap>(committed_);
  At(RandIn(10, 60), [this, s, entry] {
    if (clients_[s].entry == entry) Push(s);
  });
}

void Sim::CheckpointTick() {
  At(1000, [this] { CheckpointTick(); });
  for (uint32_t s = 0; s < shards_; ++s) {
    const v1::ShardReplicas& shard = committed_.shards(s);
    if (shard.state() != v1::SHARD_STATE_SERVING || shard.replicas().empty()) continue;
    ProcPtr p = ProcAt(shard.replicas(0).address());
    if (p != nullptr && p->alive && p->incarnation == shard.replicas(0).incarnation() &&
        p->placement.role == Role::kPrimary && p->held_acked == acked_[s].size()) {
      checkpoints_[s] = p->data;
    }
  }
}

void Sim::RestoreLostShards() {
  for (uint32_t s = 0; s < shards_; ++s) {
    if (committed_.shards(s).state() != v1::SHARD_STATE_LOST) continue;
    Note(absl::StrFormat("operator: restore shard %u", s));
    RecoverShard(s, 0);
  }
}

void Sim::RecoverShard(uint32_t s, int attempt) {
  if (attempt > 20) {
    Fail(absl::StrFormat("I8: shard %u could not be recovered by the operator", s));
    return;
  }
  auto r = std::make_shared<RecoverReq>();
  r->req.set_shard(s);
  ToCoordinator(nullptr, r, 1000, [this, s, r, attempt](bool ok, absl::Status st) {
    if (!ok || !st.ok()) {
      At(200, [this, s, attempt] { RecoverShard(s, attempt + 1); });
      return;
    }
    LoadCheckpoint(s, r->resp.server(), r->resp.incarnation(), 0);
  });
}

void Sim::LoadCheckpoint(uint32_t s, const std::string& server, uint64_t incarnation, int attempt) {
  ProcPtr p = ProcAt(server);
  if (p == nullptr || !p->alive || p->incarnation != incarnation || attempt > 60) {
    RecoverShard(s, attempt);
    return;
  }
  if (p->placement.role != Role::kRestoring) {
    At(50, [this, s, server, incarnation, attempt] {
      LoadCheckpoint(s, server, incarnation, attempt + 1);
    });
    return;
  }
  // Updates after the checkpoint are lost (beyond R-1 failures): the checkpoint is the truth.
  acked_[s] = absl::flat_hash_set<uint64_t>(checkpoints_[s].begin(), checkpoints_[s].end());
  for (const ProcPtr& q : slots_) {
    if (q != nullptr && q->alive && q->bound == static_cast<int32_t>(s)) ReplaceData(q, q->data);
  }
  ReplaceData(p, checkpoints_[s]);
  auto r = std::make_shared<FinishReq>();
  r->req.set_shard(s);
  r->req.set_server(server);
  r->req.set_incarnation(incarnation);
  ToCoordinator(nullptr, r, 1000,
                [this, s, server, incarnation, attempt](bool ok, absl::Status st) {
                  if (!ok || !st.ok()) {
                    At(200, [this, s, server, incarnation, attempt] {
                      LoadCheckpoint(s, server, incarnation, attempt + 1);
                    });
                  }
                });
}

std::vector<Sim::ProcPtr> Sim::AliveProcs() {
  std::vector<ProcPtr> out;
  for (const ProcPtr& p : slots_) {
    if (p != nullptr && p->alive) out.push_back(p);
  }
  return out;
}

void Sim::CrashAndMaybeRestart(const ProcPtr& p, int64_t restart_after, bool same_address) {
  Crash(p);
  if (restart_after < 0) return;
  const int slot = p->slot;
  At(restart_after, [this, slot, same_address] {
    if (same_address) {
      if (slots_[slot] == nullptr || !slots_[slot]->alive) NewProc(slot);
    } else {
      NewProc(NewSlot());
    }
  });
}

void Sim::ChaosFault() {
  if (now_ >= fault_until_) return;
  At(RandIn(200, 1200), [this] { ChaosFault(); });
  std::vector<ProcPtr> alive = AliveProcs();
  const uint64_t kind = Rand(100);
  if (kind < 45 && !alive.empty()) {
    ProcPtr p = alive[Rand(alive.size())];
    const uint64_t how = Rand(100);
    if (how < 55) {
      CrashAndMaybeRestart(p, RandIn(0, 2500), /*same_address=*/true);  // systemd Restart=
    } else if (how < 80) {
      CrashAndMaybeRestart(p, RandIn(0, 2500), /*same_address=*/false);
    } else {
      CrashAndMaybeRestart(p, -1, true);  // stays down until healed
    }
  } else if (kind < 62 && !alive.empty()) {
    Stall(alive[Rand(alive.size())], RandIn(50, 3000));
  } else if (kind < 70 && !alive.empty()) {
    // A replay refused (a backup started with other limits): FAILED until a snapshot.
    ProcPtr p = alive[Rand(alive.size())];
    Note(absl::StrFormat("%s turns FAILED", p->address));
    p->failed = true;
  } else if (kind < 80 && coord_up_) {
    CoordinatorCrash();
  } else if (kind < 90) {
    const int64_t ms = RandIn(50, 4500);
    Note(absl::StrFormat("the coordinator stalls for %d ms", ms));
    coord_stalled_until_ = std::max(coord_stalled_until_, now_ + ms);
    coord_resumed_ = true;
  } else {
    const int64_t ms = RandIn(50, 2000);
    Note(absl::StrFormat("the coordinator's disk fails for %d ms", ms));
    store_.set_fail(true);
    At(ms, [this] { store_.set_fail(false); });
  }
}

void Sim::TimedFaults() {
  focus_ = static_cast<uint32_t>(Rand(shards_));
  const v1::ShardReplicas& shard = committed_.shards(focus_);
  if (shard.replicas_size() != static_cast<int>(replication_)) {
    Fail(absl::StrFormat("setup: shard %u has %d replicas after 4 s, not %u", focus_,
                         shard.replicas_size(), replication_));
    return;
  }
  std::vector<std::string> victims;
  for (const auto& r : shard.replicas()) victims.push_back(r.address());
  const bool primary_first = Chance(0.8);
  if (!primary_first) std::swap(victims[0], victims[1]);
  std::shuffle(victims.begin() + 1, victims.end(), rng_);
  // R-1 victims most of the time; the second one often within a lease of the first (the
  // window in which its own lease has not ended when the primary's does).
  victims.resize(Chance(0.7) ? replication_ - 1 : 1 + Rand(replication_ - 1));
  for (size_t i = 0; i < victims.size(); ++i) {
    const int64_t offset =
        i == 0 ? 0 : (Chance(0.5) ? RandIn(0, kLeaseMs) : RandIn(0, 2 * kLeaseMs));
    const std::string address = victims[i];
    const bool stall = Chance(0.25);
    const int64_t stall_ms = RandIn(kLeaseMs / 2, 5 * kLeaseMs / 2);
    const int64_t restart = Chance(0.5) ? RandIn(0, 3000) : -1;
    At(offset, [this, address, stall, stall_ms, restart] {
      ProcPtr p = ProcAt(address);
      if (p == nullptr || !p->alive) return;
      failures_.push_back(now_);
      if (stall) {
        Stall(p, stall_ms);
      } else {
        CrashAndMaybeRestart(p, restart, /*same_address=*/true);
      }
    });
  }
}

void Sim::Heal() {
  Note("heal: every process resumes, crashed ones restart, the coordinator and its disk work");
  store_.set_fail(false);
  coord_stalled_until_ = std::min(coord_stalled_until_, now_);
  if (!coord_up_) StartCoordinator();
  for (size_t slot = 0; slot < slots_.size(); ++slot) {
    ProcPtr p = slots_[slot];
    if (p != nullptr && p->alive) {
      p->stalled_until = std::min(p->stalled_until, now_);
    } else {
      NewProc(static_cast<int>(slot));
    }
  }
  loss_ = 0;
  late_ = 0;
}

}  // namespace tessera::control_plane_sim
