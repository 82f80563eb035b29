// The coordinator's decisions through CoordinatorCore (commit, then publish), without
// processes: placement, promotion only with a proof, survivors staying LIVE, lost shards and
// who may revive them, identity by incarnation, re-added replicas, stalls of the coordinator,
// failed writes, persistence and the operator's recovery. The schedules that combine all of
// these are control_plane_sim_test.cc's.
#include <catch2/catch.hpp>
#include <map>
#include <set>

#include "proto/cluster.pb.h"
#include "server/coordinator/coordinator_core.h"
#include "server/coordinator/memory_store_for_testing.h"

namespace tessera {
namespace {

// A coordinator at a simulated monotonic time, and servers that echo their last stamp.
class Harness {
 public:
  explicit Harness(CoordinatorOptions o, MemoryStoreForTesting* store = nullptr)
      : options_(o), store_(store != nullptr ? store : &own_store_), core_(o, store_, 7) {
    REQUIRE(core_.Start(now_).ok());
  }

  // One heartbeat, alone in a batch at the current time.
  v1::HeartbeatResponse Beat(const std::string& address, uint64_t incarnation = 1, uint64_t lsn = 0,
                             absl::Status* status = nullptr) {
    v1::HeartbeatRequest req;
    v1::ServerStatus* s = req.mutable_status();
    s->set_address(address);
    s->set_incarnation(incarnation);
    s->set_lsn(lsn);
    s->set_shard(-1);  // (unbound until it learns its shard; the coordinator binds it)
    auto& echo = echo_[{address, incarnation}];
    s->set_echo_life(echo.first);
    s->set_echo_seq(echo.second);
    v1::HeartbeatResponse resp;
    CoordinatorCall call{HeartbeatCall{&req, &resp}, {}};
    core_.Process(absl::MakeSpan(&call, 1), now_);
    if (call.status.ok()) echo = {resp.life(), resp.seq()};
    if (status != nullptr) {
      *status = call.status;
    } else {
      INFO(call.status.ToString());
      REQUIRE(call.status.ok());
    }
    return resp;
  }

  // Time passes in 50 ms ticks (as the coordinator's loop runs); the servers in `beating`
  // heartbeat every 250 ms.
  void Advance(int64_t ms, const std::set<std::string>& beating = {}) {
    for (int64_t t = 0; t < ms; t += 50) {
      now_ += 50;
      if ((now_ / 50) % 5 == 0) {
        absl::Status ignored;  // (a failing write refuses heartbeats; tests look at the state)
        for (const std::string& a : beating) Beat(a, incarnation_of(a), 0, &ignored);
      }
      core_.Process({}, now_);
    }
  }
  // The coordinator is stopped (SIGSTOP) for `ms`: no batch runs meanwhile.
  void Stall(int64_t ms) { now_ += ms; }

  // A primary's report about replica `replica` of `shard`, with the entries' incarnations and
  // join epoch as the map has them.
  template <typename Req>
  Req Reported(int shard, const std::string& primary, const std::string& replica) const {
    const v1::ShardReplicas s =
        shard < map().shards_size() ? map().shards(shard) : v1::ShardReplicas();
    Req req;
    req.set_shard(shard);
    req.set_primary(primary);
    req.set_replica(replica);
    for (const v1::Replica& r : s.replicas()) {
      if (r.address() == primary) req.set_primary_incarnation(r.incarnation());
      if (r.address() == replica) {
        req.set_replica_incarnation(r.incarnation());
        req.set_join_epoch(r.join_epoch());
      }
    }
    return req;
  }
  absl::Status CaughtUp(int shard, const std::string& primary, const std::string& replica) {
    return Report(Reported<v1::ReportCaughtUpRequest>(shard, primary, replica));
  }
  absl::Status Failed(int shard, const std::string& primary, const std::string& replica) {
    v1::ReportReplicaFailedRequest req =
        Reported<v1::ReportReplicaFailedRequest>(shard, primary, replica);
    req.set_reason("testing");
    v1::ReportReplicaFailedResponse resp;
    CoordinatorCall call{ReplicaFailedCall{&req, &resp}, {}};
    core_.Process(absl::MakeSpan(&call, 1), now_);
    if (call.status.ok()) CHECK(resp.map().epoch() == map().epoch());
    return call.status;
  }
  absl::Status Report(const v1::ReportCaughtUpRequest& req) {
    v1::ReportCaughtUpResponse resp;
    CoordinatorCall call{CaughtUpCall{&req, &resp}, {}};
    core_.Process(absl::MakeSpan(&call, 1), now_);
    return call.status;
  }

