// The coordinator's decisions, without processes: placement, failover, fencing by removal,
// lost shards, restarts and persistence.
#include <catch2/catch.hpp>

#include "proto/cluster.pb.h"
#include "server/coordinator/coordinator.h"

namespace tessera {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

v1::ServerStatus Status(const std::string& address, uint64_t incarnation = 1, uint64_t lsn = 0,
                        int32_t shard = -1) {
  v1::ServerStatus s;
  s.set_address(address);
  s.set_incarnation(incarnation);
  s.set_lsn(lsn);
  s.set_shard(shard);
  return s;
}

std::vector<std::string> Replicas(const ClusterState& c, int shard) {
  std::vector<std::string> out;
  for (const auto& r : c.map().shards(shard).replicas()) {
    out.push_back(r.address() + (r.state() == v1::REPLICA_STATE_LIVE ? "" : "?"));
  }
  return out;
}

// Four servers, two shards, R=2, every backup caught up.
ClusterState FullCluster() {
  ClusterState c({.num_shards = 2, .replication = 2, .num_vshards = 16});
  for (const char* a : {"a", "b", "c", "d"}) c.Heartbeat(Status(a), kT0);
  REQUIRE(c.CaughtUp(0, "a", "c").ok());
  REQUIRE(c.CaughtUp(1, "b", "d").ok());
  return c;
}

TEST_CASE("servers fill primaries first, then joining backups", "[coordinator]") {
  ClusterState c({.num_shards = 2, .replication = 2, .num_vshards = 16});
  const uint64_t e0 = c.map().epoch();
  CHECK(c.Heartbeat(Status("a"), kT0));
  CHECK(c.Heartbeat(Status("b"), kT0));
  CHECK(Replicas(c, 0) == std::vector<std::string>{"a"});
  CHECK(Replicas(c, 1) == std::vector<std::string>{"b"});
  CHECK(c.Heartbeat(Status("c"), kT0));
  CHECK(c.Heartbeat(Status("d"), kT0));
  CHECK(c.Heartbeat(Status("e"), kT0));  // a spare: registered, not placed
  CHECK(Replicas(c, 0) == std::vector<std::string>{"a", "c?"});
  CHECK(Replicas(c, 1) == std::vector<std::string>{"b", "d?"});
  CHECK(c.map().epoch() > e0);
  CHECK_FALSE(c.Heartbeat(Status("a"), kT0));  // nothing changes: no epoch bump
  const uint64_t e1 = c.map().epoch();
  REQUIRE(c.CaughtUp(0, "a", "c").ok());
  CHECK(Replicas(c, 0) == std::vector<std::string>{"a", "c"});
  CHECK(c.map().epoch() == e1 + 1);
  // Only the primary may report, and only about a replica of its shard.
  CHECK(c.CaughtUp(1, "d", "b").status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(c.CaughtUp(1, "b", "e").status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(c.CaughtUp(7, "b", "d").status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("an expired primary is replaced by its LIVE backup with the highest LSN",
          "[coordinator]") {
  ClusterState c({.num_shards = 1, .replication = 3, .num_vshards = 16});
  for (const char* a : {"p", "b1", "b2"}) c.Heartbeat(Status(a), kT0);
  REQUIRE(c.CaughtUp(0, "p", "b1").ok());
  REQUIRE(c.CaughtUp(0, "p", "b2").ok());
  const absl::Time t1 = kT0 + absl::Seconds(1);
  c.Heartbeat(Status("b1", 1, 40), t1);
  c.Heartbeat(Status("b2", 1, 42), t1);
  CHECK_FALSE(c.ExpireLeases(kT0 + absl::Milliseconds(1400)));  // within the lease
  const uint64_t before = c.map().epoch();
  CHECK(c.ExpireLeases(kT0 + absl::Milliseconds(1600)));  // p's lease (1.5 s) is over
  // b2 had the highest LSN; b1 must re-sync from it (JOINING), p is gone.
  CHECK(Replicas(c, 0) == std::vector<std::string>{"b2", "b1?"});
  CHECK(c.map().epoch() > before);
  CHECK(c.failovers() == 1);
}

TEST_CASE("a JOINING replica is never promoted: the shard is lost, and back with its primary",
          "[coordinator]") {
  ClusterState c({.num_shards = 1, .replication = 2, .num_vshards = 16});
  c.Heartbeat(Status("p"), kT0);
  c.Heartbeat(Status("j"), kT0);
  REQUIRE(Replicas(c, 0) == std::vector<std::string>{"p", "j?"});
  const absl::Time t1 = kT0 + absl::Seconds(1);
  c.Heartbeat(Status("j"), t1);
  CHECK(c.ExpireLeases(kT0 + absl::Milliseconds(1600)));
  CHECK(c.map().shards(0).lost());
  CHECK(Replicas(c, 0)[0] == "p");  // an empty server never becomes its primary
  // The same process comes back (it was paused): its state is intact.
  CHECK(c.Heartbeat(Status("p"), kT0 + absl::Seconds(2)));
  CHECK_FALSE(c.map().shards(0).lost());
}

TEST_CASE("a restarted process is a new member: its old replica is removed at once",
          "[coordinator]") {
  ClusterState c = FullCluster();
  // "a" (primary of shard 0) restarts: new incarnation, empty memory.
  CHECK(c.Heartbeat(Status("a", 2), kT0 + absl::Milliseconds(10)));
  // c is promoted; the new "a" is placed again as a joining backup of shard 0.
  CHECK(Replicas(c, 0) == std::vector<std::string>{"c", "a?"});
  CHECK(c.failovers() == 1);
}

TEST_CASE("the state survives a save and load; every member gets a fresh lease", "[coordinator]") {
  ClusterState c = FullCluster();
  v1::CoordinatorState saved;
  c.Save(&saved);
  ClusterState d({.num_shards = 2, .replication = 2, .num_vshards = 16});
  const absl::Time restart = kT0 + absl::Seconds(60);  // long after every lease
  REQUIRE(d.Load(saved, restart).ok());
  CHECK(d.map().epoch() == c.map().epoch());
  CHECK(Replicas(d, 0) == Replicas(c, 0));
  CHECK_FALSE(d.ExpireLeases(restart + absl::Milliseconds(1000)));
  // Another layout refuses the state.
  ClusterState e({.num_shards = 3, .replication = 2, .num_vshards = 16});
  CHECK(e.Load(saved, restart).code() == absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace tessera
