// A deterministic simulation of the control plane (docs/replication.md, "The control-plane
// protocol"), in the style FoundationDB and TigerBeetle test with: the coordinator's real
// decision and commit code (CoordinatorCore over an in-memory store) and a model of the
// servers that uses the servers' real rules (server/replica_rules.h), driven by a seeded
// random schedule of crashes, restarts at the same or a new address, stalls of servers and of
// the coordinator, coordinator crashes, failing writes of its state, and lost, delayed and
// late messages. Every invariant of the protocol is checked after every step; a failing seed
// is printed with the schedule's log and can be replayed:
//
//   TESSERA_SIM_SEED=1234 TESSERA_SIM_FAMILY=chaos build/server/control_plane_sim_test
//
// TESSERA_SIM_CHAOS_SCHEDULES and TESSERA_SIM_TIMED_SCHEDULES change how many run (8000 and
// 2000); TESSERA_SIM_STOP=N makes the [mutation] cases list up to N seeds that catch them.
//
// Two families of schedules:
// - chaos: every kind of fault, at random; checks I1-I6 after every step, then heals
//   everything and checks I8 (every shard with a live holder serves with R LIVE replicas;
//   lost ones are restored by an operator and serve again; pushes are acknowledged).
// - timed: up to R-1 crashes or long stalls of one shard's replicas at random offsets
//   (within a lease of each other, with restarts at the same address), a healthy coordinator,
//   no loss: also checks I7 (the shard is readable again within a lease plus the promotion
//   time after its primary failed, except for failures that happened after the promotion
//   began).
#include <catch2/catch.hpp>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/process_setup.h"
#include "proto/cluster.pb.h"
#include "server/coordinator/coordinator_core.h"
#include "server/coordinator/memory_store_for_testing.h"
#include "server/replica_rules.h"

namespace tessera {
namespace {

enum class Family { kChaos, kTimed };

const char* FamilyName(Family f) { return f == Family::kChaos ? "chaos" : "timed"; }

// Timing of the simulated cluster (the defaults of the real one).
constexpr int64_t kLeaseMs = 1500;
constexpr int64_t kHeartbeatMs = 250;
constexpr int64_t kTickMs = 50;
constexpr int64_t kRetryMs = 40;         // a sender's pause after a failed call
constexpr int64_t kCallTimeoutMs = 400;  // replication and client calls
constexpr int64_t kHeartbeatTimeoutMs = 1000;

class Sim {
 public:
  Sim(uint64_t seed, Family family, const CoordinatorOptions& broken)
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

