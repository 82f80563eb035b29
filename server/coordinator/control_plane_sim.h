// The deterministic simulation of the control plane (docs/replication.md, "The control-plane
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
//
// Sim is split by concern: control_plane_sim.cc (time, network, processes, the coordinator,
// clients, checkpoints, the operator, faults), control_plane_sim_servers.cc (the servers'
// side, by the rules in server/replica_rules.h), control_plane_sim_checks.cc (the invariants);
// control_plane_sim_test.cc runs the schedules.
#ifndef TESSERA_SERVER_COORDINATOR_CONTROL_PLANE_SIM_H_
#define TESSERA_SERVER_COORDINATOR_CONTROL_PLANE_SIM_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "proto/cluster.pb.h"
#include "server/coordinator/coordinator_core.h"
#include "server/coordinator/memory_store_for_testing.h"
#include "server/replica_rules.h"

namespace tessera::control_plane_sim {

enum class Family { kChaos, kTimed };

inline const char* FamilyName(Family f) { return f == Family::kChaos ? "chaos" : "timed"; }

// Timing of the simulated cluster (the defaults of the real one).
constexpr int64_t kLeaseMs = 1500;
constexpr int64_t kHeartbeatMs = 250;
constexpr int64_t kTickMs = 50;
constexpr int64_t kRetryMs = 40;         // a sender's pause after a failed call
constexpr int64_t kCallTimeoutMs = 400;  // replication and client calls
constexpr int64_t kHeartbeatTimeoutMs = 1000;

// Thread-compatible: one schedule, run by one thread.
class Sim {
 public:
  Sim(uint64_t seed, Family family, const CoordinatorOptions& broken);

  // Empty when every invariant held; else what broke and when.
  std::string Run();

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

  void At(int64_t delay, std::function<void()> fn);

  void RunUntil(int64_t until);

  void Note(const std::string& what) { LogInfo("t=%d %s", now_, what); }
  void Fail(const std::string& what);

  // A message: lost with probability loss_, else delivered after a random delay (sometimes
  // very late).
  void Net(std::function<void()> deliver);

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
    bool failed_report_pending = false;  // T10: the backup answered FAILED; tell the coordinator
    bool failed_report_in_flight = false;
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
    // FAILED (docs/state_machine.md): refuses every batch, applying nothing, until it installs
    // a snapshot.
    bool failed = false;
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

  int NewSlot();

  ProcPtr NewProc(int slot);

  ProcPtr ProcAt(const std::string& address);

  // Runs fn on p now, once p resumes if it is stalled, never if it crashed.
  void OnProc(const ProcPtr& p, std::function<void()> fn);

  void Crash(const ProcPtr& p);

  void Stall(const ProcPtr& p, int64_t ms);

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
  using FailedReq =
      Request<v1::ReportReplicaFailedRequest, v1::ReportReplicaFailedResponse, ReplicaFailedCall>;
  using RecoverReq = Request<v1::RecoverShardRequest, v1::RecoverShardResponse, RecoverShardCall>;
  using FinishReq =
      Request<v1::FinishRecoveryRequest, v1::FinishRecoveryResponse, FinishRecoveryCall>;

  void StartCoordinator();

  // Sends `r` from `caller` (null: the operator); `done(ok, status)` runs once on the caller.
  void ToCoordinator(const ProcPtr& caller, std::shared_ptr<CoordReq> r, int64_t timeout,
                     std::function<void(bool, absl::Status)> done);

  void CoordTick();

  void Commit(absl::Span<CoordinatorCall> calls);

  void RecordPersisted();

  void CoordinatorCrash();

  // ---- The servers' side (Replicator, by the rules in replica_rules.h) ----

  void HeartbeatTimer(const ProcPtr& p);

  void Poke(const ProcPtr& p);

  void Heartbeat(const ProcPtr& p);

  void ApplyMap(const ProcPtr& p, const v1::ClusterMap& m);

  void Append(const ProcPtr& p, uint64_t entry);

  void ReplaceData(const ProcPtr& p, std::vector<uint64_t> data);

  // The primary decided to acknowledge `entry` of shard s.
  void Ack(uint32_t s, uint64_t entry);

  void Recompute(const ProcPtr& p);

  void MaybeCaughtUp(const ProcPtr& p, Sender& s);

  void Pump(const ProcPtr& p);

  // A sender's reply arrived: the sender if it still exists (same entry, same generation).
  Sender* Live(const ProcPtr& p, const std::string& key, uint64_t gen);

  enum class Answer { kOk, kBehind, kFenced, kNeedsSnapshot, kGap, kReplicaFailed };
  struct BatchReply {
    Answer answer;
    uint64_t lsn;
  };

  std::optional<BatchReply> Check(const ProcPtr& b, uint64_t epoch, uint32_t shard,
                                  const std::string& sender, uint64_t incarnation);

  // What a call from primary p's sender s carries (and marks it in flight).
  struct Header {
    std::string key;
    uint64_t gen, epoch;
    uint32_t shard;
    std::string from;
    uint64_t from_inc;
  };
  Header Outgoing(const ProcPtr& p, Sender& s);

  void SendBatch(const ProcPtr& p, Sender& s);

  void SendSnapshot(const ProcPtr& p, Sender& s);

  template <typename Report>
  static void FillReport(const Proc& p, const Sender& s, Report* r);
  void SendReport(const ProcPtr& p, Sender& s);

  // T10: one report that backup entry s is FAILED; the snapshot goes on meanwhile.
  void SendFailedReport(const ProcPtr& p, Sender& s);

  // ---- Clients: one synchronous writer per shard, pushes retried with the same id ----

  struct Client {
    std::shared_ptr<const v1::ClusterMap> map;
    uint64_t entry = 0;  // in flight, 0: none
    int attempts = 0;
  };

  void ClientTick(uint32_t s);

  void Push(uint32_t s);

  // The outcome of one attempt of the push of `entry` reached its client.
  void PushDone(uint32_t s, uint64_t entry, bool acked);

  // ---- Checkpoints and the operator ----

  void CheckpointTick();

  // An operator restores every LOST shard from its last checkpoint (T8, T8').
  void RestoreLostShards();

  void RecoverShard(uint32_t s, int attempt);

  // Waits until the target acts as RESTORING, loads the checkpoint, then finishes.
  void LoadCheckpoint(uint32_t s, const std::string& server, uint64_t incarnation, int attempt);

  // ---- Faults ----

  std::vector<ProcPtr> AliveProcs();

  void CrashAndMaybeRestart(const ProcPtr& p, int64_t restart_after, bool same_address);

  void ChaosFault();

  // Up to R-1 failures of one shard's replicas, the first one its primary most of the time.
  void TimedFaults();

  void Heal();

  // ---- Invariants ----

  // The process named by a replica entry, if it is alive with its memory.
  ProcPtr Holder(const v1::Replica& r);

  void CheckSafety();

  // I2, I3, I6: how a shard's primary may change from one committed map to the next.
  void CheckTransition(const v1::ClusterMap& before, const v1::ClusterMap& after);

  bool Readable(uint32_t s);

  // I7 (timed schedules): a read outage of the focus shard lasts at most a lease plus the
  // promotion time, plus as much again for each failure that happened after the promotion
  // could have begun (a newly promoted primary failing too).
  void TrackOutage();

  std::string Describe(uint32_t s);

  void CheckHealed(bool after_restore);

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

}  // namespace tessera::control_plane_sim

#endif  // TESSERA_SERVER_COORDINATOR_CONTROL_PLANE_SIM_H_
