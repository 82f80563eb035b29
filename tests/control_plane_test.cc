// Regression tests of the control plane (docs/replication.md, "The control-plane protocol"),
// one per behaviour found broken from the outside: real tessera-coordinator and
// tessera-server processes, real SIGKILL, SIGSTOP and restarts at the same address.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "common/http_get.h"
#include "common/prom_text.h"
#include "proto/cluster.grpc.pb.h"
#include "tests/test_cluster.h"
#include "tests/workload.h"

namespace tessera {
namespace {

using testing::RunCommand;
using testing::WaitForNewPrimary;
using testing::WaitUntilRemoved;
using testing::Workload;

constexpr char kLease[] = "--lease_ms=1000";

std::unique_ptr<LocalCluster> Start(uint32_t servers, uint32_t replication, uint32_t shards,
                                    std::vector<std::string> server_args = {},
                                    std::vector<std::string> coordinator_args = {}) {
  server_args.insert(server_args.begin(), "--heartbeat_ms=100");
  coordinator_args.insert(coordinator_args.begin(), kLease);
  return testing::StartCoordinated(servers, replication, shards, std::move(coordinator_args),
                                   std::move(server_args));
}

std::string TempDir(const char* name) {
  std::string tmpl = absl::StrCat("/tmp/tessera-", name, "-XXXXXX");
  REQUIRE(mkdtemp(tmpl.data()) != nullptr);
  return tmpl;
}

// Waits (bounded) until shard `shard` is in `state` ("serving", "lost", "restoring").
void WaitForShardState(LocalCluster& cluster, uint32_t shard, const std::string& state,
                       absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string now;
  while (absl::Now() < deadline) {
    absl::StatusOr<std::string> s = cluster.ShardState(shard);
    if (s.ok() && *s == state) return;
    now = s.ok() ? *s : s.status().ToString();
    absl::SleepFor(absl::Milliseconds(20));
  }
  FAIL("shard " << shard << " is " << now << ", not " << state);
}

// The keys 0..n-1 whose shard is `shard`.
std::vector<uint64_t> KeysOf(const Client& c, uint32_t shard, uint64_t n) {
  std::vector<uint64_t> out;
  for (uint64_t k = 0; k < n; ++k) {
    if (c.shard_map().ShardOfKey(k) == shard) out.push_back(k);
  }
  return out;
}

double Metric(int port, const std::string& name) {
  absl::StatusOr<std::string> text = HttpGet(port, "/metrics");
  REQUIRE(text.ok());
  return SumSamples(ParsePromText(*text), name);
}

// 1. With R=3 the primary and a backup die within one lease. The primary's lease ends while
// the dead backup's has not: only the living backup may be promoted, and it holds everything.
TEST_CASE("R=3: the primary and a backup killed within one lease, at any spacing, lose nothing",
          "[control][fault]") {
  for (int spacing_ms : {0, 200, 500, 900}) {
    INFO("second kill " << spacing_ms << " ms after the first");
    auto cluster = Start(3, 3, 1);
    Workload work(*cluster);
    work.Start();
    work.WaitForMore(100);
    absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
    REQUIRE(replicas.ok());
    REQUIRE(replicas->size() == 3);
    cluster->KillServer((*replicas)[0]);
    absl::SleepFor(absl::Milliseconds(spacing_ms));  // (the fault's timing, not a wait)
    cluster->KillServer((*replicas)[1]);
    CHECK(WaitForNewPrimary(*cluster, 0, (*replicas)[0]) == (*replicas)[2]);
    work.WaitForMore(100);
    work.Stop();
    work.Verify();
    absl::StatusOr<std::string> state = cluster->ShardState(0);
    REQUIRE(state.ok());
    CHECK(*state == "serving");
  }
}

// 2. A crashed server restarted at its old address is a new, empty process: it must not bring
// back the shard it held (R=1), nor a shard whose replicas all died (R=2).
TEST_CASE("a crashed server restarted at its old address does not bring its lost shard back empty",
          "[control][fault]") {
  for (uint32_t r : {1u, 2u}) {
    INFO("R=" << r);
    auto cluster = Start(2 * r, r, 2);
    std::unique_ptr<Client> c = testing::ConnectCoordinated(*cluster);
    TableConfig t{.name = "w", .kind = TableKind::kSparse, .dim = 2};
    t.optimizer.kind = OptimizerKind::kAdd;
    TESSERA_REQUIRE_OK(c->CreateTable(t).status());
    const std::vector<uint64_t> lost_keys = KeysOf(*c, 0, 200), kept_keys = KeysOf(*c, 1, 200);
    TESSERA_REQUIRE_OK(c->PushSparse("w", lost_keys, std::vector<float>(lost_keys.size() * 2, 1)));
    TESSERA_REQUIRE_OK(c->PushSparse("w", kept_keys, std::vector<float>(kept_keys.size() * 2, 1)));
    absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
    REQUIRE(replicas.ok());
    for (int i : *replicas) cluster->KillServer(i);
    WaitForShardState(*cluster, 0, "lost");
    for (int i : *replicas) TESSERA_REQUIRE_OK(cluster->RestartServer(i));  // systemd Restart=
    // Bounded: for 3 s (many heartbeats of the new processes) the shard stays lost.
    const absl::Time until = absl::Now() + absl::Seconds(3);
    while (absl::Now() < until) {
      absl::StatusOr<std::string> state = cluster->ShardState(0);
      REQUIRE(state.ok());
      REQUIRE(*state == "lost");
      absl::SleepFor(absl::Milliseconds(50));
    }
    // Its tables did not come back empty: reads fail, naming the shard, and do not read zeros.
    std::unique_ptr<Client> fresh = testing::ConnectCoordinated(*cluster);
    std::vector<float> got(lost_keys.size() * 2);
    const absl::Status st = fresh->PullSparse("w", lost_keys, absl::MakeSpan(got));
    CHECK(st.code() == absl::StatusCode::kUnavailable);
    CHECK(absl::StrContains(st.message(), "shard 0 is LOST"));
    std::vector<float> kept(kept_keys.size() * 2);
    TESSERA_REQUIRE_OK(fresh->PullSparse("w", kept_keys, absl::MakeSpan(kept)));
    CHECK(kept == std::vector<float>(kept.size(), 1.0f));
  }
}

// 3. A backup stalled just past its lease is removed and, when it resumes, added again at
// once: a new entry that must catch up again, and does.
TEST_CASE("R=2: a backup stalled just past its lease rejoins, turns LIVE, and can be promoted",
          "[control][fault]") {
  auto cluster = Start(2, 2, 1);
  Workload work(*cluster);
  work.Start();
  work.WaitForMore(100);
  absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
  REQUIRE(replicas.ok());
  const int primary = (*replicas)[0], backup = (*replicas)[1];
  kill(cluster->pid(backup), SIGSTOP);
  WaitUntilRemoved(*cluster, 0, backup);
  kill(cluster->pid(backup), SIGCONT);  // resumes right after its removal
  TESSERA_REQUIRE_OK(cluster->WaitForReplicas(absl::Seconds(20)));  // not JOINING forever
  work.WaitForMore(100);
  cluster->KillServer(primary);  // the next single failure
  CHECK(WaitForNewPrimary(*cluster, 0, primary) == backup);
  work.WaitForMore(100);
  work.Stop();
  work.Verify();
}

// 4. The runbook for a shard whose replicas all died: new servers at new addresses, the
// command `tessera status` prints, and the cluster serves the checkpoint again.
TEST_CASE("a lost shard is restored onto servers at new addresses with the command status prints",
          "[control][checkpoint]") {
  const std::string dir = TempDir("lost-runbook");
  auto cluster = Start(4, 2, 2, {"--checkpoint_dir=" + dir});
  std::unique_ptr<Client> c = testing::ConnectCoordinated(*cluster);
  TableConfig t{.name = "w", .kind = TableKind::kSparse, .dim = 2};
  t.optimizer.kind = OptimizerKind::kAdd;
  TESSERA_REQUIRE_OK(c->CreateTable(t).status());
  std::vector<uint64_t> keys(300);
  for (uint64_t k = 0; k < keys.size(); ++k) keys[k] = k;
  const std::vector<float> ones(keys.size() * 2, 1.0f);
  for (int i = 0; i < 3; ++i) TESSERA_REQUIRE_OK(c->PushSparse("w", keys, ones));
  const std::string coordinator = cluster->coordinator_address();
  auto [code, out] =
      RunCommand(absl::StrCat(TESSERA_CLI_BINARY, " checkpoint create --coordinator=", coordinator,
                              " --checkpoint_dir=", dir, " 2>&1"));
  INFO(out);
  REQUIRE(code == 0);
  TESSERA_REQUIRE_OK(c->PushSparse("w", keys, ones));  // after the checkpoint: will be gone
  absl::StatusOr<std::vector<int>> lost = cluster->ReplicasOf(0);
  REQUIRE(lost.ok());
  for (int i : *lost) cluster->KillServer(i);
  WaitForShardState(*cluster, 0, "lost");
  for (int i = 0; i < 2; ++i) REQUIRE(cluster->AddServer().ok());  // new addresses

  std::tie(code, out) =
      RunCommand(absl::StrCat(TESSERA_CLI_BINARY, " status --coordinator=", coordinator));
  INFO(out);
  REQUIRE(code == 0);
  CHECK(absl::StrContains(out, "shard 0: LOST"));
  std::string recover;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (absl::StartsWith(line, "tessera checkpoint restore")) recover = std::string(line);
  }
  REQUIRE_FALSE(recover.empty());
  // Tried as written (with this build's binary for `tessera`).
  std::tie(code, out) = RunCommand(
      absl::StrCat(TESSERA_CLI_BINARY, recover.substr(std::string("tessera").size()), " 2>&1"));
  INFO(out);
  REQUIRE(code == 0);
  CHECK(absl::StrContains(out, "lost shard(s) 0 serve again"));
  TESSERA_REQUIRE_OK(cluster->WaitForReplicas(absl::Seconds(60)));
  std::unique_ptr<Client> reader = testing::ConnectCoordinated(*cluster);
  std::vector<float> got(keys.size() * 2);
  TESSERA_REQUIRE_OK(reader->PullSparse("w", keys, absl::MakeSpan(got)));
  CHECK(got == std::vector<float>(got.size(), 3.0f));  // the checkpoint's values, every shard
  // And it survives the loss of a replica again.
  absl::StatusOr<std::vector<int>> now = cluster->ReplicasOf(0);
  REQUIRE(now.ok());
  cluster->KillServer((*now)[0]);
  WaitForNewPrimary(*cluster, 0, (*now)[0]);
  TESSERA_REQUIRE_OK(reader->PullSparse("w", keys, absl::MakeSpan(got)));
  CHECK(got == std::vector<float>(got.size(), 3.0f));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// The other runbook beyond R-1 failures: every LIVE replica of a shard was only paused (a VM
// pause): the shard is LOST while they are silent and comes back with them by itself.
TEST_CASE("a shard whose replicas were all paused past their leases comes back with them",
          "[control][fault]") {
  auto cluster = Start(2, 2, 1);
  Workload work(*cluster);
  work.Start();
  work.WaitForMore(100);
  work.Stop();
  absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
  REQUIRE(replicas.ok());
  for (int i : *replicas) kill(cluster->pid(i), SIGSTOP);
  WaitForShardState(*cluster, 0, "lost");
  for (int i : *replicas) kill(cluster->pid(i), SIGCONT);
  WaitForShardState(*cluster, 0, "serving");
  TESSERA_REQUIRE_OK(cluster->WaitForReplicas(absl::Seconds(30)));
  work.Verify();  // every acknowledged push is back
}

// 5. A coordinator paused longer than a lease restarts the leases when it can hear again,
// instead of expiring every server first.
TEST_CASE("a coordinator paused for longer than a lease fails nothing over", "[control][fault]") {
  auto cluster = Start(4, 2, 2);
  Workload work(*cluster);
  work.Start();
  work.WaitForMore(100);
  absl::StatusOr<uint64_t> epoch = cluster->Epoch();
  REQUIRE(epoch.ok());
  kill(cluster->coordinator_pid(), SIGSTOP);
  absl::SleepFor(absl::Seconds(4));  // (the fault: a 4 s pause, four leases)
  kill(cluster->coordinator_pid(), SIGCONT);
  work.WaitForMore(200);
  // Well past a lease after it resumed: still the same map, no failover, nothing lost.
  const absl::Time until = absl::Now() + absl::Seconds(2);
  while (absl::Now() < until) {
    absl::StatusOr<uint64_t> now = cluster->Epoch();
    REQUIRE(now.ok());
    REQUIRE(*now == *epoch);
    absl::SleepFor(absl::Milliseconds(50));
  }
  CHECK(Metric(cluster->coordinator_metrics_port(), "tessera_coordinator_failovers_total") == 0);
  CHECK(Metric(cluster->coordinator_metrics_port(), "tessera_coordinator_stalls_total") >= 1);
  work.Stop();
  work.Verify();
}

// 6. A failed write of the coordinator's state is visible and publishes nothing; writes run
// off the RPC threads (the map is answered while one blocks).
TEST_CASE("a failed write of the coordinator's state is an error someone sees, never a change",
          "[control][fault]") {
  const std::string dir = TempDir("persist-fault");
  const std::string fault = dir + "/fault";
  auto cluster = Start(3, 2, 1, {}, {"--testing_persist_fault_file=" + fault});
  const std::string coordinator = cluster->coordinator_address();
  // Replaced in one rename: a file truncated and then written would let the coordinator read
  // it empty in between (no fault), write its state and leave nothing for "block" to block.
  auto write_fault = [&](const char* mode) {
    std::ofstream(fault + ".tmp") << mode;
    std::filesystem::rename(fault + ".tmp", fault);
  };
  absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
  REQUIRE(replicas.ok());
  absl::StatusOr<uint64_t> epoch = cluster->Epoch();
  REQUIRE(epoch.ok());
  write_fault("fail");
  cluster->KillServer((*replicas)[1]);  // the backup: its removal cannot be written
  const absl::Time until = absl::Now() + absl::Seconds(3);
  while (absl::Now() < until) {
    absl::StatusOr<uint64_t> now = cluster->Epoch();
    REQUIRE(now.ok());
    REQUIRE(*now == *epoch);  // nothing unwritten is published
    absl::SleepFor(absl::Milliseconds(50));
  }
  CHECK(Metric(cluster->coordinator_metrics_port(), "tessera_coordinator_persist_failures_total") >
        0);
  absl::StatusOr<bool> healthy =
      CheckHealth(coordinator, absl::Seconds(5), "tessera.v1.Coordinator");
  REQUIRE(healthy.ok());
  CHECK_FALSE(*healthy);
  auto [code, out] =
      RunCommand(absl::StrCat(TESSERA_CLI_BINARY, " status --coordinator=", coordinator));
  INFO(out);
  CHECK(absl::StrContains(out, "CANNOT WRITE ITS STATE"));
  // A write that blocks holds no RPC: once heartbeats go unanswered (the loop is stuck in the
  // write), the map is still answered.
  write_fault("block");
  auto stub = v1::Coordinator::NewStub(
      grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials()));
  bool blocked = false;
  for (int i = 0; i < 50 && !blocked; ++i) {  // (bounded: every batch writes while failing)
    v1::HeartbeatRequest req;
    // (An old incarnation of a known server: refused when processed, so it changes nothing.)
    req.mutable_status()->set_address(cluster->addresses()[(*replicas)[0]]);
    req.mutable_status()->set_incarnation(1);
    v1::HeartbeatResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
    blocked = stub->Heartbeat(&ctx, req, &resp).error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  }
  REQUIRE(blocked);
  for (int i = 0; i < 5; ++i) TESSERA_REQUIRE_OK(cluster->Epoch().status());
  // The disk recovers: the change is made, and the coordinator is healthy again.
  std::filesystem::remove(fault);
  WaitUntilRemoved(*cluster, 0, (*replicas)[1]);
  TESSERA_REQUIRE_OK(cluster->WaitForReplicas(absl::Seconds(30)));  // the spare joined
  healthy = CheckHealth(coordinator, absl::Seconds(5), "tessera.v1.Coordinator");
  REQUIRE(healthy.ok());
  CHECK(*healthy);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// 7. With a shard lost, new clients connect, the healthy shards serve (table configs come from
// any shard), and calls touching the lost shard fail at once, naming it.
TEST_CASE(
    "with a shard lost, clients connect and use the healthy shards, and the lost one fails fast",
    "[control]") {
  auto cluster = Start(2, 1, 2);
  {
    std::unique_ptr<Client> creator = testing::ConnectCoordinated(*cluster);
    TableConfig s{.name = "s", .kind = TableKind::kSparse, .dim = 2};
    s.optimizer.kind = OptimizerKind::kAdd;
    TESSERA_REQUIRE_OK(creator->CreateTable(s).status());
    TableConfig d{
        .name = "d", .kind = TableKind::kDense, .dense_size = 4096, .dense_block_elems = 256};
    d.optimizer.kind = OptimizerKind::kAdd;
    TESSERA_REQUIRE_OK(creator->CreateTable(d).status());
    std::vector<uint64_t> all(100);
    for (uint64_t k = 0; k < all.size(); ++k) all[k] = k;
    TESSERA_REQUIRE_OK(creator->PushSparse("s", all, std::vector<float>(200, 2)));
    TESSERA_REQUIRE_OK(creator->PushDense("d", 0, std::vector<float>(4096, 3)));
  }
  absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
  REQUIRE(replicas.ok());
  cluster->KillServer((*replicas)[0]);
  WaitForShardState(*cluster, 0, "lost");

  // A client that did not create the tables connects and reads the healthy shard.
  std::unique_ptr<Client> c = testing::ConnectCoordinated(*cluster);
  const std::vector<uint64_t> healthy = KeysOf(*c, 1, 100), lost = KeysOf(*c, 0, 100);
  REQUIRE_FALSE(healthy.empty());
  std::vector<float> got(healthy.size() * 2);
  TESSERA_REQUIRE_OK(c->PullSparse("s", healthy, absl::MakeSpan(got)));
  CHECK(got == std::vector<float>(got.size(), 2.0f));
  TESSERA_REQUIRE_OK(c->PushSparse("s", healthy, std::vector<float>(got.size(), 1)));
  absl::StatusOr<TableConfig> config = c->GetTableConfig("d");
  TESSERA_REQUIRE_OK(config.status());
  CHECK(config->dense_size == 4096);
  // The dense blocks on shard 1, and one on shard 0.
  bool saw_healthy_block = false, saw_lost_block = false;
  for (uint64_t b = 0; b < 16; ++b) {
    std::vector<float> block(256);
    const absl::Status st = c->PullDense("d", b * 256, absl::MakeSpan(block));
    if (st.ok()) {
      saw_healthy_block = true;
      CHECK(block == std::vector<float>(256, 3.0f));
    } else {
      saw_lost_block = true;
      CHECK(st.code() == absl::StatusCode::kUnavailable);
      CHECK(absl::StrContains(st.message(), "shard 0 is LOST"));
    }
  }
  CHECK(saw_healthy_block);
  CHECK(saw_lost_block);
  // Calls touching the lost shard fail at once (not after the 30 s of retries).
  const absl::Time start = absl::Now();
  std::vector<float> lost_rows(lost.size() * 2);
  const absl::Status st = c->PullSparse("s", lost, absl::MakeSpan(lost_rows));
  CHECK(absl::Now() - start < absl::Seconds(5));
  CHECK(st.code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(st.message(), "shard 0 is LOST"));
  const absl::Status push = c->PushSparse("s", lost, std::vector<float>(lost.size() * 2, 1));
  CHECK(push.code() == absl::StatusCode::kUnavailable);
  // `tessera status` says what is lost.
  auto [code, out] = RunCommand(
      absl::StrCat(TESSERA_CLI_BINARY, " status --coordinator=", cluster->coordinator_address()));
  INFO(out);
  CHECK(code == 0);
  CHECK(absl::StrContains(out, "shard 0: LOST"));
  CHECK(absl::StrContains(out, "holder"));
}

}  // namespace
}  // namespace tessera
