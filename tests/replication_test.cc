// Fault tests of replication and failover (docs/replication.md): real tessera-coordinator and
// tessera-server processes, real SIGKILL and SIGSTOP. Four clients push `add` updates all the
// time; at the end every value must equal exactly the sum of the acknowledged pushes.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/admin.h"
#include "client/client.h"
#include "common/grpc_channel.h"
#include "common/http_get.h"
#include "common/prom_text.h"
#include "proto/cluster.grpc.pb.h"
#include "proto/tessera.grpc.pb.h"
#include "tests/test_cluster.h"
#include "tests/workload.h"

namespace tessera {
namespace {

using testing::RunCommand;
using testing::Workload;
constexpr uint32_t kDim = testing::kWorkloadDim;

using testing::WaitForNewPrimary;
using testing::WaitUntilRemoved;

std::unique_ptr<LocalCluster> StartReplicated(uint32_t servers, uint32_t replication,
                                              uint32_t shards,
                                              std::vector<std::string> server_args = {}) {
  server_args.insert(server_args.begin(), "--heartbeat_ms=100");
  return testing::StartCoordinated(servers, replication, shards, {"--lease_ms=1000"},
                                   std::move(server_args));
}

std::unique_ptr<Client> ConnectTo(const LocalCluster& cluster) {
  return testing::ConnectCoordinated(cluster);
}

void WaitForReplicas(LocalCluster& cluster) {
  TESSERA_REQUIRE_OK(cluster.WaitForReplicas(absl::Seconds(60)));
}

// Kills replica `index` (0: the primary) of alternating shards at 10 points while four clients
// push; each victim is restarted empty and catches up before the next kill.
void KillAtTenPoints(int index, uint32_t seed) {
  auto cluster = StartReplicated(4, 2, 2);
  Workload work(*cluster, {.clients = 4});
  work.Start();
  std::mt19937 rng(seed);
  for (int k = 0; k < 10; ++k) {
    work.WaitForMore(20 + rng() % 200);
    const uint32_t shard = k % 2;
    absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(shard);
    REQUIRE(replicas.ok());
    REQUIRE(replicas->size() == 2);
    const int victim = (*replicas)[index];
    cluster->KillServer(victim);
    if (index == 0) WaitForNewPrimary(*cluster, shard, victim);
    // Service goes on with one replica (a primary waits out a dead backup's lease first).
    work.WaitForMore(20);
    TESSERA_REQUIRE_OK(cluster->RestartServer(victim));  // comes back empty, catches up
    WaitForReplicas(*cluster);
  }
  work.WaitForMore(50);
  work.Stop();
  work.Verify();
}

TEST_CASE("R=2: killing primaries at 10 points loses and doubles no acknowledged push",
          "[replication][fault]") {
  KillAtTenPoints(0, 7);
}

TEST_CASE("R=2: killing backups at 10 points loses and doubles no acknowledged push",
          "[replication][fault]") {
  KillAtTenPoints(1, 11);
}

TEST_CASE("R=2: a primary paused past its lease is fenced when it resumes",
          "[replication][fault]") {
  auto cluster = StartReplicated(2, 2, 1);
  Workload work(*cluster, {.clients = 4});
  work.Start();
  work.WaitForMore(100);
  absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
  REQUIRE(replicas.ok());
  const int paused = (*replicas)[0];
  absl::StatusOr<uint64_t> old_epoch = cluster->Epoch();
  REQUIRE(old_epoch.ok());
  kill(cluster->pid(paused), SIGSTOP);
  const int promoted = WaitForNewPrimary(*cluster, 0, paused);
  work.WaitForMore(50);  // the promoted backup serves
  work.Stop();

  // A client that still has the old map writes to the old primary as it resumes.
  kill(cluster->pid(paused), SIGCONT);
  auto stub = v1::ParameterServer::NewStub(
      MakeChannel(cluster->addresses()[paused], testing::JobCredentials(*cluster)));
  v1::PushSparseRequest req;
  req.mutable_header()->set_shard_map_epoch(*old_epoch);
  req.set_table("sum");
  req.set_key_type(v1::KEY_TYPE_UINT64);
  req.set_dtype(v1::DTYPE_FLOAT32);
  req.set_dim(kDim);
  req.set_num_keys(1);
  const uint64_t key = 5;
  const float values[kDim] = {1000, 1000};
  req.set_keys(&key, sizeof(key));
  req.set_values(values, sizeof(values));
  req.mutable_id()->set_client_id(0xfe4ce);
  req.mutable_id()->set_sequence(1);
  v1::PushResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  const grpc::Status s = stub->PushSparse(&ctx, req, &resp);
  INFO("the resumed old primary answered: " << s.error_code() << " " << s.error_message());
  CHECK_FALSE(s.ok());
  // Nothing of that write is visible at the new primary, and every acknowledged push is.
  work.Verify();
  // The old primary rejoins as a backup (a snapshot replaces what it applied on its own).
  WaitForReplicas(*cluster);
  absl::StatusOr<std::vector<int>> after = cluster->ReplicasOf(0);
  REQUIRE(after.ok());
  CHECK((*after)[0] == promoted);
  CHECK(std::find(after->begin(), after->end(), paused) != after->end());
  work.Verify();
}

TEST_CASE(
    "the data plane serves while the coordinator is down, and failover works after its restart",
    "[replication][fault]") {
  auto cluster = StartReplicated(4, 2, 2);
  Workload work(*cluster, {.clients = 4});
  work.Start();
  work.WaitForMore(100);
  cluster->KillCoordinator();
  work.WaitForMore(300);  // no coordinator: pushes go on with the map everyone has
  TESSERA_REQUIRE_OK(cluster->RestartCoordinator());
  work.WaitForMore(100);
  absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(1);
  INFO(replicas.status().ToString());
  REQUIRE(replicas.ok());
  const int victim = (*replicas)[0];
  cluster->KillServer(victim);
  WaitForNewPrimary(*cluster, 1, victim);
  work.WaitForMore(100);
  work.Stop();
  work.Verify();
}

TEST_CASE("R=3 survives two simultaneous kills", "[replication][fault]") {
  auto cluster = StartReplicated(6, 3, 2);
  Workload work(*cluster, {.clients = 4});
  work.Start();
  work.WaitForMore(150);
  absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
  REQUIRE(replicas.ok());
  REQUIRE(replicas->size() == 3);
  const int primary = (*replicas)[0], backup = (*replicas)[1];
  cluster->KillServer(primary);
  cluster->KillServer(backup);
  const int promoted = WaitForNewPrimary(*cluster, 0, primary);
  CHECK(promoted == (*replicas)[2]);
  work.WaitForMore(100);
  work.Stop();
  work.Verify();
}

// One shard of R=2 and a spare: the cluster, the shard's replicas (primary first) and the
// spare's index.
struct WithSpare {
  std::unique_ptr<LocalCluster> cluster;
  std::vector<int> replicas;
  int spare = 0;
};
WithSpare StartWithSpare() {
  WithSpare w{StartReplicated(3, 2, 1), {}, 0};
  absl::StatusOr<std::vector<int>> replicas = w.cluster->ReplicasOf(0);
  REQUIRE(replicas.ok());
  REQUIRE(replicas->size() == 2);
  w.replicas = *replicas;
  while (std::find(w.replicas.begin(), w.replicas.end(), w.spare) != w.replicas.end()) ++w.spare;
  return w;
}

// The health service per role: a primary serves data and replication, a backup only
// replication, a spare neither; the coordinator serves its own service.
TEST_CASE("health answers per service and role", "[replication]") {
  WithSpare w = StartWithSpare();  // (named members: lambdas below capture them)
  std::unique_ptr<LocalCluster>& cluster = w.cluster;
  const std::vector<int>& replicas = w.replicas;
  const int spare = w.spare;
  auto serving = [&](int server, const char* service) {
    // Roles reach the health service a heartbeat after the map changes: wait for a stable
    // answer (bounded) rather than sleeping.
    absl::StatusOr<bool> s = CheckHealth(cluster->addresses()[server], absl::Seconds(5), service);
    INFO("server " << server << " " << service << ": " << s.status().ToString());
    REQUIRE(s.ok());
    return *s;
  };
  auto await = [&](int server, const char* service, bool want) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (serving(server, service) != want && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    return serving(server, service);
  };
  const char* data = "tessera.v1.ParameterServer";
  const char* replication = "tessera.v1.Replication";
  CHECK(await(replicas[0], data, true));
  CHECK(await(replicas[0], replication, true));
  CHECK_FALSE(await(replicas[1], data, false));
  CHECK(await(replicas[1], replication, true));
  CHECK_FALSE(await(spare, data, false));
  CHECK_FALSE(await(spare, replication, false));
  for (int i = 0; i < 3; ++i) CHECK(serving(i, ""));  // every process serves
  absl::StatusOr<bool> coordinator =
      CheckHealth(cluster->coordinator_address(), absl::Seconds(5), "tessera.v1.Coordinator");
  REQUIRE(coordinator.ok());
  CHECK(*coordinator);
  // The primary dies: its backup now serves data, and the spare joins as the new backup.
  cluster->KillServer(replicas[0]);
  CHECK(await(replicas[1], data, true));
  CHECK(await(spare, replication, true));
}

TEST_CASE("a spare replaces a lost replica while pushes go on and can then be promoted",
          "[replication][fault]") {
  auto [cluster, replicas, spare] = StartWithSpare();
  Workload work(*cluster, {.clients = 4});
  work.Start();
  work.WaitForMore(200);
  cluster->KillServer(replicas[1]);  // the backup
  WaitUntilRemoved(*cluster, 0, replicas[1]);
  WaitForReplicas(*cluster);  // the spare caught up while pushes went on
  absl::StatusOr<std::vector<int>> now = cluster->ReplicasOf(0);
  REQUIRE(now.ok());
  REQUIRE(now->size() == 2);
  CHECK((*now)[1] == spare);
  work.WaitForMore(100);
  cluster->KillServer((*now)[0]);  // the primary: the former spare takes over
  CHECK(WaitForNewPrimary(*cluster, 0, (*now)[0]) == spare);
  work.WaitForMore(100);
  work.Stop();
  work.Verify();

  // The failover is visible in the coordinator's metrics and in `tessera status`.
  absl::StatusOr<std::string> text = HttpGet(cluster->coordinator_metrics_port(), "/metrics");
  REQUIRE(text.ok());
  CHECK(SumSamples(ParsePromText(*text), "tessera_coordinator_failovers_total") == 1);
  const auto [code, out] = RunCommand(
      absl::StrCat(TESSERA_CLI_BINARY, " status --coordinator=", cluster->coordinator_address(),
                   " --json", testing::CliSecurityFlags(*cluster)));
  INFO(out);
  CHECK(code == 0);
  CHECK(out.find("\"failovers\":1") != std::string::npos);
  CHECK(out.find(absl::StrCat("\"address\":\"", cluster->addresses()[spare],
                              "\",\"role\":\"primary\"")) != std::string::npos);
  CHECK(out.find("\"name\":\"sum\"") != std::string::npos);
}

TEST_CASE("replica metrics show the role and the lag of every backup", "[replication]") {
  auto cluster = StartReplicated(2, 2, 1);
  Workload work(*cluster, {.clients = 1});
  work.Start();
  work.WaitForMore(50);
  work.Stop();
  absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
  REQUIRE(replicas.ok());
  auto scrape = [&](int server) {
    absl::StatusOr<std::string> text = HttpGet(cluster->metrics_ports()[server], "/metrics");
    REQUIRE(text.ok());
    return ParsePromText(*text);
  };
  // A server learns its role from its next heartbeat (every 100 ms here).
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  std::vector<PromSample> b = scrape((*replicas)[1]);
  while (SumSamples(b, "tessera_server_replica_role", {{"role", "backup"}}) != 1 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
    b = scrape((*replicas)[1]);
  }
  const std::vector<PromSample> p = scrape((*replicas)[0]);
  CHECK(SumSamples(p, "tessera_server_replica_role", {{"role", "primary"}}) == 1);
  CHECK(SumSamples(b, "tessera_server_replica_role", {{"role", "backup"}}) == 1);
  CHECK(SumSamples(p, "tessera_replica_live", {{"backup", cluster->addresses()[(*replicas)[1]]}}) ==
        1);
  // Every acknowledged push is on the backup: its LSN equals the primary's, no lag.
  CHECK(SumSamples(p, "tessera_replica_lag_updates") == 0);
  CHECK(SumSamples(p, "tessera_server_lsn") == SumSamples(b, "tessera_server_lsn"));
  CHECK(SumSamples(p, "tessera_server_lsn") >= 50);
}

TEST_CASE("a checkpoint restored into a replicated cluster reaches the backups",
          "[replication][checkpoint]") {
  char tmpl[] = "/tmp/tessera-repl-ckpt-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  auto cluster = StartReplicated(4, 2, 2, {"--checkpoint_dir=" + dir});
  std::unique_ptr<Client> c = ConnectTo(*cluster);
  TableConfig t{.name = "w", .kind = TableKind::kSparse, .dim = 2};
  t.optimizer.kind = OptimizerKind::kAdd;
  TESSERA_REQUIRE_OK(c->CreateTable(t).status());
  std::vector<uint64_t> keys(100);
  for (uint64_t k = 0; k < keys.size(); ++k) keys[k] = k;
  const std::vector<float> ones(keys.size() * 2, 1.0f);
  auto expect_all = [&](float want) {
    std::vector<float> got(keys.size() * 2);
    TESSERA_REQUIRE_OK(c->PullSparse("w", keys, absl::MakeSpan(got)));
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("value " << i);
      REQUIRE(got[i] == want);
    }
  };
  for (int i = 0; i < 3; ++i) TESSERA_REQUIRE_OK(c->PushSparse("w", keys, ones));
  absl::StatusOr<std::vector<std::string>> primaries =
      PrimaryAddresses(cluster->coordinator_address());
  REQUIRE(primaries.ok());
  CheckpointDriverOptions d;
  d.dir = dir;
  d.servers = *primaries;
  absl::StatusOr<CheckpointRoundResult> round = RunCheckpointRound(d);
  INFO(round.status().ToString());
  REQUIRE(round.ok());
  for (int i = 0; i < 2; ++i) TESSERA_REQUIRE_OK(c->PushSparse("w", keys, ones));
  expect_all(5);
  absl::StatusOr<RestoreResult> restored = RestoreCluster(dir, *primaries, 1, round->id);
  INFO(restored.status().ToString());
  REQUIRE(restored.ok());
  expect_all(3);
  // The restore was acknowledged once the backups held it: kill both primaries.
  for (uint32_t shard = 0; shard < 2; ++shard) {
    absl::StatusOr<std::vector<int>> r = cluster->ReplicasOf(shard);
    REQUIRE(r.ok());
    cluster->KillServer((*r)[0]);
    WaitForNewPrimary(*cluster, shard, (*r)[0]);
  }
  expect_all(3);
  TESSERA_REQUIRE_OK(c->PushSparse("w", keys, ones));
  expect_all(4);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

TEST_CASE("replication and coordinator endpoints refuse bad and foreign input clearly",
          "[replication][validation]") {
  auto cluster = StartReplicated(2, 2, 1);
  absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
  REQUIRE(replicas.ok());
  const std::string backup = cluster->addresses()[(*replicas)[1]];
  const std::string primary = cluster->addresses()[(*replicas)[0]];
  auto channel = grpc::CreateChannel(backup, grpc::InsecureChannelCredentials());
  auto repl = v1::Replication::NewStub(channel);
  absl::StatusOr<uint64_t> epoch = cluster->Epoch();
  REQUIRE(epoch.ok());
  {  // a batch from someone who is not the shard's primary (at an epoch the backup has seen)
    v1::ReplicateRequest req;
    req.set_epoch(1);
    req.set_shard(0);
    req.set_primary("127.0.0.1:1");
    req.set_first_lsn(1);
    v1::ReplicateResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status st = repl->Replicate(&ctx, req, &resp);
    CHECK(st.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    CHECK(st.error_message().find("the sender is not the primary") != std::string::npos);
  }
  {  // bytes that are not a ReplicateRequest
    grpc::GenericStub generic(channel);
    const std::string junk = "\xff\xff\xff\xff\x0f garbage";
    grpc::Slice slice(junk);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::ClientContext ctx;
    absl::Notification done;
    grpc::Status st;
    generic.UnaryCall(&ctx, "/tessera.v1.Replication/Replicate", grpc::StubOptions(), &request,
                      &response, [&](grpc::Status s) {
                        st = std::move(s);
                        done.Notify();
                      });
    done.WaitForNotification();
    CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(st.error_message().find("malformed ReplicateRequest") != std::string::npos);
  }
  {  // a snapshot chunk from a stranger
    v1::InstallSnapshotRequest req;
    req.set_epoch(1);
    req.set_primary("127.0.0.1:1");
    v1::InstallSnapshotResponse resp;
    grpc::ClientContext ctx;
    CHECK(repl->InstallSnapshot(&ctx, req, &resp).error_code() ==
          grpc::StatusCode::FAILED_PRECONDITION);
  }
  {  // a client request to the backup is re-routed, not served
    auto ps = v1::ParameterServer::NewStub(channel);
    v1::ListTablesRequest req;
    req.mutable_header()->set_shard_map_epoch(1);
    v1::ListTablesResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status st = ps->ListTables(&ctx, req, &resp);
    CHECK(st.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    CHECK(st.error_message().find("not the primary") != std::string::npos);
    CHECK(ctx.GetServerTrailingMetadata().count("tessera-reroute") == 1);
  }
  {  // a request routed with a newer map than the primary's
    auto ps = v1::ParameterServer::NewStub(
        grpc::CreateChannel(primary, grpc::InsecureChannelCredentials()));
    v1::ListTablesRequest req;
    req.mutable_header()->set_shard_map_epoch(*epoch + 100);
    v1::ListTablesResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status st = ps->ListTables(&ctx, req, &resp);
    CHECK(st.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    CHECK(st.error_message().find("still at epoch") != std::string::npos);
  }
  auto coord = v1::Coordinator::NewStub(
      grpc::CreateChannel(cluster->coordinator_address(), grpc::InsecureChannelCredentials()));
  {
    v1::HeartbeatRequest req;  // no address
    v1::HeartbeatResponse resp;
    grpc::ClientContext ctx;
    CHECK(coord->Heartbeat(&ctx, req, &resp).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    v1::ReportCaughtUpRequest req;  // not the primary
    req.set_shard(0);
    req.set_primary(backup);
    req.set_replica(primary);
    v1::ReportCaughtUpResponse resp;
    grpc::ClientContext ctx;
    CHECK(coord->ReportCaughtUp(&ctx, req, &resp).error_code() ==
          grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    v1::ReportReplicaFailedRequest req;  // a stranger (not the primary) demoting the primary
    req.set_shard(0);
    req.set_primary(backup);
    req.set_replica(primary);
    v1::ReportReplicaFailedResponse resp;
    grpc::ClientContext ctx;
    CHECK(coord->ReportReplicaFailed(&ctx, req, &resp).error_code() ==
          grpc::StatusCode::FAILED_PRECONDITION);
  }
  // Nothing of that changed the cluster: still complete, still serving.
  TESSERA_REQUIRE_OK(cluster->WaitForReplicas(absl::Seconds(10)));
  Workload work(*cluster, {.clients = 1});
  work.Start();
  work.WaitForMore(20);
  work.Stop();
  work.Verify();
}

TEST_CASE("BSP step sums survive a failover between accumulation and apply", "[replication][bsp]") {
  auto cluster = StartReplicated(2, 2, 1);
  std::unique_ptr<Client> c = ConnectTo(*cluster);
  TableConfig t{.name = "w", .kind = TableKind::kSparse, .dim = 2};
  t.optimizer.kind = OptimizerKind::kAdd;
  TESSERA_REQUIRE_OK(c->CreateTable(t).status());
  const std::vector<uint64_t> keys = {1, 2, 3};
  for (float g : {1.0f, 3.0f}) {
    TESSERA_REQUIRE_OK(c->PushSparse("w", keys, std::vector<float>(6, g), {.accumulate_step = 1}));
  }
  absl::StatusOr<std::vector<int>> r = cluster->ReplicasOf(0);
  REQUIRE(r.ok());
  cluster->KillServer((*r)[0]);
  WaitForNewPrimary(*cluster, 0, (*r)[0]);
  TESSERA_REQUIRE_OK(c->ApplyStep("w", 1, 0.5f));
  TESSERA_REQUIRE_OK(c->ApplyStep("w", 1, 0.5f));  // a retry changes nothing
  std::vector<float> got(6);
  TESSERA_REQUIRE_OK(c->PullSparse("w", keys, absl::MakeSpan(got)));
  CHECK(got == std::vector<float>(6, 2.0f));
}

TEST_CASE("BSP step sums travel in a catch-up snapshot", "[replication][bsp]") {
  auto cluster = StartReplicated(3, 2, 1);  // one spare
  std::unique_ptr<Client> c = ConnectTo(*cluster);
  TableConfig t{.name = "w", .kind = TableKind::kSparse, .dim = 2};
  t.optimizer.kind = OptimizerKind::kAdd;
  TESSERA_REQUIRE_OK(c->CreateTable(t).status());
  const std::vector<uint64_t> keys = {1, 2, 3};
  TESSERA_REQUIRE_OK(c->PushSparse("w", keys, std::vector<float>(6, 4.0f), {.accumulate_step = 1}));
  absl::StatusOr<std::vector<int>> r = cluster->ReplicasOf(0);
  REQUIRE(r.ok());
  cluster->KillServer((*r)[1]);  // the backup: the spare catches up from a snapshot
  WaitUntilRemoved(*cluster, 0, (*r)[1]);
  WaitForReplicas(*cluster);
  cluster->KillServer((*r)[0]);  // the primary: the former spare takes over
  WaitForNewPrimary(*cluster, 0, (*r)[0]);
  TESSERA_REQUIRE_OK(c->ApplyStep("w", 1, 0.5f));
  std::vector<float> got(6);
  TESSERA_REQUIRE_OK(c->PullSparse("w", keys, absl::MakeSpan(got)));
  CHECK(got == std::vector<float>(6, 2.0f));
}

TEST_CASE("a promoted backup holds bit-identical weights and optimizer slots",
          "[replication][fault]") {
  auto cluster = StartReplicated(2, 2, 1);
  std::unique_ptr<LocalCluster> reference = testing::StartCluster(1);
  std::unique_ptr<Client> rep = ConnectTo(*cluster);
  std::unique_ptr<Client> ref = testing::Connect(*reference);
  std::vector<TableConfig> tables;
  for (OptimizerKind kind : {OptimizerKind::kAdam, OptimizerKind::kFtrl, OptimizerKind::kAdagrad}) {
    TableConfig t{
        .name = absl::StrCat("s", static_cast<int>(kind)), .kind = TableKind::kSparse, .dim = 4};
    t.optimizer.kind = kind;
    t.initializer = {.kind = InitializerKind::kNormal, .seed = 3};
    tables.push_back(t);
  }
  TableConfig dense{
      .name = "dense", .kind = TableKind::kDense, .dense_size = 1000, .dense_block_elems = 256};
  dense.optimizer.kind = OptimizerKind::kAdam;
  tables.push_back(dense);
  for (const TableConfig& t : tables) {
    TESSERA_REQUIRE_OK(rep->CreateTable(t).status());
    TESSERA_REQUIRE_OK(ref->CreateTable(t).status());
  }
  std::mt19937_64 rng(5);
  std::normal_distribution<float> grad(0, 1);
  auto step = [&] {
    for (const TableConfig& t : tables) {
      if (t.kind == TableKind::kDense) {
        std::vector<float> g(t.dense_size);
        for (float& x : g) x = grad(rng);
        TESSERA_REQUIRE_OK(rep->PushDense(t.name, 0, g));
        TESSERA_REQUIRE_OK(ref->PushDense(t.name, 0, g));
        continue;
      }
      std::vector<uint64_t> keys;
      for (uint64_t k = 0; k < 200; ++k) {
        if (rng() % 3 == 0) keys.push_back(k);
      }
      std::vector<float> g(keys.size() * t.dim);
      for (float& x : g) x = grad(rng);
      TESSERA_REQUIRE_OK(rep->PushSparse(t.name, keys, g));
      TESSERA_REQUIRE_OK(ref->PushSparse(t.name, keys, g));
    }
  };
  for (int i = 0; i < 20; ++i) step();
  absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(0);
  REQUIRE(replicas.ok());
  cluster->KillServer((*replicas)[0]);
  WaitForNewPrimary(*cluster, 0, (*replicas)[0]);
  // More steps on the promoted backup: its optimizer slots must be the old primary's too.
  for (int i = 0; i < 20; ++i) step();
  for (const TableConfig& t : tables) {
    std::vector<float> a, b;
    if (t.kind == TableKind::kDense) {
      a.resize(t.dense_size);
      b.resize(t.dense_size);
      TESSERA_REQUIRE_OK(rep->PullDense(t.name, 0, absl::MakeSpan(a)));
      TESSERA_REQUIRE_OK(ref->PullDense(t.name, 0, absl::MakeSpan(b)));
    } else {
      std::vector<uint64_t> keys(200);
      for (uint64_t k = 0; k < 200; ++k) keys[k] = k;
      a.resize(keys.size() * t.dim);
      b.resize(keys.size() * t.dim);
      TESSERA_REQUIRE_OK(rep->PullSparse(t.name, keys, absl::MakeSpan(a)));
      TESSERA_REQUIRE_OK(ref->PullSparse(t.name, keys, absl::MakeSpan(b)));
    }
    INFO("table " << t.name);
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
        FAIL(absl::StrFormat("table %s value %u: %.9g after failover, %.9g on one server", t.name,
                             i, a[i], b[i]));
      }
    }
  }
}

// Kills shard 0's primary at three points, each once the table "sum"'s lifecycle counter
// `progress` grew by `step` (the lifecycle at work) and the workload pushed more; each victim
// restarts at its old address, empty, and catches up by snapshot.
void KillPrimariesDuring(LocalCluster& cluster, Workload& work, Client& admin,
                         uint64_t TableStatus::*counter, uint64_t step) {
  auto progress = [&] {
    absl::StatusOr<TableStatus> t = admin.DescribeTable("sum");
    return t.ok() ? (*t).*counter : 0;
  };
  for (int k = 0; k < 3; ++k) {
    const uint64_t before = progress();
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (progress() < before + step) {
      REQUIRE(absl::Now() < deadline);
      absl::SleepFor(absl::Milliseconds(20));  // (polling the condition above)
    }
    work.WaitForMore(20);
    absl::StatusOr<std::vector<int>> replicas = cluster.ReplicasOf(0);
    REQUIRE(replicas.ok());
    const int victim = (*replicas)[0];
    cluster.KillServer(victim);
    WaitForNewPrimary(cluster, 0, victim);
    work.WaitForMore(20);
    TESSERA_REQUIRE_OK(cluster.RestartServer(victim));
    WaitForReplicas(cluster);
  }
}

// Kills shard 0's primary and returns the table "sum" as the promoted backup holds it (with
// its digest).
TableStatus FailOverSum(LocalCluster& cluster, Client& admin) {
  absl::StatusOr<std::vector<int>> replicas = cluster.ReplicasOf(0);
  REQUIRE(replicas.ok());
  cluster.KillServer((*replicas)[0]);
  WaitForNewPrimary(cluster, 0, (*replicas)[0]);
  absl::StatusOr<TableStatus> promoted = admin.DescribeTable("sum", /*digests=*/true);
  TESSERA_REQUIRE_OK(promoted.status());
  return *promoted;
}

// The table once it holds at most `rows` rows (in RAM): the lifecycle caught up.
TableStatus WaitForRowsAtMost(Client& admin, const std::string& table, uint64_t rows) {
  absl::StatusOr<TableStatus> t;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (t = admin.DescribeTable(table); t.ok() && t->rows > rows; t = admin.DescribeTable(table)) {
    REQUIRE(absl::Now() < deadline);
    absl::SleepFor(absl::Milliseconds(20));  // (polling the condition above)
  }
  TESSERA_REQUIRE_OK(t.status());
  return *t;
}

// Once the table's lifecycle has nothing left to do (its digest unchanged over a few rounds),
// an acknowledged push to another table of the shard (not one the workload verifies) carries
// every entry before it to the backup; returns the table's digest then (shard 0's).
uint64_t QuietDigest(Client& admin, const std::string& table) {
  uint64_t last = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (;;) {
    absl::StatusOr<TableStatus> t = admin.DescribeTable(table, /*digests=*/true);
    TESSERA_REQUIRE_OK(t.status());
    if (t->digests[0] == last) break;
    last = t->digests[0];
    REQUIRE(absl::Now() < deadline);
    absl::SleepFor(absl::Milliseconds(300));  // (three lifecycle rounds between readings)
  }
  TableConfig barrier{.name = "barrier", .kind = TableKind::kDense, .dense_size = 4};
  barrier.optimizer.kind = OptimizerKind::kAdd;
  TESSERA_REQUIRE_OK(admin.CreateTable(barrier).status());
  TESSERA_REQUIRE_OK(admin.PushDense("barrier", 0, std::vector<float>(4, 1.0f)));
  absl::StatusOr<TableStatus> held = admin.DescribeTable(table, /*digests=*/true);
  TESSERA_REQUIRE_OK(held.status());
  return held->digests[0];
}

TEST_CASE("R=2: primaries killed while capacity eviction runs lose no acknowledged push",
          "[replication][fault][lifecycle]") {
  // The workload's 256 keys are pushed all the time (high LFU counts); a third client streams
  // new keys, each pushed once, so the table stays over its capacity and the primary's
  // lifecycle task keeps evicting those. Primaries are killed at three points; each victim
  // comes back empty and catches up by snapshot (rows and their lifecycle metadata). Every
  // acknowledged push to the workload's keys must survive: an eviction that diverged between
  // replicas, or chose a hot key, shows as LOST.
  constexpr uint64_t kCapacity = 1500;
  auto cluster = StartReplicated(2, 2, 1);
  Workload work(*cluster,
                {.clients = 2,
                 .sum_lifecycle = {.capacity_rows = kCapacity, .victims = EvictionVictims::kLfu}});
  work.Start();
  // Every workload key pushed a few times first (about 19 each): with LFU a key seen once is
  // as good a victim as a streamed one, and the oldest of those goes first.
  work.WaitForMore(200);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> streamed{0};
  std::thread stream([&] {
    std::unique_ptr<Client> c = ConnectTo(*cluster);
    uint64_t next = 1'000'000;
    while (!stop) {
      std::vector<uint64_t> keys(200);
      for (uint64_t& k : keys) k = next++;
      // (Errors across a failover are fine: these keys are not verified.)
      if (c->PushSparse("sum", keys, std::vector<float>(keys.size() * kDim, 1.0f)).ok()) {
        streamed += keys.size();
      }
    }
  });
  std::unique_ptr<Client> admin = ConnectTo(*cluster);
  KillPrimariesDuring(*cluster, work, *admin, &TableStatus::evicted_capacity, 2 * kCapacity);
  stop = true;
  stream.join();
  work.Stop();
  work.Verify();
  // Quiet: the table comes down to its capacity (nothing adds rows any more), then a push
  // acknowledged by both replicas carries every removal before it to the backup, and a
  // failover keeps exactly the rows the primary held.
  const TableStatus t = WaitForRowsAtMost(*admin, "sum", kCapacity);
  INFO(absl::StrFormat("%u keys streamed, %u evicted by capacity here", streamed.load(),
                       t.evicted_capacity));
  CHECK(streamed.load() > 4 * kCapacity);
  TESSERA_REQUIRE_OK(admin->PushSparse("sum", {5'000'000}, std::vector<float>(kDim, 1.0f)));
  const uint64_t digest = QuietDigest(*admin, "sum");
  absl::StatusOr<TableStatus> held = admin->DescribeTable("sum");
  TESSERA_REQUIRE_OK(held.status());
  const TableStatus promoted = FailOverSum(*cluster, *admin);
  CHECK(promoted.rows == held->rows);
  CHECK(promoted.rows <= kCapacity + 1);
  // The promoted backup's state is its primary's last acknowledged one, row for row.
  CHECK(promoted.digests[0] == digest);
  work.Verify();
}

TEST_CASE("R=2: primaries killed while rows move to disk and others are evicted lose nothing",
          "[replication][fault][lifecycle][tier]") {
  // As above with a disk tier instead of a capacity: the stream keeps the RAM over its
  // capacity, so the primary's task keeps demoting (the workload's keys too, now and then: they
  // come back at their next push). Nothing is ever removed, so every acknowledged push, to the
  // workload's keys and to the streamed ones, must be readable at the end, from RAM or disk;
  // and a promoted backup holds the rows of its primary in the same tiers. The same stream also
  // goes to a table with an LRU capacity, so removals run beside the demotions.
  constexpr uint64_t kRam = 1500;
  auto cluster = StartReplicated(2, 2, 1);
  Workload work(*cluster, {.clients = 2, .sum_lifecycle = {.tier_ram_rows = kRam}});
  {
    TableConfig evicting{.name = "evicting", .kind = TableKind::kSparse, .dim = kDim};
    evicting.optimizer.kind = OptimizerKind::kAdd;
    evicting.lifecycle = {.capacity_rows = kRam};
    TESSERA_REQUIRE_OK(ConnectTo(*cluster)->CreateTable(evicting).status());
  }
  work.Start();
  work.WaitForMore(200);
  std::atomic<bool> stop{false};
  absl::Mutex acked_mu;
  std::vector<uint64_t> acked;  // streamed keys whose push was acknowledged (once each)
  std::thread stream([&] {
    std::unique_ptr<Client> c = ConnectTo(*cluster);
    uint64_t next = 1'000'000;
    while (!stop) {
      std::vector<uint64_t> keys(200);
      for (uint64_t& k : keys) k = next++;
      // (A push that failed across a failover may or may not be applied: not verified.)
      if (c->PushSparse("sum", keys, std::vector<float>(keys.size() * kDim, 1.0f)).ok()) {
        absl::MutexLock lock(&acked_mu);
        acked.insert(acked.end(), keys.begin(), keys.end());
      }
      (void)c->PushSparse("evicting", keys, std::vector<float>(keys.size() * kDim, 1.0f));
    }
  });
  std::unique_ptr<Client> admin = ConnectTo(*cluster);
  KillPrimariesDuring(*cluster, work, *admin, &TableStatus::demoted, 2 * kRam);
  stop = true;
  stream.join();
  work.Stop();
  work.Verify();
  std::vector<uint64_t> streamed;
  {
    absl::MutexLock lock(&acked_mu);
    streamed = acked;
  }
  CHECK(streamed.size() > 4 * kRam);
  // Quiet: the RAM comes down to its capacity; then a push acknowledged by both replicas
  // carries every demotion before it to the backup, and a failover keeps both tiers as they are.
  CHECK(WaitForRowsAtMost(*admin, "sum", kRam).disk_rows > 0);
  const uint64_t evicting_digest = QuietDigest(*admin, "evicting");
  const uint64_t digest = QuietDigest(*admin, "sum");
  absl::StatusOr<TableStatus> held = admin->DescribeTable("sum");
  TESSERA_REQUIRE_OK(held.status());
  const TableStatus promoted = FailOverSum(*cluster, *admin);
  // Row for row, tier for tier (the digest covers both): its primary's last acknowledged state.
  CHECK(promoted.digests[0] == digest);
  absl::StatusOr<TableStatus> evicting = admin->DescribeTable("evicting", /*digests=*/true);
  TESSERA_REQUIRE_OK(evicting.status());
  CHECK(evicting->evicted_capacity > 0);
  CHECK(evicting->digests[0] == evicting_digest);
  INFO(absl::StrFormat("%u keys streamed; held %u in RAM and %u on disk, promoted %u and %u",
                       streamed.size(), held->rows, held->disk_rows, promoted.rows,
                       promoted.disk_rows));
  CHECK(promoted.rows == held->rows);
  CHECK(promoted.disk_rows == held->disk_rows);
  work.Verify();
  // Every acknowledged streamed key reads exactly its one push, wherever its row is.
  std::vector<float> values(streamed.size() * kDim);
  TESSERA_REQUIRE_OK(admin->PullSparse("sum", streamed, absl::MakeSpan(values)));
  size_t wrong = 0;
  for (float v : values) wrong += v != 1.0f ? 1 : 0;
  CHECK(wrong == 0);
}
}  // namespace
}  // namespace tessera
