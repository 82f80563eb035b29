// Online serving with real processes (docs/online_serving.md): tessera-serving replicas follow
// a training cluster's checkpoints directly or through another replica's stream; every version
// a replica reports equals the trainers' weights at that checkpoint bit for bit; rollback;
// a relay killed with SIGKILL while versions keep coming.
#include <signal.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/admin.h"
#include "client/serving_client.h"
#include "tests/test_cluster.h"

namespace tessera {
namespace {

constexpr uint32_t kDim = 8;
constexpr uint64_t kDenseSize = 5000;

std::string NewDir(const std::string& what) {
  static int n = 0;
  const std::string dir = absl::StrCat(std::filesystem::temp_directory_path().string(),
                                       "/tessera-serving-test-", getpid(), "-", what, "-", n++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::string ServingBinary() { return TESSERA_SERVING_BINARY; }

struct Replica {
  Spawned process;
  std::string address;
  std::unique_ptr<ServingClient> client;
};

Replica StartReplica(const std::vector<std::string>& source_flags, const std::string& log_dir,
                     const std::string& name, int port = 0) {
  // (Below the ephemeral range: a replica killed can come back at its address.)
  if (port == 0) port = PickPort();
  std::vector<std::string> args = {ServingBinary(), absl::StrCat("--port=", port),
                                   "--metrics_port=-1", "--poll_ms=50",
                                   "--upstream_timeout_ms=1500"};
  args.insert(args.end(), source_flags.begin(), source_flags.end());
  absl::StatusOr<Spawned> p =
      SpawnDaemon(args, name, absl::StrCat(log_dir, "/", name, ".log"), absl::Seconds(30));
  INFO(p.status().ToString());
  REQUIRE(p.ok());
  Replica r;
  r.process = *p;
  r.address = absl::StrCat("127.0.0.1:", p->port);
  absl::StatusOr<std::unique_ptr<ServingClient>> c =
      ServingClient::Connect({.replicas = {r.address}});
  REQUIRE(c.ok());
  r.client = std::move(*c);
  return r;
}

// Waits (bounded) until the replica serves `version`; returns its status then.
ServingStatusInfo WaitForVersion(Replica& r, uint64_t version) {
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  absl::StatusOr<ServingStatusInfo> s;
  while (absl::Now() < deadline) {
    s = r.client->Status(0);
    if (s.ok() && s->version >= version) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  INFO(r.address << ": " << (s.ok() ? s->last_error : s.status().ToString()));
  REQUIRE(s.ok());
  REQUIRE(s->version == version);
  return *s;
}

uint64_t Checkpoint(const LocalCluster& cluster, const std::string& dir) {
  CheckpointDriverOptions o;
  o.dir = dir;
  o.servers = cluster.addresses();
  absl::StatusOr<CheckpointRoundResult> r = RunCheckpointRound(o);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  return r->id;
}

// What the trainers hold now, read by pulls: the reference a version must equal.
struct Weights {
  std::vector<float> sparse;
  std::vector<float> dense;
};

Weights Pull(Client& c, const std::vector<uint64_t>& keys) {
  Weights w{std::vector<float>(keys.size() * kDim), std::vector<float>(kDenseSize)};
  REQUIRE(c.PullSparse("emb", keys, absl::MakeSpan(w.sparse)).ok());
  REQUIRE(c.PullDense("w", 0, absl::MakeSpan(w.dense)).ok());
  return w;
}

// Lookups at `version` equal `want` bit for bit; keys in `absent` have no row.
void CheckServes(Replica& r, uint64_t version, const std::vector<uint64_t>& keys,
                 const Weights& want, const std::vector<uint64_t>& absent = {}) {
  std::vector<float> got(keys.size() * kDim);
  std::vector<bool> found;
  absl::StatusOr<uint64_t> v = r.client->Lookup("emb", keys, absl::MakeSpan(got), version, &found);
  INFO(v.status().ToString());
  REQUIRE(v.ok());
  CHECK(*v == version);
  size_t differ = 0;
  for (size_t i = 0; i < got.size(); ++i) differ += std::memcmp(&got[i], &want.sparse[i], 4) != 0;
  CHECK(differ == 0);
  for (uint64_t k : absent) {
    const size_t i = std::find(keys.begin(), keys.end(), k) - keys.begin();
    REQUIRE(i < keys.size());
    CHECK_FALSE(found[i]);
  }
  std::vector<float> dense;
  REQUIRE(r.client->LookupDense("w", &dense, version).ok());
  REQUIRE(dense.size() == kDenseSize);
  CHECK(std::memcmp(dense.data(), want.dense.data(), kDenseSize * 4) == 0);
}

void PushRound(Client& c, const std::vector<uint64_t>& keys, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> g(-1, 1);
  std::vector<uint64_t> some;
  for (uint64_t k : keys) {
    if (rng() % 3 == 0) some.push_back(k);
  }
  std::vector<float> grads(some.size() * kDim);
  for (float& x : grads) x = g(rng);
  REQUIRE(c.PushSparse("emb", some, grads).ok());
  std::vector<float> dense(kDenseSize / 2);
  for (float& x : dense) x = g(rng);
  REQUIRE(c.PushDense("w", rng() % (kDenseSize / 2), dense).ok());
}

TEST_CASE("serving replicas follow checkpoints and equal the trainers bit for bit") {
  const std::string dir = NewDir("ckpt");
  const std::string logs = NewDir("logs");
  std::unique_ptr<LocalCluster> cluster = testing::StartCluster(2, {"--checkpoint_dir=" + dir});
  std::unique_ptr<Client> c = testing::Connect(*cluster);
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = kDim};
  emb.optimizer.kind = OptimizerKind::kAdagrad;
  emb.initializer = {.kind = InitializerKind::kNormal, .seed = 3};
  REQUIRE(c->CreateTable(emb).ok());
  TableConfig w{
      .name = "w", .kind = TableKind::kDense, .dense_size = kDenseSize, .dense_block_elems = 512};
  w.optimizer.kind = OptimizerKind::kAdam;
  REQUIRE(c->CreateTable(w).ok());
  std::vector<uint64_t> keys;
  for (uint64_t i = 0; i < 4000; ++i) keys.push_back(i * 0x9e3779b97f4a7c15ULL + 1);
  // Keys the trainers never saw: the replica answers the initializer's values, as a pull does.
  std::vector<uint64_t> lookup_keys = keys;
  for (uint64_t i = 0; i < 50; ++i) lookup_keys.push_back(~i);

  PushRound(*c, keys, 1);
  REQUIRE(Checkpoint(*cluster, dir) == 1);
  // (The pulls below create the never-seen keys' rows on the trainers: after the checkpoint.)
  const Weights at1 = Pull(*c, lookup_keys);
  Replica root = StartReplica({"--checkpoint_dir=" + dir}, logs, "root");
  ServingStatusInfo s1 = WaitForVersion(root, 1);
  CheckServes(root, 1, lookup_keys, at1, {~uint64_t{0}, ~uint64_t{1}});
  CHECK(s1.source == "checkpoint_dir " + dir);
  CHECK(s1.staleness_seconds >= 0);

  SECTION("increments with removed rows, a relayed replica, rollback") {
    PushRound(*c, keys, 2);
    const std::vector<uint64_t> removed(keys.begin(), keys.begin() + 100);
    REQUIRE(c->RemoveRows("emb", removed).ok());
    REQUIRE(Checkpoint(*cluster, dir) == 2);    // incremental: dirty rows and tombstones
    const Weights at2 = Pull(*c, lookup_keys);  // (recreates the removed rows: after the cut)
    WaitForVersion(root, 2);
    Weights at2_served = at2;
    // Removed rows answer the initializer's values: what the pull that recreated them read.
    CheckServes(root, 2, lookup_keys, at2_served, removed);

    // A replica whose --max_memory_bytes cannot hold the tables (two copies of 4,000 rows of 8
    // floats and 5,000 dense floats) refuses the version before holding it, says why, serves
    // nothing (UNAVAILABLE) and stays up.
    Replica small =
        StartReplica({"--checkpoint_dir=" + dir, "--max_memory_bytes=100000"}, logs, "small");
    absl::StatusOr<ServingStatusInfo> refused;
    for (const absl::Time until = absl::Now() + absl::Seconds(30); absl::Now() < until;) {
      refused = small.client->Status(0);
      if (refused.ok() && !refused->last_error.empty()) break;
      absl::SleepFor(absl::Milliseconds(20));
    }
    REQUIRE(refused.ok());
    INFO(refused->last_error);
    CHECK(absl::StrContains(refused->last_error, "--max_memory_bytes=100000"));
    CHECK(refused->version == 0);
    std::vector<float> none(kDim);
    CHECK(small.client->Lookup("emb", {keys[0]}, absl::MakeSpan(none)).status().code() ==
          absl::StatusCode::kUnavailable);
    CHECK(kill(small.process.pid, 0) == 0);

    Replica relayed = StartReplica({"--upstream=" + root.address}, logs, "relayed");
    ServingStatusInfo r2 = WaitForVersion(relayed, 2);  // bootstrapped from the relay's root
    CHECK(r2.tables.size() == 2);
    ServingStatusInfo root2 = *root.client->Status(0);
    for (size_t t = 0; t < r2.tables.size(); ++t) {
      CHECK(r2.tables[t].name == root2.tables[t].name);
      CHECK(r2.tables[t].digest == root2.tables[t].digest);
      CHECK(r2.tables[t].rows == root2.tables[t].rows);
    }
    CheckServes(relayed, 2, lookup_keys, at2, removed);

    PushRound(*c, keys, 3);
    REQUIRE(Checkpoint(*cluster, dir) == 3);
    const Weights at3 = Pull(*c, lookup_keys);
    WaitForVersion(root, 3);
    ServingStatusInfo r3 = WaitForVersion(relayed, 3);  // a delta through the stream
    CheckServes(relayed, 3, lookup_keys, at3);
    // (The relay sent versions 1 and 2 as its records, then 3.)
    CHECK(r3.held_versions == std::vector<uint64_t>{1, 2, 3});

    // Rollback to an older version held, lookups answering throughout; resume.
    REQUIRE(*relayed.client->Rollback(0, 2) == 2);
    CheckServes(relayed, 2, lookup_keys, at2);
    std::vector<float> row(kDim);
    CHECK(*relayed.client->Lookup("emb", {keys[500]}, absl::MakeSpan(row)) == 2);
    CHECK(relayed.client->Rollback(0, 9).status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(*relayed.client->Resume(0) == 3);
    CHECK(*relayed.client->Lookup("emb", {keys[500]}, absl::MakeSpan(row)) == 3);

    // The relay rolled back: a new version waits there (queued, not relayed) and the replica
    // behind it keeps its stream (heartbeats) for longer than its 1.5 s silence limit, then
    // gets the version once the relay resumes.
    REQUIRE(*root.client->Rollback(0, 2) == 2);
    PushRound(*c, keys, 4);
    REQUIRE(Checkpoint(*cluster, dir) == 4);
    const Weights at4 = Pull(*c, lookup_keys);
    const absl::Time quiet_until = absl::Now() + absl::Seconds(3);
    while (absl::Now() < quiet_until && root.client->Status(0)->newest_version < 4) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    absl::SleepFor(absl::Seconds(3));  // (what is tested: nothing happens for longer than 1.5 s)
    ServingStatusInfo waiting = *relayed.client->Status(0);
    CHECK(waiting.version == 3);
    CHECK(waiting.last_error.empty());
    CHECK(*root.client->Resume(0) == 4);
    WaitForVersion(relayed, 4);
    CheckServes(relayed, 4, lookup_keys, at4);
  }

  SECTION("a replica with two upstreams goes on when its relay is killed") {
    Replica second_root = StartReplica({"--checkpoint_dir=" + dir}, logs, "second-root");
    WaitForVersion(second_root, 1);
    Replica leaf =
        StartReplica({"--upstream=" + root.address + "," + second_root.address}, logs, "leaf");
    WaitForVersion(leaf, 1);
    kill(root.process.pid, SIGKILL);
    REQUIRE(WaitChild(root.process.pid, absl::Seconds(10)) == -1);
    for (uint64_t v = 2; v <= 3; ++v) {
      PushRound(*c, keys, 10 + v);
      REQUIRE(Checkpoint(*cluster, dir) == v);
      const Weights want = Pull(*c, lookup_keys);
      ServingStatusInfo st = WaitForVersion(leaf, v);
      CheckServes(leaf, v, lookup_keys, want);
      // Lookups balanced over a dead and a live replica still answer.
      absl::StatusOr<std::unique_ptr<ServingClient>> both = ServingClient::Connect(
          {.replicas = {root.address, leaf.address}, .rpc_timeout_ms = 2000});
      REQUIRE(both.ok());
      std::vector<float> row(kDim);
      for (int i = 0; i < 4; ++i) {
        absl::StatusOr<uint64_t> got = (*both)->Lookup("emb", {keys[i]}, absl::MakeSpan(row));
        INFO(got.status().ToString());
        CHECK(got.ok());
      }
      CHECK(st.last_error.find(root.address) != std::string::npos);  // it left the dead one
    }
    // The replica killed and restarted at its address (systemd's Restart=): it comes back
    // empty, takes the newest version in full, and follows; a client made before the kill
    // reaches it again.
    kill(leaf.process.pid, SIGKILL);
    REQUIRE(WaitChild(leaf.process.pid, absl::Seconds(10)) == -1);
    const int port = leaf.process.port;
    PushRound(*c, keys, 20);
    REQUIRE(Checkpoint(*cluster, dir) == 4);
    Replica again = StartReplica({"--upstream=" + second_root.address}, logs, "leaf-again", port);
    WaitForVersion(again, 4);
    PushRound(*c, keys, 21);
    REQUIRE(Checkpoint(*cluster, dir) == 5);
    const Weights at5 = Pull(*c, lookup_keys);
    WaitForVersion(again, 5);
    CheckServes(leaf, 5, lookup_keys, at5);  // (the old client, the same address)
    kill(second_root.process.pid, SIGTERM);
    CHECK(WaitChild(second_root.process.pid, absl::Seconds(20)) == 0);
  }
}

// The tables of the fault tests: "emb" (Adagrad) and "w" (SGD).
void CreateTables(Client& c) {
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = kDim};
  emb.optimizer.kind = OptimizerKind::kAdagrad;
  REQUIRE(c.CreateTable(emb).ok());
  TableConfig w{
      .name = "w", .kind = TableKind::kDense, .dense_size = kDenseSize, .dense_block_elems = 512};
  REQUIRE(c.CreateTable(w).ok());
}

TEST_CASE(
    "trainer primaries killed while versions are published: replicas reach the next version bit "
    "for bit",
    "[fault]") {
  const std::string dir = NewDir("ckpt-r2");
  const std::string logs = NewDir("logs-r2");
  std::unique_ptr<LocalCluster> cluster = testing::StartCoordinated(
      4, 2, 2, {"--lease_ms=1000"}, {"--heartbeat_ms=100", "--checkpoint_dir=" + dir});
  std::unique_ptr<Client> c = testing::ConnectCoordinated(*cluster);
  CreateTables(*c);
  std::vector<uint64_t> keys;
  for (uint64_t i = 0; i < 3000; ++i) keys.push_back(i * 0x9e3779b97f4a7c15ULL + 7);
  const Credentials creds = testing::JobCredentials(*cluster);
  auto round = [&]() -> absl::StatusOr<uint64_t> {
    absl::StatusOr<std::vector<std::string>> primaries =
        PrimaryAddresses(cluster->coordinator_address(), creds);
    if (!primaries.ok()) return primaries.status();
    absl::StatusOr<CheckpointRoundResult> r = RunCheckpointRound({.dir = dir,
                                                                  .servers = *primaries,
                                                                  .rpc_timeout = absl::Seconds(20),
                                                                  .credentials = creds});
    if (!r.ok()) return r.status();
    return r->id;
  };
  PushRound(*c, keys, 1);
  REQUIRE(round().ok());
  Replica root = StartReplica({"--checkpoint_dir=" + dir}, logs, "root");
  Replica leaf = StartReplica({"--upstream=" + root.address}, logs, "leaf");
  WaitForVersion(root, 1);
  WaitForVersion(leaf, 1);
  std::mt19937_64 rng(5);
  for (uint32_t shard = 0; shard < 2; ++shard) {
    PushRound(*c, keys, 10 + shard);
    absl::StatusOr<std::vector<int>> replicas = cluster->ReplicasOf(shard);
    REQUIRE(replicas.ok());
    const int primary = (*replicas)[0];
    // The primary dies while a round runs (before, during or after its part is written).
    absl::StatusOr<uint64_t> during = absl::UnknownError("not run");
    std::thread publisher([&] { during = round(); });
    absl::SleepFor(absl::Milliseconds(rng() % 30));
    cluster->KillServer(primary);
    publisher.join();
    testing::WaitForNewPrimary(*cluster, shard, primary);
    // The next round succeeds on the promoted backup (its part in full).
    absl::StatusOr<uint64_t> next = absl::UnknownError("not run");
    for (int attempt = 0; attempt < 40 && !next.ok(); ++attempt) {
      next = round();
      if (!next.ok()) absl::SleepFor(absl::Milliseconds(250));
    }
    INFO(next.status().ToString());
    REQUIRE(next.ok());
    const Weights want = Pull(*c, keys);
    WaitForVersion(root, *next);
    WaitForVersion(leaf, *next);
    CheckServes(root, *next, keys, want);
    CheckServes(leaf, *next, keys, want);
  }
}

TEST_CASE("tessera-serving checks tokens and roles on every method", "[security]") {
  const std::string dir = NewDir("ckpt-auth");
  const std::string logs = NewDir("logs-auth");
  const std::string tokens = dir + "/tokens";
  std::ofstream(tokens) << "admin admin-0123456789abcdef\nworker worker-0123456789abcdef\n"
                        << "reader reader-0123456789abcdef\nserver server-0123456789abcdef\n";
  Replica r =
      StartReplica({"--checkpoint_dir=" + dir, "--auth_token_file=" + tokens}, logs, "secured");
  auto client = [&](const std::string& token) {
    return *ServingClient::Connect(
        {.replicas = {r.address}, .credentials = {.auth_token = token}, .max_attempts = 1});
  };
  std::vector<float> row(kDim);
  // No token, a wrong one: UNAUTHENTICATED before anything else (no version is served yet:
  // a lookup that got through would say UNAVAILABLE).
  for (const std::string& token : {std::string(), std::string("wrong-0123456789abcdef")}) {
    auto c = client(token);
    CHECK(c->Lookup("emb", {1}, absl::MakeSpan(row)).status().code() ==
          absl::StatusCode::kUnauthenticated);
    CHECK(c->Status(0).status().code() == absl::StatusCode::kUnauthenticated);
    CHECK(c->Rollback(0, 1).status().code() == absl::StatusCode::kUnauthenticated);
  }
  // Lookups: reader and worker; rollback and resume: admin only.
  for (const char* token : {"reader-0123456789abcdef", "worker-0123456789abcdef"}) {
    auto c = client(token);
    CHECK(c->Lookup("emb", {1}, absl::MakeSpan(row)).status().code() ==
          absl::StatusCode::kUnavailable);
    CHECK(c->Status(0).ok());
    CHECK(c->Rollback(0, 1).status().code() == absl::StatusCode::kPermissionDenied);
    CHECK(c->Resume(0).status().code() == absl::StatusCode::kPermissionDenied);
  }
  auto admin = client("admin-0123456789abcdef");
  CHECK(admin->Rollback(0, 1).status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(admin->Lookup("emb", {1}, absl::MakeSpan(row)).status().code() ==
        absl::StatusCode::kPermissionDenied);
  // A replica following this one presents its server token: it is let in (and a stranger's
  // replica, without one, is not: its source keeps failing).
  const std::string peer_tokens = dir + "/peer-tokens";
  std::ofstream(peer_tokens) << "server server-0123456789abcdef\n";
  Replica follower = StartReplica({"--upstream=" + r.address, "--auth_token_file=" + peer_tokens},
                                  logs, "follower");
  Replica stranger = StartReplica({"--upstream=" + r.address}, logs, "stranger");
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::string stranger_error;
  while (absl::Now() < deadline && stranger_error.empty()) {
    stranger_error = stranger.client->Status(0)->last_error;
    absl::SleepFor(absl::Milliseconds(50));
  }
  CHECK(stranger_error.find("UNAUTHENTICATED") != std::string::npos);
  absl::StatusOr<std::unique_ptr<ServingClient>> as_server = ServingClient::Connect(
      {.replicas = {follower.address}, .credentials = {.auth_token = "server-0123456789abcdef"}});
  REQUIRE(as_server.ok());
  absl::StatusOr<ServingStatusInfo> fs = (*as_server)->Status(0);
  REQUIRE(fs.ok());
  CHECK(fs->last_error.find("UNAUTHENTICATED") == std::string::npos);
}

TEST_CASE("tessera-serving refuses bad flags and bad lookups with clear errors") {
  const std::string logs = NewDir("bad");
  // No source, two sources: it does not start.
  for (const std::vector<std::string>& flags :
       {std::vector<std::string>{},
        std::vector<std::string>{"--checkpoint_dir=" + logs, "--upstream=127.0.0.1:1"}}) {
    std::vector<std::string> args = {ServingBinary(), "--port=0"};
    args.insert(args.end(), flags.begin(), flags.end());
    absl::StatusOr<Spawned> p = SpawnDaemon(args, "serving", logs + "/bad.log", absl::Seconds(20));
    CHECK_FALSE(p.ok());
  }
  // An empty checkpoint directory: it serves nothing yet, and says so.
  Replica r = StartReplica({"--checkpoint_dir=" + NewDir("empty")}, logs, "empty");
  std::vector<float> row(kDim);
  CHECK(r.client->Lookup("emb", {1}, absl::MakeSpan(row)).status().code() ==
        absl::StatusCode::kUnavailable);
  ServingStatusInfo s = *r.client->Status(0);
  CHECK(s.version == 0);
  CHECK(r.client->Rollback(0, 3).status().code() == absl::StatusCode::kFailedPrecondition);
}

// "What if the coordinator is the one that froze?" Serving does not ask it for anything:
// replicas answer throughout, a publication driver that knows the primaries publishes while
// it is stopped, and one that asks it (PrimaryAddresses) publishes again once it resumes.
TEST_CASE("a coordinator paused past its leases stops no lookup and no version", "[fault]") {
  const std::string dir = NewDir("ckpt-paused");
  const std::string logs = NewDir("logs-paused");
  std::unique_ptr<LocalCluster> cluster = testing::StartCoordinated(
      2, 1, 2, {"--lease_ms=1000"}, {"--heartbeat_ms=100", "--checkpoint_dir=" + dir});
  std::unique_ptr<Client> c = testing::ConnectCoordinated(*cluster);
  CreateTables(*c);
  std::vector<uint64_t> keys;
  for (uint64_t i = 0; i < 2000; ++i) keys.push_back(i * 0x9e3779b97f4a7c15ULL + 3);
  const Credentials creds = testing::JobCredentials(*cluster);
  absl::StatusOr<std::vector<std::string>> primaries =
      PrimaryAddresses(cluster->coordinator_address(), creds);
  REQUIRE(primaries.ok());
  auto round = [&](const std::vector<std::string>& servers) {
    absl::StatusOr<CheckpointRoundResult> r = RunCheckpointRound(
        {.dir = dir, .servers = servers, .rpc_timeout = absl::Seconds(20), .credentials = creds});
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    return r->id;
  };
  PushRound(*c, keys, 1);
  const uint64_t first = round(*primaries);
  Replica root = StartReplica({"--checkpoint_dir=" + dir}, logs, "root");
  // (Its answers limited to the 2,000 keys' rows: one key more is refused.)
  Replica leaf = StartReplica(
      {"--upstream=" + root.address, absl::StrCat("--max_response_bytes=", keys.size() * kDim * 4)},
      logs, "leaf");
  WaitForVersion(leaf, first);
  std::vector<uint64_t> one_more = keys;
  one_more.push_back(1);
  std::vector<float> too_many(one_more.size() * kDim);
  absl::StatusOr<uint64_t> refused = leaf.client->Lookup("emb", one_more, absl::MakeSpan(too_many));
  CHECK(refused.status().code() == absl::StatusCode::kResourceExhausted);

  REQUIRE(kill(cluster->coordinator_pid(), SIGSTOP) == 0);
  const absl::Time stopped = absl::Now();
  PushRound(*c, keys, 2);  // the data plane needs no coordinator
  const uint64_t during = round(*primaries);
  const Weights want = Pull(*c, keys);
  WaitForVersion(root, during);
  WaitForVersion(leaf, during);
  CheckServes(leaf, during, keys, want);
  // Lookups answer on: until the pause has outlasted two leases, and after.
  int answered = 0;
  while (absl::Now() < stopped + absl::Seconds(2.5) || answered < 10) {
    std::vector<float> got(keys.size() * kDim);
    absl::StatusOr<uint64_t> v = leaf.client->Lookup("emb", keys, absl::MakeSpan(got), 0);
    INFO(v.status().ToString());
    REQUIRE(v.ok());
    CHECK(*v == during);
    ++answered;
  }
  REQUIRE(kill(cluster->coordinator_pid(), SIGCONT) == 0);

  // Resumed (it restarts the leases instead of failing anyone over): a driver that asks it
  // publishes again, and the replicas follow bit for bit.
  PushRound(*c, keys, 3);
  absl::StatusOr<std::vector<std::string>> again =
      PrimaryAddresses(cluster->coordinator_address(), creds);
  INFO(again.status().ToString());
  REQUIRE(again.ok());
  CHECK(*again == *primaries);
  const uint64_t after = round(*again);
  const Weights now = Pull(*c, keys);
  WaitForVersion(leaf, after);
  CheckServes(leaf, after, keys, now);
}

}  // namespace
}  // namespace tessera
