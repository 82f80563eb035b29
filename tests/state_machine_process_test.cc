// Issue 14's findings through real processes (docs/state_machine.md): a push held while its
// table is dropped and re-created, garbage and oversized claims to every replication and
// coordinator method, huge names in errors.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "common/http_get.h"
#include "common/prom_text.h"
#include "common/wire.h"
#include "proto/cluster.grpc.pb.h"
#include "proto/tessera.grpc.pb.h"
#include "tests/test_cluster.h"

namespace tessera {
namespace {

std::unique_ptr<LocalCluster> StartPair(std::vector<std::string> server_args = {}) {
  server_args.insert(server_args.begin(), "--heartbeat_ms=100");
  auto cluster = testing::StartCoordinated(2, 2, 1, {"--lease_ms=1000"}, std::move(server_args));
  REQUIRE(cluster->WaitForReplicas(absl::Seconds(60)).ok());
  return cluster;
}

// Sends `bytes` to `method` of the server at `address`; returns the status.
grpc::Status RawCall(const std::string& address, const std::string& method,
                     const std::string& bytes) {
  grpc::GenericStub generic(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::Slice slice(bytes.data(), bytes.size());
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  absl::Notification done;
  grpc::Status st;
  generic.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
    st = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return st;
}

uint64_t ResidentBytesOf(pid_t pid) {
  std::ifstream statm("/proc/" + std::to_string(pid) + "/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * 4096;
}

TEST_CASE(
    "a push held while its table is dropped and re-created lands in the new table on "
    "every replica",
    "[state_machine][replication]") {
  // Finding 1: the primary applied it to the dropped table and the backup replayed it into
  // the new one; after a failover the value differed (0 vs 1), nothing logged.
  auto cluster = StartPair({"--testing_push_delay_ms=400"});
  auto client = testing::ConnectCoordinated(*cluster);
  TableConfig c{.name = "t", .kind = TableKind::kSparse, .dim = 1};
  c.optimizer.kind = OptimizerKind::kAdd;
  c.initializer.kind = InitializerKind::kZeros;
  REQUIRE(client->CreateTable(c).ok());
  const int primary = (*cluster->ReplicasOf(0))[0];
  absl::Status pushed;
  std::thread pusher([&] {
    const uint64_t key = 7;
    const float one = 1.0f;
    pushed = client->PushSparse("t", absl::MakeConstSpan(&key, 1), absl::MakeConstSpan(&one, 1));
  });
  // Wait until the push is inside the primary (its delay holds it there), then drop and
  // re-create the table under it.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (;;) {
    REQUIRE(absl::Now() < deadline);
    absl::StatusOr<std::string> text = HttpGet(cluster->metrics_ports()[primary], "/metrics");
    if (text.ok() &&
        SumSamples(ParsePromText(*text), "tessera_server_requests_in_flight", {}) >= 1) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  REQUIRE(client->DropTable("t").ok());
  REQUIRE(client->CreateTable(c).ok());
  pusher.join();
  REQUIRE(pushed.ok());  // (refused once by the primary, retried by the client, applied)
  const uint64_t key = 7;
  float before = -1, after = -1;
  REQUIRE(client->PullSparse("t", absl::MakeConstSpan(&key, 1), absl::MakeSpan(&before, 1)).ok());
  CHECK(before == 1.0f);
  cluster->KillServer(primary);
  testing::WaitForNewPrimary(*cluster, 0, primary);
  auto fresh = testing::ConnectCoordinated(*cluster);
  REQUIRE(fresh->PullSparse("t", absl::MakeConstSpan(&key, 1), absl::MakeSpan(&after, 1)).ok());
  CHECK(after == before);  // the promoted backup holds exactly what the primary held
  CHECK(cluster->Stop().ok());
}

TEST_CASE(
    "garbage to every replication and coordinator method gets INVALID_ARGUMENT naming "
    "the message, and claimed lengths allocate nothing",
    "[state_machine][validation]") {
  // Finding 7: gRPC's own deserialization answered UNIMPLEMENTED with no message. Finding 6:
  // 6 bytes of Replicate declaring a 512 MiB field made the server reserve 512 MiB.
  auto cluster = StartPair();
  const std::string server = cluster->addresses()[0];
  const std::string junk = "\xff\xff\xff\xff\x0f garbage";
  struct Method {
    std::string address, path, message;
  };
  const std::string coord = cluster->coordinator_address();
  const std::vector<Method> methods = {
      {server, "/tessera.v1.Replication/Replicate", "malformed ReplicateRequest"},
      {server, "/tessera.v1.Replication/InstallSnapshot",
       "malformed tessera.v1.InstallSnapshotRequest"},
      {coord, "/tessera.v1.Coordinator/Heartbeat", "malformed tessera.v1.HeartbeatRequest"},
      {coord, "/tessera.v1.Coordinator/GetClusterMap", "malformed tessera.v1.GetClusterMapRequest"},
      {coord, "/tessera.v1.Coordinator/ReportCaughtUp",
       "malformed tessera.v1.ReportCaughtUpRequest"},
      {coord, "/tessera.v1.Coordinator/ReportReplicaFailed",
       "malformed tessera.v1.ReportReplicaFailedRequest"},
      {coord, "/tessera.v1.Coordinator/GetClusterStatus",
       "malformed tessera.v1.GetClusterStatusRequest"},
      {coord, "/tessera.v1.Coordinator/JoinJob", "malformed tessera.v1.JoinJobRequest"},
      {coord, "/tessera.v1.Coordinator/Clock", "malformed tessera.v1.ClockRequest"},
      {coord, "/tessera.v1.Coordinator/AllReduce", "malformed tessera.v1.AllReduceRequest"},
      {coord, "/tessera.v1.Coordinator/RecoverShard", "malformed tessera.v1.RecoverShardRequest"},
      {coord, "/tessera.v1.Coordinator/FinishRecovery",
       "malformed tessera.v1.FinishRecoveryRequest"},
  };
  for (const Method& m : methods) {
    const grpc::Status st = RawCall(m.address, m.path, junk);
    INFO(m.path << ": " << st.error_code() << " " << st.error_message());
    CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(st.error_message().find(m.message) != std::string::npos);
  }
  // Field 3 (primary) declared 512 MiB long, in 6 bytes.
  const uint64_t rss = ResidentBytesOf(cluster->pid(0));
  const std::string claim = {'\x1a', '\x80', '\x80', '\x80', '\x80', '\x02'};
  for (int i = 0; i < 4; ++i) {
    const grpc::Status st = RawCall(server, "/tessera.v1.Replication/Replicate", claim);
    CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  }
  CHECK(ResidentBytesOf(cluster->pid(0)) < rss + (uint64_t{64} << 20));
  CHECK(cluster->Stop().ok());
}

TEST_CASE("a refusal naming a 100 KB table name stays small and carries the epoch",
          "[state_machine][validation]") {
  // Finding 7: errors echoed whole names; a default gRPC client then failed on the metadata
  // size instead of seeing NOT_FOUND.
  auto cluster = StartPair();
  const int primary = (*cluster->ReplicasOf(0))[0];
  auto stub = v1::ParameterServer::NewStub(
      grpc::CreateChannel(cluster->addresses()[primary], grpc::InsecureChannelCredentials()));
  v1::DescribeTableRequest req;
  req.set_table(std::string(100'000, 'n'));
  v1::DescribeTableResponse resp;
  // As a client does: re-route while the map is still settling (a backup turning LIVE bumps
  // the epoch), at most 100 times.
  grpc::Status st;
  std::unique_ptr<grpc::ClientContext> ctx;
  for (int attempt = 0; attempt < 100; ++attempt) {
    req.mutable_header()->set_shard_map_epoch(*cluster->Epoch());
    ctx = std::make_unique<grpc::ClientContext>();
    st = stub->DescribeTable(ctx.get(), req, &resp);
    if (ctx->GetServerTrailingMetadata().count(kRerouteMetadataKey) == 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  INFO(st.error_message().substr(0, 300));
  CHECK(st.error_code() == grpc::StatusCode::NOT_FOUND);
  CHECK(st.error_message().size() < 2048);
  CHECK(st.error_message().find("100000 bytes") != std::string::npos);
  CHECK(ctx->GetServerTrailingMetadata().count(kEpochMetadataKey) == 1);
  CHECK(cluster->Stop().ok());
}

// The join epoch of `address`'s entry in shard 0 of the coordinator's map (0: none).
uint64_t JoinEpochOf(const LocalCluster& cluster, const std::string& address) {
  auto coord = v1::Coordinator::NewStub(
      grpc::CreateChannel(cluster.coordinator_address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GetClusterMapResponse resp;
  REQUIRE(coord->GetClusterMap(&ctx, v1::GetClusterMapRequest(), &resp).ok());
  for (const v1::Replica& r : resp.map().shards(0).replicas()) {
    if (r.address() == address) return r.join_epoch();
  }
  return 0;
}

TEST_CASE(
    "a backup that refuses an entry is FAILED, JOINING again while it is re-synced, and LIVE "
    "with every acknowledged push",
    "[state_machine][replication]") {
  // Finding 2 through processes: a backup started with a lower limit than its primary's. It
  // refuses the push and acknowledges nothing; the primary has the coordinator make it
  // JOINING again (a new entry: neither counted nor promotable while it is re-synced) and
  // snapshots it back.
  auto cluster = StartPair();
  const std::vector<int> replicas = *cluster->ReplicasOf(0);
  const int backup = replicas[1];
  const std::string backup_address = cluster->addresses()[backup];
  const uint64_t join_initial = JoinEpochOf(*cluster, backup_address);
  REQUIRE(cluster->RestartServer(backup, {"--heartbeat_ms=100", "--max_keys_per_request=2"}).ok());
  // The restarted process gets an entry of its own (a new join) once the coordinator sees it.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (JoinEpochOf(*cluster, backup_address) == join_initial && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  REQUIRE(cluster->WaitForReplicas(absl::Seconds(60)).ok());
  const uint64_t join_before = JoinEpochOf(*cluster, backup_address);
  REQUIRE(join_before > join_initial);
  std::unique_ptr<Client> client = testing::ConnectCoordinated(*cluster);
  TableConfig t{.name = "t", .kind = TableKind::kSparse, .dim = 1};
  t.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE(client->CreateTable(t).ok());
  const std::vector<uint64_t> keys = {1, 2, 3};
  REQUIRE(client->PushSparse("t", keys, std::vector<float>{1, 2, 3}).ok());
  // Re-synced: LIVE again, under a new entry (the old one was made JOINING).
  REQUIRE(cluster->WaitForReplicas(absl::Seconds(60)).ok());
  CHECK(JoinEpochOf(*cluster, backup_address) > join_before);
  absl::StatusOr<std::string> metrics = HttpGet(cluster->metrics_ports()[replicas[0]], "/metrics");
  REQUIRE(metrics.ok());
  CHECK(SumSamples(ParsePromText(*metrics), "tessera_server_backup_failures_total") >= 1);
  // The primary dies: the re-synced backup holds the push.
  cluster->KillServer(replicas[0]);
  REQUIRE(testing::WaitForNewPrimary(*cluster, 0, replicas[0]) == backup);
  for (uint64_t k : keys) {  // (one at a time: this server takes at most 2 keys a request)
    float got = 0;
    absl::Status st = client->PullSparse("t", {k}, absl::MakeSpan(&got, 1));
    INFO(st.ToString());
    REQUIRE(st.ok());
    CHECK(got == static_cast<float>(k));
  }
  CHECK(cluster->Stop().ok());
}

}  // namespace
}  // namespace tessera