  std::vector<std::string> Replicas(int shard) const {
    std::vector<std::string> out;
    for (const auto& r : map().shards(shard).replicas()) {
      out.push_back(r.address() + (r.state() == v1::REPLICA_STATE_LIVE ? "" : "?"));
    }
    return out;
  }
  uint64_t incarnation_of(const std::string& address) const {
    uint64_t inc = 1;
    for (const auto& [key, echo] : echo_) {
      if (key.first == address) inc = std::max(inc, key.second);
    }
    return inc;
  }
  const v1::ClusterMap& map() const { return core_.state().map(); }
  CoordinatorCore& core() { return core_; }
  int64_t now() const { return now_; }

 private:
  CoordinatorOptions options_;
  MemoryStoreForTesting own_store_;
  MemoryStoreForTesting* store_;
  CoordinatorCore core_;
  int64_t now_ = 1000000;
  std::map<std::pair<std::string, uint64_t>, std::pair<uint64_t, uint64_t>> echo_;
};

constexpr CoordinatorOptions kR2{.num_shards = 2, .replication = 2, .num_vshards = 16};
constexpr CoordinatorOptions kR3{.num_shards = 1, .replication = 3, .num_vshards = 16};

TEST_CASE("servers fill primaries first, then joining backups, and a report names one entry",
          "[coordinator]") {
  Harness h(kR2);
  const uint64_t e0 = h.map().epoch();
  for (const char* a : {"a", "b", "c", "d", "e"}) h.Beat(a);
  CHECK(h.Replicas(0) == std::vector<std::string>{"a", "c?"});
  CHECK(h.Replicas(1) == std::vector<std::string>{"b", "d?"});
  CHECK(h.map().epoch() > e0);
  const uint64_t e1 = h.map().epoch();
  h.Beat("a");  // nothing changes: no epoch bump
  CHECK(h.map().epoch() == e1);
  REQUIRE(h.CaughtUp(0, "a", "c").ok());
  CHECK(h.Replicas(0) == std::vector<std::string>{"a", "c"});
  CHECK(h.map().epoch() == e1 + 1);
  // Only the primary may report, only about a JOINING entry of its shard.
  CHECK(h.CaughtUp(1, "d", "b").code() == absl::StatusCode::kFailedPrecondition);
  CHECK(h.CaughtUp(1, "b", "e").code() == absl::StatusCode::kFailedPrecondition);
  CHECK(h.CaughtUp(7, "b", "d").code() == absl::StatusCode::kInvalidArgument);
  // The entry carries the process and its join: a report with another join epoch is refused.
  v1::ReportCaughtUpRequest stale;
  stale.set_shard(1);
  stale.set_primary("b");
  stale.set_primary_incarnation(1);
  stale.set_replica("d");
  stale.set_replica_incarnation(1);
  stale.set_join_epoch(h.map().shards(1).replicas(1).join_epoch() - 1);
  CHECK(h.Report(stale).code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("a FAILED backup reported by its primary is JOINING again, never promoted",
          "[coordinator]") {
  Harness h(kR3);
  for (const char* a : {"p", "b1", "b2"}) h.Beat(a);
  REQUIRE(h.CaughtUp(0, "p", "b1").ok());
  REQUIRE(h.CaughtUp(0, "p", "b2").ok());
  REQUIRE(h.Replicas(0) == std::vector<std::string>{"p", "b1", "b2"});
  const uint64_t e0 = h.map().epoch();
  const uint64_t join0 = h.map().shards(0).replicas(1).join_epoch();
  // Only the shard's primary may report, about a backup entry of its own shard.
  CHECK(h.Failed(0, "b2", "b1").code() == absl::StatusCode::kFailedPrecondition);
  CHECK(h.Failed(0, "p", "p").code() == absl::StatusCode::kFailedPrecondition);
  CHECK(h.Failed(0, "p", "nobody").code() == absl::StatusCode::kFailedPrecondition);
  CHECK(h.Failed(5, "p", "b1").code() == absl::StatusCode::kInvalidArgument);
  CHECK(h.map().epoch() == e0);
  REQUIRE(h.Failed(0, "p", "b1").ok());
  CHECK(h.Replicas(0) == std::vector<std::string>{"p", "b1?", "b2"});
  CHECK(h.map().epoch() == e0 + 1);
  CHECK(h.map().shards(0).replicas(1).join_epoch() == e0 + 1);  // a new entry (R4)
  CHECK(h.map().shards(0).replicas(1).join_epoch() != join0);
  // A second report about the old entry is stale.
  v1::ReportReplicaFailedRequest stale;
  stale.set_shard(0);
  stale.set_primary("p");
  stale.set_primary_incarnation(h.incarnation_of("p"));
  stale.set_replica("b1");
  stale.set_replica_incarnation(h.incarnation_of("b1"));
  stale.set_join_epoch(join0);
  v1::ReportReplicaFailedResponse resp;
  CoordinatorCall call{ReplicaFailedCall{&stale, &resp}, {}};
  h.core().Process(absl::MakeSpan(&call, 1), h.now());
  CHECK(call.status.code() == absl::StatusCode::kFailedPrecondition);
  // The primary dies: the LIVE backup is promoted, never the JOINING one.
  h.Advance(3000, {"b1", "b2"});
  REQUIRE_FALSE(h.Replicas(0).empty());
  CHECK(h.Replicas(0).front() == "b2");
  // Re-synced, it is LIVE again under its new entry.
  REQUIRE(h.CaughtUp(0, "b2", "b1").ok());
  CHECK(std::find(h.Replicas(0).begin(), h.Replicas(0).end(), "b1") != h.Replicas(0).end());
}

// A promoting shard waits for a proof: an answer asks for it, the next heartbeat carries it.
TEST_CASE("a dead backup whose lease has not ended is never promoted", "[coordinator]") {
  Harness h(kR3);
  for (const char* a : {"p", "b1", "b2"}) h.Beat(a);
  REQUIRE(h.CaughtUp(0, "p", "b1").ok());
  REQUIRE(h.CaughtUp(0, "p", "b2").ok());
  h.Advance(1000, {"p", "b1", "b2"});
  // p and b1 are killed 500 ms apart; b2 lives (its heartbeat is due when p's lease ends).
  h.Advance(500, {"b1", "b2"});
  h.Advance(600, {"b2"});
  h.Advance(450);  // p's lease has ended; b1's has not
  CHECK(h.core().state().PromotingShards() == std::vector<uint32_t>{0});
  CHECK(h.Replicas(0) == std::vector<std::string>{"p", "b1", "b2"});  // nobody promoted yet
  // b2's next heartbeat is answered with a request for a proof; its echo is the proof.
  const v1::HeartbeatResponse asked = h.Beat("b2");
  CHECK(asked.confirm());
  const v1::HeartbeatResponse promoted = h.Beat("b2");
  CHECK_FALSE(promoted.confirm());
  // b1 stays LIVE (it holds every acknowledged update until its lease says it is dead).
  CHECK(h.Replicas(0) == std::vector<std::string>{"b2", "b1"});
  CHECK(h.core().state().failovers() == 1);
  h.Advance(600, {"b2"});  // b1's lease ends: it leaves
  CHECK(h.Replicas(0) == std::vector<std::string>{"b2"});
  CHECK_FALSE(h.map().shards(0).lost());
}

TEST_CASE("the backups that are not promoted stay LIVE, so a second failure is survived",
          "[coordinator]") {
  Harness h(kR3);
  for (const char* a : {"p", "b1", "b2"}) h.Beat(a);
  REQUIRE(h.CaughtUp(0, "p", "b1").ok());
  REQUIRE(h.CaughtUp(0, "p", "b2").ok());
  h.Advance(1600, {"b1", "b2"});  // p died
  h.Beat("b1");
  h.Beat("b1");  // proof: b1 is primary
  CHECK(h.Replicas(0) == std::vector<std::string>{"b1", "b2"});
  // b1 dies before b2 re-synced from it: b2 still holds every acknowledged update.
  h.Advance(1600, {"b2"});
  h.Beat("b2");
  h.Beat("b2");
  CHECK(h.Replicas(0) == std::vector<std::string>{"b2"});
  CHECK_FALSE(h.map().shards(0).lost());
  CHECK(h.core().state().failovers() == 2);
}

TEST_CASE("a primary that proves it is alive before any backup keeps its shard", "[coordinator]") {
  Harness h({.num_shards = 1, .replication = 2, .num_vshards = 16});
  h.Beat("p");
  h.Beat("b");
  REQUIRE(h.CaughtUp(0, "p", "b").ok());
  const uint64_t epoch = h.map().epoch();
  h.Advance(1600, {"b"});  // p's lease ended (a long pause)
  h.Beat("p");             // p is back first ...
  h.Beat("p");             // ... and proves it
  CHECK(h.core().state().PromotingShards().empty());
  CHECK(h.Replicas(0) == std::vector<std::string>{"p", "b"});
  CHECK(h.map().epoch() == epoch);  // no failover at all
}

TEST_CASE("a JOINING replica is never promoted: the shard is lost, and back with its holder",
          "[coordinator]") {
  Harness h({.num_shards = 1, .replication = 2, .num_vshards = 16});
  h.Beat("p");
  h.Beat("j");
  REQUIRE(h.Replicas(0) == std::vector<std::string>{"p", "j?"});
  h.Advance(1600, {"j"});
  CHECK(h.map().shards(0).state() == v1::SHARD_STATE_LOST);
  CHECK(h.Replicas(0) == std::vector<std::string>{"p"});  // the holder; j left
  h.Advance(3000, {"j"});
  CHECK(h.map().shards(0).state() == v1::SHARD_STATE_LOST);  // an empty server never takes it
  // The same process comes back (it was paused): its memory is intact.
  CHECK(h.Beat("p").confirm());
  h.Beat("p");
  CHECK(h.map().shards(0).state() == v1::SHARD_STATE_SERVING);
  CHECK(h.Replicas(0) == std::vector<std::string>{"p", "j?"});
}

TEST_CASE("a crashed server restarting at its old address does not bring a lost shard back",
          "[coordinator]") {
  Harness h({.num_shards = 1, .replication = 1, .num_vshards = 16});
  h.Beat("p", 1);
  h.Advance(1600);
  REQUIRE(h.map().shards(0).state() == v1::SHARD_STATE_LOST);
  // A new process at the same address (systemd's Restart=, a StatefulSet pod).
  h.Beat("p", 2);
  h.Beat("p", 2);
  h.Advance(1000, {"p"});
  CHECK(h.map().shards(0).state() == v1::SHARD_STATE_LOST);
  CHECK(h.map().shards(0).replicas(0).incarnation() == 1);  // still the old holder
  // A heartbeat of the old incarnation arriving late is refused and changes nothing.
  absl::Status st;
  h.Beat("p", 1, 0, &st);
  CHECK(st.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(h.map().shards(0).state() == v1::SHARD_STATE_LOST);
}

TEST_CASE("a restarted primary is a new member: its old replica fails over at once",
          "[coordinator]") {
  Harness h(kR2);
  for (const char* a : {"a", "b", "c", "d"}) h.Beat(a);
  REQUIRE(h.CaughtUp(0, "a", "c").ok());
  REQUIRE(h.CaughtUp(1, "b", "d").ok());
  h.Beat("a", 2);  // "a" restarted: new incarnation, empty memory
  CHECK(h.core().state().PromotingShards() == std::vector<uint32_t>{0});
  h.Beat("c");
  h.Beat("c");  // c proves it is alive and is promoted; the new "a" joins as a backup
  CHECK(h.Replicas(0) == std::vector<std::string>{"c", "a?"});
  CHECK(h.map().shards(0).replicas(1).incarnation() == 2);
  CHECK(h.core().state().failovers() == 1);
}

TEST_CASE("a backup removed and re-added is a new entry that must catch up again",
          "[coordinator]") {
  Harness h({.num_shards = 1, .replication = 2, .num_vshards = 16});
  h.Beat("p");
  h.Beat("b");
  REQUIRE(h.CaughtUp(0, "p", "b").ok());
  const v1::Replica before = h.map().shards(0).replicas(1);
  h.Advance(1600, {"p"});  // b stalled just past its lease: removed
  CHECK(h.Replicas(0) == std::vector<std::string>{"p"});
  h.Beat("b");  // it resumes: re-added, JOINING, with a new join epoch
  CHECK(h.Replicas(0) == std::vector<std::string>{"p", "b?"});
  const v1::Replica after = h.map().shards(0).replicas(1);
  CHECK(after.incarnation() == before.incarnation());
  CHECK(after.join_epoch() > before.join_epoch());
  // A late report about the old entry cannot make the new one LIVE; one about the new can.
  v1::ReportCaughtUpRequest old;
  old.set_shard(0);
  old.set_primary("p");
  old.set_primary_incarnation(1);
  old.set_replica("b");
  old.set_replica_incarnation(1);
  old.set_join_epoch(before.join_epoch());
  CHECK(h.Report(old).code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(h.CaughtUp(0, "p", "b").ok());
  CHECK(h.Replicas(0) == std::vector<std::string>{"p", "b"});
}

TEST_CASE("a coordinator that could not hear restarts the leases instead of expiring them",
          "[coordinator]") {
  Harness h(kR2);
  for (const char* a : {"a", "b", "c", "d"}) h.Beat(a);
  REQUIRE(h.CaughtUp(0, "a", "c").ok());
  REQUIRE(h.CaughtUp(1, "b", "d").ok());
  const uint64_t epoch = h.map().epoch();
  h.Stall(4000);  // SIGSTOP 4 s: every lease would have ended
  h.Advance(100);
  CHECK(h.core().stalls() == 1);
  CHECK(h.map().epoch() == epoch);
  CHECK(h.core().state().PromotingShards().empty());
  h.Advance(1000, {"a", "b", "c", "d"});  // the queued heartbeats arrive
  CHECK(h.map().epoch() == epoch);
  CHECK(h.core().state().failovers() == 0);
}

TEST_CASE("a failed write of the state publishes nothing and is counted", "[coordinator]") {
  MemoryStoreForTesting store;
  Harness h({.num_shards = 1, .replication = 2, .num_vshards = 16}, &store);
  h.Beat("p");
  h.Beat("b");
  REQUIRE(h.CaughtUp(0, "p", "b").ok());
  const v1::ClusterMap committed = h.map();
  store.set_fail(true);
  absl::Status st;
  h.Beat("c", 1, 0, &st);  // a new member: a change that cannot be written
  CHECK(st.code() == absl::StatusCode::kUnavailable);
  CHECK(h.core().persist_failures() == 1);
  CHECK_FALSE(h.core().persist_error().empty());
  h.Advance(2000, {"b"});  // p dies: the failover cannot be written either
  CHECK(h.map().SerializeAsString() == committed.SerializeAsString());
  CHECK(store.saved()->map().SerializeAsString() == committed.SerializeAsString());
  store.set_fail(false);
  h.Advance(1600, {"b"});  // leases restarted when it could write again; then p's ends
  h.Beat("b");
  h.Beat("b");
  CHECK(h.Replicas(0)[0] == "b");
  CHECK(h.core().persist_error().empty());
  CHECK(store.saved()->map().SerializeAsString() == h.map().SerializeAsString());
}

TEST_CASE("the state survives a restart, and every member gets a fresh lease", "[coordinator]") {
  MemoryStoreForTesting store;
  v1::ClusterMap before;
  {
    Harness h(kR2, &store);
    for (const char* a : {"a", "b", "c", "d"}) h.Beat(a);
    REQUIRE(h.CaughtUp(0, "a", "c").ok());
    before = h.map();
  }
  Harness restarted(kR2, &store);  // (its clock starts where the first one's did)
  CHECK(restarted.map().SerializeAsString() == before.SerializeAsString());
  restarted.Advance(1000);
  CHECK(restarted.map().epoch() == before.epoch());
  // Another layout refuses the state.
  CoordinatorCore other({.num_shards = 3, .replication = 2, .num_vshards = 16}, &store, 9);
  CHECK(other.Start(0).code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("an operator restores a lost shard onto a server at a new address", "[coordinator]") {
  Harness h({.num_shards = 2, .replication = 1, .num_vshards = 16});
  h.Beat("a");
  h.Beat("b");
  h.Advance(1600, {"b"});
  REQUIRE(h.map().shards(0).state() == v1::SHARD_STATE_LOST);
  auto recover = [&](const std::string& server, absl::Status* st) {
    v1::RecoverShardRequest req;
    req.set_shard(0);
    req.set_server(server);
    v1::RecoverShardResponse resp;
    CoordinatorCall call{RecoverShardCall{&req, &resp}, {}};
    h.core().Process(absl::MakeSpan(&call, 1), h.now());
    *st = call.status;
    return resp;
  };
  absl::Status st;
  {  // garbage: no such shard, a shard that serves
    v1::RecoverShardRequest req;
    req.set_shard(99);
    v1::RecoverShardResponse resp;
    CoordinatorCall call{RecoverShardCall{&req, &resp}, {}};
    h.core().Process(absl::MakeSpan(&call, 1), h.now());
    CHECK(call.status.code() == absl::StatusCode::kInvalidArgument);
    req.set_shard(1);
    CoordinatorCall serving{RecoverShardCall{&req, &resp}, {}};
    h.core().Process(absl::MakeSpan(&serving, 1), h.now());
    CHECK(serving.status.code() == absl::StatusCode::kFailedPrecondition);
  }
  recover("", &st);
  CHECK(st.code() == absl::StatusCode::kFailedPrecondition);  // no server to put it on
  CHECK(std::string(st.message()).find("start a tessera-server") != std::string::npos);
  h.Beat("new");  // a replacement at another address: a spare (never placed by itself)
  CHECK(h.map().shards(0).state() == v1::SHARD_STATE_LOST);
  recover("b", &st);  // b holds shard 1
  CHECK(st.code() == absl::StatusCode::kFailedPrecondition);
  const v1::RecoverShardResponse r = recover("", &st);
  REQUIRE(st.ok());
  CHECK(r.server() == "new");
  CHECK(h.map().shards(0).state() == v1::SHARD_STATE_RESTORING);
  recover("", &st);  // retried: the same target, no change
  CHECK(st.ok());
  v1::FinishRecoveryRequest fin;
  fin.set_shard(0);
  fin.set_server("new");
  fin.set_incarnation(r.incarnation() + 1);  // another process: refused, nothing changes
  v1::FinishRecoveryResponse fresp;
  CoordinatorCall wrong{FinishRecoveryCall{&fin, &fresp}, {}};
  h.core().Process(absl::MakeSpan(&wrong, 1), h.now());
  CHECK(wrong.status.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(h.map().shards(0).state() == v1::SHARD_STATE_RESTORING);
  fin.set_incarnation(r.incarnation());
  CoordinatorCall call{FinishRecoveryCall{&fin, &fresp}, {}};
  h.core().Process(absl::MakeSpan(&call, 1), h.now());
  REQUIRE(call.status.ok());
  CHECK(h.map().shards(0).state() == v1::SHARD_STATE_SERVING);
  CHECK(h.Replicas(0) == std::vector<std::string>{"new"});
  // The old holder coming back changes nothing now: the operator's restore is the data.
  h.Beat("a");
  h.Beat("a");
  CHECK(h.Replicas(0) == std::vector<std::string>{"new"});
}

}  // namespace
}  // namespace tessera