  // Empty when every invariant held; else what broke and when.
  std::string Run() {
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

  uint64_t steps() const { return steps_; }

 private:
  // ---- Time and randomness ----

  struct Event {
    int64_t at;
    uint64_t seq;
    std::function<void()> fn;
  };
  struct Later {
    bool operator()(const Event& a, const Event& b) const {
      return a.at != b.at ? a.at > b.at : a.seq > b.seq;
    }
  };

  uint64_t Rand(uint64_t n) { return n == 0 ? 0 : rng_() % n; }
  int64_t RandIn(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(Rand(hi - lo + 1)); }
  bool Chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  void At(int64_t delay, std::function<void()> fn) {
    events_.push_back({now_ + delay, next_seq_++, std::move(fn)});
    std::push_heap(events_.begin(), events_.end(), Later());
  }

  void RunUntil(int64_t until) {
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

  void Note(const std::string& what) { LogInfo("t=%d %s", now_, what); }
  void Fail(const std::string& what) {
    if (failure_.empty()) failure_ = absl::StrFormat("t=%d ms: %s", now_, what);
  }

  // A message: lost with probability loss_, else delivered after a random delay (sometimes
  // very late).
  void Net(std::function<void()> deliver) {
    if (Chance(loss_)) return;
    const int64_t delay = Chance(late_) ? RandIn(100, 2000) : RandIn(1, max_delay_);
    At(delay, std::move(deliver));
  }

  // ---- Processes ----

  struct Sender {
    ReplicaId id;
    uint64_t gen = 0;
    bool live_in_map = false;
    bool found = false;  // R6: found caught up by this primary
    bool needs_snapshot = true;
    bool in_flight = false;
    bool report_pending = false;
    bool report_in_flight = false;
    uint64_t acked = 0;
    int64_t retry_at = 0;
  };
  struct PendingAck {
    uint64_t lsn;
    uint64_t entry;
    std::function<void(bool)> reply;
  };
  struct Proc {
    int slot = 0;
    std::string address;
    uint64_t incarnation = 0;
    bool alive = true;
    int64_t stalled_until = 0;
    uint64_t epoch = 0;
    Placement placement;
    uint64_t term = 1, synced_term = 0;
    uint64_t snapshot_floor = 0;  // the newest snapshot started in this term (R4)
    uint64_t snapshots_sent = 0;
    int32_t bound = -1;
    std::vector<uint64_t> data;  // entry ids in LSN order
    absl::flat_hash_set<uint64_t> has;
    size_t held_acked = 0;  // |acked(bound) ∩ data|
    uint64_t echo_life = 0, echo_seq = 0;
    std::map<std::string, Sender> senders;
    uint64_t next_gen = 1;
    std::vector<PendingAck> pending;
    uint64_t max_completed = 0;
    bool hb_in_flight = false;
    bool hb_soon = false;
  };
  using ProcPtr = std::shared_ptr<Proc>;

  int NewSlot() {
    slots_.push_back(nullptr);
    return static_cast<int>(slots_.size()) - 1;
  }

  ProcPtr NewProc(int slot) {
    auto p = std::make_shared<Proc>();
    p->slot = slot;
    p->address = absl::StrCat("s", slot);
    p->incarnation = ++incarnations_;  // a restart has a larger one
    slots_[slot] = p;
    Note(absl::StrFormat("%s starts (incarnation %u)", p->address, p->incarnation));
    At(RandIn(1, kHeartbeatMs), [this, p] { HeartbeatTimer(p); });
    return p;
  }

  ProcPtr ProcAt(const std::string& address) {
    const int slot = std::atoi(address.c_str() + 1);
    return slot >= 0 && slot < static_cast<int>(slots_.size()) ? slots_[slot] : nullptr;
  }

  // Runs fn on p now, once p resumes if it is stalled, never if it crashed.
  void OnProc(const ProcPtr& p, std::function<void()> fn) {
    if (p == nullptr || !p->alive) return;
    if (now_ < p->stalled_until) {
      At(p->stalled_until - now_,
         [this, p, fn = std::move(fn)]() mutable { OnProc(p, std::move(fn)); });
      return;
    }
    fn();
  }

  void Crash(const ProcPtr& p) {
    Note(absl::StrFormat("%s (incarnation %u) crashes", p->address, p->incarnation));
    p->alive = false;
    p->data.clear();
    p->has.clear();
    p->senders.clear();
    for (PendingAck& a : p->pending) a.reply(false);
    p->pending.clear();
  }

  void Stall(const ProcPtr& p, int64_t ms) {
    Note(absl::StrFormat("%s stalls for %d ms", p->address, ms));
    p->stalled_until = std::max(p->stalled_until, now_ + ms);
  }

  // A call from `caller` (null: a client) served by `callee` (served there, once it runs),
  // answered once: with the reply, or with nullopt after `timeout` when a message was lost,
  // the callee is dead, or stalled past the deadline.
  template <typename R>
  void Call(const ProcPtr& caller, const ProcPtr& callee, int64_t timeout,
            std::function<std::optional<R>()> serve, std::function<void(std::optional<R>)> done) {
    auto settled = std::make_shared<bool>(false);
    auto finish = [this, caller, settled, done](std::optional<R> r) {
      if (*settled) return;
      *settled = true;
      if (caller == nullptr) {
        done(r);
      } else {
        OnProc(caller, [done, r] { done(r); });
      }
    };
    At(timeout, [finish] { finish(std::nullopt); });
    Net([this, callee, serve, finish] {
      if (callee == nullptr || !callee->alive) {  // connection refused
        Net([finish] { finish(std::nullopt); });
        return;
      }
      OnProc(callee, [this, serve, finish] {
        std::optional<R> r = serve();
        if (r.has_value()) Net([finish, r] { finish(r); });
      });
    });
  }

  // ---- The coordinator ----

  struct CoordReq {
    virtual ~CoordReq() = default;
    virtual CoordinatorCall MakeCall() = 0;
    std::function<void(absl::Status)> reply;  // at the coordinator, after the batch
  };
  template <typename Req, typename Resp, typename CallT>
  struct Request : CoordReq {
    Req req;
    Resp resp;
    CoordinatorCall MakeCall() override { return {CallT{&req, &resp}, {}}; }
  };
  using HeartbeatReq = Request<v1::HeartbeatRequest, v1::HeartbeatResponse, HeartbeatCall>;
  using CaughtUpReq = Request<v1::ReportCaughtUpRequest, v1::ReportCaughtUpResponse, CaughtUpCall>;
  using RecoverReq = Request<v1::RecoverShardRequest, v1::RecoverShardResponse, RecoverShardCall>;
  using FinishReq =
      Request<v1::FinishRecoveryRequest, v1::FinishRecoveryResponse, FinishRecoveryCall>;

  void StartCoordinator() {
    core_ = std::make_unique<CoordinatorCore>(options_, &store_, ++lives_);
    const absl::Status st = core_->Start(now_);
    if (!st.ok()) Fail(absl::StrCat("the coordinator cannot start: ", st.ToString()));
    coord_up_ = true;
    committed_ = core_->state().map();
    RecordPersisted();
  }

  // Sends `r` from `caller` (null: the operator); `done(ok, status)` runs once on the caller.
  void ToCoordinator(const ProcPtr& caller, std::shared_ptr<CoordReq> r, int64_t timeout,
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

  void CoordTick() {
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

  void Commit(absl::Span<CoordinatorCall> calls) {
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

  void RecordPersisted() {
    if (!store_.saved().has_value()) return;
    const v1::ClusterMap& m = store_.saved()->map();
    std::string bytes = m.SerializeAsString();
    auto [it, inserted] = persisted_.emplace(m.epoch(), bytes);
    if (!inserted && it->second != bytes) {
      Fail(absl::StrFormat("I5: two different maps were written for epoch %u", m.epoch()));
    }
  }

  void CoordinatorCrash() {
    Note("the coordinator crashes");
    coord_up_ = false;
    inbox_.clear();
    core_.reset();
    At(RandIn(50, 3000), [this] {
      Note("the coordinator restarts");
      StartCoordinator();
    });
  }

  // ---- The servers' side (Replicator, by the rules in replica_rules.h) ----

  void HeartbeatTimer(const ProcPtr& p) {
    OnProc(p, [this, p] {
      if (!p->hb_in_flight) Heartbeat(p);
      At(kHeartbeatMs, [this, p] { HeartbeatTimer(p); });
    });
  }

  void Poke(const ProcPtr& p) {
    if (p->hb_soon) return;
    p->hb_soon = true;
    At(20, [this, p] {
      OnProc(p, [this, p] {
        p->hb_soon = false;
        if (!p->hb_in_flight) Heartbeat(p);
      });
    });
  }

  void Heartbeat(const ProcPtr& p) {
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

  void ApplyMap(const ProcPtr& p, const v1::ClusterMap& m) {
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

  void Append(const ProcPtr& p, uint64_t entry) {
    p->data.push_back(entry);
    p->has.insert(entry);
    if (p->bound >= 0 && acked_[p->bound].contains(entry)) ++p->held_acked;
  }

  void ReplaceData(const ProcPtr& p, std::vector<uint64_t> data) {
    p->data = std::move(data);
    p->has = absl::flat_hash_set<uint64_t>(p->data.begin(), p->data.end());
    p->held_acked = 0;
    if (p->bound < 0) return;
    for (uint64_t e : p->data) p->held_acked += acked_[p->bound].contains(e);
  }

  // The primary decided to acknowledge `entry` of shard s.
  void Ack(uint32_t s, uint64_t entry) {
    if (!acked_[s].insert(entry).second) return;
    for (const ProcPtr& q : slots_) {
      if (q != nullptr && q->alive && q->bound == static_cast<int32_t>(s) &&
          q->has.contains(entry)) {
        ++q->held_acked;
      }
    }
  }

  void Recompute(const ProcPtr& p) {  // R5
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

  void MaybeCaughtUp(const ProcPtr& p, Sender& s) {  // R6
    if (Counted(s.live_in_map, s.found)) return;
    if (!IsCaughtUp(!s.needs_snapshot, s.acked, p->max_completed)) return;
    s.found = true;
    s.report_pending = true;
    Note(absl::StrFormat("%s finds %s caught up at LSN %u (acknowledged up to %u)", p->address,
                         s.id.Key(), s.acked, p->max_completed));
  }

  void Pump(const ProcPtr& p) {
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
    }
  }

  // A sender's reply arrived: the sender if it still exists (same entry, same generation).
  Sender* Live(const ProcPtr& p, const std::string& key, uint64_t gen) {
    auto it = p->senders.find(key);
    return it != p->senders.end() && it->second.gen == gen ? &it->second : nullptr;
  }

  enum class Answer { kOk, kBehind, kFenced, kNeedsSnapshot, kGap };
  struct BatchReply {
    Answer answer;
    uint64_t lsn;
  };

  std::optional<BatchReply> Check(const ProcPtr& b, uint64_t epoch, uint32_t shard,
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

  // What a call from primary p's sender s carries (and marks it in flight).
  struct Header {
    std::string key;
    uint64_t gen, epoch;
    uint32_t shard;
    std::string from;
    uint64_t from_inc;
  };
  Header Outgoing(const ProcPtr& p, Sender& s) {
    s.in_flight = true;
    return {s.id.Key(), s.gen,         p->epoch, static_cast<uint32_t>(p->placement.shard),
            p->address, p->incarnation};
  }

  void SendBatch(const ProcPtr& p, Sender& s) {
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
            s->retry_at = now_ + kRetryMs;
          }
          Pump(p);
        });
  }

  void SendSnapshot(const ProcPtr& p, Sender& s) {
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

  void SendReport(const ProcPtr& p, Sender& s) {
    s.report_in_flight = true;
    auto r = std::make_shared<CaughtUpReq>();
    r->req.set_epoch(p->epoch);
    r->req.set_shard(static_cast<uint32_t>(p->placement.shard));
    r->req.set_primary(p->address);
    r->req.set_primary_incarnation(p->incarnation);
    r->req.set_replica(s.id.address);
    r->req.set_replica_incarnation(s.id.incarnation);
    r->req.set_join_epoch(s.id.join_epoch);
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

  // ---- Clients: one synchronous writer per shard, pushes retried with the same id ----

  struct Client {
    std::shared_ptr<const v1::ClusterMap> map;
    uint64_t entry = 0;  // in flight, 0: none
    int attempts = 0;
  };

  void ClientTick(uint32_t s) {
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

  void Push(uint32_t s) {
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
          if (p->placement.role != Role::kPrimary ||
              p->placement.shard != static_cast<int32_t>(s)) {
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

  // The outcome of one attempt of the push of `entry` reached its client.
  void PushDone(uint32_t s, uint64_t entry, bool acked) {
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

  // ---- Checkpoints and the operator ----

  void CheckpointTick() {
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

  // An operator restores every LOST shard from its last checkpoint (T8, T8').
  void RestoreLostShards() {
    for (uint32_t s = 0; s < shards_; ++s) {
      if (committed_.shards(s).state() != v1::SHARD_STATE_LOST) continue;
      Note(absl::StrFormat("operator: restore shard %u", s));
      RecoverShard(s, 0);
    }
  }

  void RecoverShard(uint32_t s, int attempt) {
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

  // Waits until the target acts as RESTORING, loads the checkpoint, then finishes.
  void LoadCheckpoint(uint32_t s, const std::string& server, uint64_t incarnation, int attempt) {
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

  // ---- Faults ----

  std::vector<ProcPtr> AliveProcs() {
    std::vector<ProcPtr> out;
    for (const ProcPtr& p : slots_) {
      if (p != nullptr && p->alive) out.push_back(p);
    }
    return out;
  }

  void CrashAndMaybeRestart(const ProcPtr& p, int64_t restart_after, bool same_address) {
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

  void ChaosFault() {
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
    } else if (kind < 70 && !alive.empty()) {
      Stall(alive[Rand(alive.size())], RandIn(50, 3000));
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

  // Up to R-1 failures of one shard's replicas, the first one its primary most of the time.
  void TimedFaults() {
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

  void Heal() {
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

  // ---- Invariants ----

  // The process named by a replica entry, if it is alive with its memory.
  ProcPtr Holder(const v1::Replica& r) {
    ProcPtr p = ProcAt(r.address());
    return p != nullptr && p->alive && p->incarnation == r.incarnation() ? p : nullptr;
  }

  void CheckSafety() {
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

  // I2, I3, I6: how a shard's primary may change from one committed map to the next.
  void CheckTransition(const v1::ClusterMap& before, const v1::ClusterMap& after) {
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
                            s, a.state() == v1::SHARD_STATE_LOST ? "LOST" : "SERVING",
                            before.epoch(), np.address(), np.incarnation()));
      }
    }
  }

  bool Readable(uint32_t s) {
    const v1::ShardReplicas& shard = committed_.shards(s);
    if (shard.state() != v1::SHARD_STATE_SERVING || shard.replicas().empty()) return false;
    ProcPtr p = Holder(shard.replicas(0));
    return p != nullptr && now_ >= p->stalled_until && p->placement.role == Role::kPrimary &&
           p->placement.shard == static_cast<int32_t>(s);
  }

  // I7 (timed schedules): a read outage of the focus shard lasts at most a lease plus the
  // promotion time, plus as much again for each failure that happened after the promotion
  // could have begun (a newly promoted primary failing too).
  void TrackOutage() {
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

  std::string Describe(uint32_t s) {
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

  void CheckHealed(bool after_restore) {
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
          if (p == nullptr || !p->alive ||
              (p->bound != -1 && p->bound != static_cast<int32_t>(s))) {
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

  // ---- State ----

  const uint64_t seed_;
  const Family family_;
  std::mt19937_64 rng_;
  uint32_t shards_ = 1, replication_ = 1;
  int64_t max_delay_ = 1;
  double loss_ = 0, late_ = 0;
  CoordinatorOptions options_;

  std::vector<Event> events_;
  uint64_t next_seq_ = 0;
  int64_t now_ = 0;
  uint64_t steps_ = 0;
  std::string failure_;
  int64_t fault_until_ = 0;

  MemoryStoreForTesting store_;
  std::unique_ptr<CoordinatorCore> core_;
  uint64_t lives_ = 0;
  bool coord_up_ = false;
  int64_t coord_stalled_until_ = 0;
  bool coord_resumed_ = false;
  std::vector<std::shared_ptr<CoordReq>> inbox_;
  v1::ClusterMap committed_;
  std::map<uint64_t, std::string> persisted_;  // epoch -> the map written for it

  std::vector<ProcPtr> slots_;  // the process at each address (alive or not)
  uint64_t incarnations_ = 0;
  uint64_t entries_ = 0;
  std::vector<absl::flat_hash_set<uint64_t>> acked_;  // per shard
  std::vector<std::vector<uint64_t>> checkpoints_;
  std::vector<Client> clients_;
  std::vector<uint64_t> acks_per_shard_ = std::vector<uint64_t>(2, 0);

  uint32_t focus_ = 0;
  std::vector<int64_t> failures_;
  std::optional<int64_t> outage_start_;
  std::optional<int64_t> promoting_seen_;  // the focus shard promotes since (first seen)
};

struct Outcome {
  uint64_t schedules = 0;
  uint64_t steps = 0;
  std::vector<std::pair<uint64_t, std::string>> failures;  // seed, what
};

// Runs seeds [first, first + count) of `family` on two threads.
Outcome RunSchedules(Family family, uint64_t first, uint64_t count,
                     const CoordinatorOptions& broken, size_t stop_after_failures) {
  SetUpProcess();  // (the daemons' allocator settings: half the time otherwise goes to the kernel)
  Outcome out;
  absl::Mutex mu;
  std::atomic<uint64_t> next{first};
  auto work = [&] {
    SetThreadLogSink(nullptr, /*discard=*/true);
    while (true) {
      const uint64_t seed = next.fetch_add(1);
      if (seed >= first + count) break;
      {
        absl::MutexLock lock(&mu);
        if (out.failures.size() >= stop_after_failures) break;
      }
      Sim sim(seed, family, broken);
      std::string failure = sim.Run();
      absl::MutexLock lock(&mu);
      ++out.schedules;
      out.steps += sim.steps();
      if (!failure.empty()) out.failures.emplace_back(seed, std::move(failure));
    }
    SetThreadLogSink(nullptr, false);
  };
  std::thread other(work);
  work();
  other.join();
  std::sort(out.failures.begin(), out.failures.end());
  return out;
}

// The log of one schedule, for a failure report.
std::string Replay(uint64_t seed, Family family, const CoordinatorOptions& broken) {
  std::string log;
  SetThreadLogSink(&log);
  Sim sim(seed, family, broken);
  const std::string failure = sim.Run();
  SetThreadLogSink(nullptr);
  return absl::StrCat(log, "=> ", failure.empty() ? "passed" : failure, "\n");
}

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

void RequireClean(Family family, uint64_t count) {
  const absl::Time start = absl::Now();
  const Outcome out = RunSchedules(family, 1, count, {}, 1);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  WARN(absl::StrFormat("%s: %u schedules, %u steps in %.1f s", FamilyName(family), out.schedules,
                       out.steps, seconds));
  if (!out.failures.empty()) {
    const auto& [seed, what] = out.failures.front();
    FAIL(
        absl::StrFormat("%s schedule with seed %u failed: %s\nreplay: TESSERA_SIM_SEED=%u "
                        "TESSERA_SIM_FAMILY=%s %s\n%s",
                        FamilyName(family), seed, what, seed, FamilyName(family),
                        "build/server/control_plane_sim_test", Replay(seed, family, {})));
  }
  CHECK(out.schedules == count);
}

// A broken rule must be caught by some schedule of `family` within `count`.
void RequireCaught(Family family, uint64_t count, const CoordinatorOptions& broken,
                   const char* rule) {
  const Outcome out = RunSchedules(family, 1, count, broken, EnvOr("TESSERA_SIM_STOP", 1));
  for (const auto& [seed, what] : out.failures) {
    if (EnvOr("TESSERA_SIM_STOP", 1) > 1) std::printf("%lu %s\n", seed, what.c_str());
  }
  INFO(rule);
  REQUIRE_FALSE(out.failures.empty());
  WARN(absl::StrFormat("%s: caught by %s seed %u after %u schedules: %s", rule, FamilyName(family),
                       out.failures.front().first, out.schedules, out.failures.front().second));
}

TEST_CASE("control-plane simulation: chaos schedules keep every invariant", "[sim]") {
  if (const uint64_t seed = EnvOr("TESSERA_SIM_SEED", 0); seed != 0) {
    const char* f = std::getenv("TESSERA_SIM_FAMILY");
    const Family family =
        f != nullptr && std::string(f) == "timed" ? Family::kTimed : Family::kChaos;
    std::fputs(Replay(seed, family, {}).c_str(), stdout);
    return;
  }
  RequireClean(Family::kChaos, EnvOr("TESSERA_SIM_CHAOS_SCHEDULES", 8000));
}

TEST_CASE("control-plane simulation: timed failures are survived within a lease", "[sim]") {
  if (EnvOr("TESSERA_SIM_SEED", 0) != 0) return;
  RequireClean(Family::kTimed, EnvOr("TESSERA_SIM_TIMED_SCHEDULES", 2000));
}

TEST_CASE("control-plane simulation catches promoting a backup whose lease is merely unexpired",
          "[sim][mutation]") {
  RequireCaught(Family::kTimed, 2000, {.promote_unproven_for_testing = true},
                "promotion on an unexpired lease");
}

TEST_CASE("control-plane simulation catches identity by address instead of incarnation",
          "[sim][mutation]") {
  RequireCaught(Family::kChaos, 2000, {.ignore_incarnation_for_testing = true},
                "identity by address");
}

}  // namespace
}  // namespace tessera
