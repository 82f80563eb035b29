// Checkpoints with real tessera-server processes: bit-exact round trips of every optimizer's
// state, incremental chains, kill -9 during writes, N -> M restores and corrupted files.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "client/admin.h"
#include "common/http_get.h"
#include "common/prom_text.h"
#include "proto/checkpoint.pb.h"
#include "proto/tessera.grpc.pb.h"
#include "storage/checkpoint_store.h"
#include "tests/test_cluster.h"

namespace tessera {
namespace {

using testing::Connect;

constexpr OptimizerKind kAll[] = {
    OptimizerKind::kSgd,  OptimizerKind::kMomentum, OptimizerKind::kAdagrad, OptimizerKind::kAdam,
    OptimizerKind::kFtrl, OptimizerKind::kAdd,      OptimizerKind::kAssign};
constexpr uint32_t kDim = 3;
constexpr uint64_t kDenseSize = 20011;

std::string NewDir() {
  static int n = 0;
  const std::string dir = absl::StrCat(std::filesystem::temp_directory_path().string(),
                                       "/tessera-ckpt-test-", getpid(), "-", n++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::unique_ptr<LocalCluster> Start(uint32_t n, const std::string& dir,
                                    std::vector<std::string> extra = {}) {
  extra.push_back("--checkpoint_dir=" + dir);
  return testing::StartCluster(n, std::move(extra));
}

std::string SparseName(OptimizerKind k) { return absl::StrCat("s_", OptimizerKindName(k)); }
std::string DenseName(OptimizerKind k) { return absl::StrCat("d_", OptimizerKindName(k)); }

void CreateTables(Client& c) {
  for (OptimizerKind k : kAll) {
    TableConfig s{.name = SparseName(k), .kind = TableKind::kSparse, .dim = kDim};
    s.optimizer.kind = k;
    s.initializer = {.kind = InitializerKind::kNormal, .seed = 5};
    REQUIRE(c.CreateTable(s).ok());
    TableConfig d{.name = DenseName(k),
                  .kind = TableKind::kDense,
                  .dense_size = kDenseSize,
                  .dense_block_elems = 1009};
    d.optimizer.kind = k;
    d.initializer = {.kind = InitializerKind::kUniform, .seed = 6};
    REQUIRE(c.CreateTable(d).ok());
  }
}

const std::vector<uint64_t>& AllKeys() {
  static const std::vector<uint64_t> keys = [] {
    std::vector<uint64_t> k;
    for (uint64_t i = 0; i < 3000; ++i) k.push_back(i * 0x9e3779b97f4a7c15ULL);
    return k;
  }();
  return keys;
}

// One round of pushes to every table, from a seed: the same seed gives the same pushes.
void PushRound(Client& c, uint64_t seed, size_t num_keys = 1000) {
  std::mt19937_64 rng(seed);
  std::vector<uint64_t> keys = AllKeys();
  std::shuffle(keys.begin(), keys.end(), rng);
  keys.resize(num_keys);
  std::vector<float> g(keys.size() * kDim);
  std::vector<float> dg(kDenseSize / 2);
  for (OptimizerKind k : kAll) {
    for (float& x : g) x = std::uniform_real_distribution<float>(-1, 1)(rng);
    for (float& x : dg) x = std::uniform_real_distribution<float>(-1, 1)(rng);
    TESSERA_REQUIRE_OK(c.PushSparse(SparseName(k), keys, g));
    TESSERA_REQUIRE_OK(c.PushDense(DenseName(k), rng() % (kDenseSize / 2), dg));
  }
}

using State = std::map<std::string, std::vector<float>>;

// Every weight of every table (pulling creates missing rows with their initial values, which a
// checkpoint does not need to hold; both sides of a comparison pull the same keys).
State Snapshot(Client& c) {
  State s;
  for (OptimizerKind k : kAll) {
    std::vector<float> w(AllKeys().size() * kDim), d(kDenseSize);
    TESSERA_REQUIRE_OK(c.PullSparse(SparseName(k), AllKeys(), absl::MakeSpan(w)));
    TESSERA_REQUIRE_OK(c.PullDense(DenseName(k), 0, absl::MakeSpan(d)));
    s[SparseName(k)] = std::move(w);
    s[DenseName(k)] = std::move(d);
  }
  return s;
}

CheckpointRoundResult Checkpoint(const LocalCluster& cluster, const std::string& dir,
                                 bool incremental = true) {
  CheckpointDriverOptions o;
  o.dir = dir;
  o.servers = cluster.addresses();
  o.incremental = incremental;
  absl::StatusOr<CheckpointRoundResult> r = RunCheckpointRound(o);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  return *r;
}

void Restore(const LocalCluster& cluster, const std::string& dir, uint64_t id) {
  absl::StatusOr<RestoreResult> r = RestoreCluster(dir, cluster.addresses(), 1, id);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  if (id != 0) REQUIRE(r->id == id);
}

// Reports the first difference with the table and index, loudly.
void RequireSame(const State& got, const State& want) {
  REQUIRE(got.size() == want.size());
  for (const auto& [name, values] : want) {
    const std::vector<float>& g = got.at(name);
    REQUIRE(g.size() == values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      if (std::memcmp(&g[i], &values[i], sizeof(float)) != 0) {
        FAIL("table " << name << " element " << i << ": got " << g[i] << ", want " << values[i]);
      }
    }
  }
}

TEST_CASE("restoring a checkpoint gives back every optimizer's state bit for bit", "[checkpoint]") {
  const std::string dir = NewDir();
  auto cluster = Start(2, dir);
  auto client = Connect(*cluster);
  CreateTables(*client);
  for (uint64_t r = 0; r < 4; ++r) PushRound(*client, r);
  const State at_cut = Snapshot(*client);
  const CheckpointRoundResult c1 = Checkpoint(*cluster, dir);
  CHECK(c1.parent_id == 0);
  CHECK(c1.rows > 0);

  // The future from the cut: weights after the same pushes depend on every slot and step.
  for (uint64_t r = 10; r < 13; ++r) PushRound(*client, r);
  const State future = Snapshot(*client);
  Restore(*cluster, dir, c1.id);
  RequireSame(Snapshot(*client), at_cut);
  for (uint64_t r = 10; r < 13; ++r) PushRound(*client, r);
  RequireSame(Snapshot(*client), future);

  // Metrics saw it.
  absl::StatusOr<std::string> m = HttpGet(cluster->metrics_ports()[0], "/metrics");
  REQUIRE(m.ok());
  const std::vector<PromSample> s = ParsePromText(*m);
  CHECK(SumSamples(s, "tessera_checkpoints_total", {{"result", "ok"}}) == 1);
  CHECK(SumSamples(s, "tessera_restores_total") == 1);
  CHECK(SumSamples(s, "tessera_checkpoint_last_bytes") > 0);
  CHECK(SumSamples(s, "tessera_checkpoint_last_success_timestamp_seconds") > 1.7e9);
  CHECK(cluster->Stop().ok());
}

TEST_CASE("an incremental chain restores exactly like a full checkpoint and merges into one",
          "[checkpoint]") {
  const std::string dir = NewDir();
  auto cluster = Start(2, dir);
  auto client = Connect(*cluster);
  CreateTables(*client);
  PushRound(*client, 1, 3000);
  const CheckpointRoundResult c1 = Checkpoint(*cluster, dir);
  PushRound(*client, 2, 30);  // 1% of the keys
  const CheckpointRoundResult c2 = Checkpoint(*cluster, dir);
  CHECK(c2.parent_id == c1.id);
  CHECK(c2.rows < c1.rows / 10);
  // A table created after the parent is written in full in the increment.
  TableConfig late{.name = "late", .kind = TableKind::kSparse, .dim = kDim};
  REQUIRE(client->CreateTable(late).ok());
  std::vector<float> ones(AllKeys().size() * kDim, 1.0f);
  TESSERA_REQUIRE_OK(client->PushSparse("late", AllKeys(), ones));
  PushRound(*client, 3, 300);
  const CheckpointRoundResult c3 = Checkpoint(*cluster, dir);
  CHECK(c3.parent_id == c2.id);
  State live = Snapshot(*client);
  std::vector<float> late_live(AllKeys().size() * kDim);
  TESSERA_REQUIRE_OK(client->PullSparse("late", AllKeys(), absl::MakeSpan(late_live)));
  live["late"] = late_live;
  const CheckpointRoundResult full = Checkpoint(*cluster, dir, /*incremental=*/false);
  CHECK(full.parent_id == 0);
  absl::StatusOr<uint64_t> merged = MergeCheckpointChain(dir, c3.id);
  REQUIRE(merged.ok());

  for (uint64_t id : {c3.id, full.id, *merged}) {
    INFO("restoring " << id);
    PushRound(*client, 99, 3000);  // move away from the checkpointed state
    Restore(*cluster, dir, id);
    State got = Snapshot(*client);
    std::vector<float> late_got(AllKeys().size() * kDim);
    TESSERA_REQUIRE_OK(client->PullSparse("late", AllKeys(), absl::MakeSpan(late_got)));
    got["late"] = late_got;
    RequireSame(got, live);
  }
  CHECK(cluster->Stop().ok());
}

TEST_CASE("a checkpoint taken with 3 servers restores into 2", "[checkpoint]") {
  const std::string dir = NewDir();
  State before;
  uint64_t id = 0;
  {
    auto three = Start(3, dir);
    auto client = Connect(*three);
    CreateTables(*client);
    for (uint64_t r = 0; r < 3; ++r) PushRound(*client, r, 2000);
    id = Checkpoint(*three, dir).id;
    PushRound(*client, 7, 500);
    id = Checkpoint(*three, dir).id;  // an incremental: the chain is restored across layouts
    before = Snapshot(*client);
    REQUIRE(three->Stop().ok());
  }
  auto two = Start(2, dir, {"--restore"});
  auto client = Connect(*two);
  RequireSame(Snapshot(*client), before);
  // The new layout takes full checkpoints of its own.
  CHECK(Checkpoint(*two, dir).parent_id == 0);
  CHECK(two->Stop().ok());
  (void)id;
}

// Runs `tessera checkpoint create` as a separate process (so that it can be killed).
int RunCli(const LocalCluster& cluster, const std::string& dir, const std::string& more) {
  std::string servers;
  for (const std::string& a : cluster.addresses())
    absl::StrAppend(&servers, servers.empty() ? "" : ",", a);
  const std::string cmd =
      absl::StrCat(TESSERA_CLI_BINARY, " checkpoint create --checkpoint_dir=", dir,
                   " --connect=", servers, " ", more, " >/dev/null 2>&1");
  const int status = std::system(cmd.c_str());
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

TEST_CASE("kill -9 during a checkpoint leaves the previous one restorable and exact",
          "[checkpoint]") {
  const std::string dir = NewDir();
  auto cluster = Start(2, dir);
  auto client = Connect(*cluster);
  CreateTables(*client);
  PushRound(*client, 1, 3000);
  const CheckpointRoundResult c1 = Checkpoint(*cluster, dir);
  const State at_c1 = Snapshot(*client);
  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
      storage::CheckpointStore::Open(dir);
  REQUIRE(store.ok());

  // The moments, in order: a server right after its cut, after its first file, after all its
  // files; the driver after every part but before the manifest, and between writing
  // MANIFEST.tmp and renaming it.
  for (int point = 1; point <= 5; ++point) {
    INFO("crash point " << point);
    if (point <= 3) {
      // Server 1 comes back from c1 (like every restart here) armed to die at `point`.
      REQUIRE(cluster
                  ->RestartServer(
                      1, {"--restore", absl::StrCat("--testing_crash_in_checkpoint=", point)})
                  .ok());
      PushRound(*client, 100 + point, 1000);  // the state moves on after c1
      CHECK(RunCli(*cluster, dir, "") != 0);  // the round fails
      std::optional<int> exit = cluster->Reap(1);
      REQUIRE(exit.has_value());
      CHECK(WIFSIGNALED(*exit));
      CHECK(WTERMSIG(*exit) == SIGKILL);
      REQUIRE(cluster->RestartServer(1, {"--restore"}).ok());
    } else {
      PushRound(*client, 100 + point, 1000);
      CHECK(RunCli(*cluster, dir, absl::StrCat("--testing_driver_crash_point=", point - 3)) ==
            128 + SIGKILL);
    }
    // Only c1 is visible; whatever the round left behind is partial.
    std::vector<uint64_t> partial;
    absl::StatusOr<std::vector<uint64_t>> ids = (*store)->List(&partial);
    REQUIRE(ids.ok());
    CHECK(*ids == std::vector<uint64_t>{c1.id});
    Restore(*cluster, dir, 0);  // the newest complete checkpoint
    RequireSame(Snapshot(*client), at_c1);
  }
  // The next round cleans up and succeeds.
  const CheckpointRoundResult next = Checkpoint(*cluster, dir);
  CHECK(next.id > c1.id);
  std::vector<uint64_t> partial;
  CHECK(*(*store)->List(&partial) == std::vector<uint64_t>{c1.id, next.id});
  CHECK(partial.empty());
  CHECK(cluster->Stop().ok());
}

TEST_CASE("a corrupted checkpoint file is named and nothing is partially restored",
          "[checkpoint]") {
  const std::string dir = NewDir();
  auto cluster = Start(2, dir);
  auto client = Connect(*cluster);
  CreateTables(*client);
  PushRound(*client, 1, 3000);
  const CheckpointRoundResult c1 = Checkpoint(*cluster, dir);
  PushRound(*client, 2, 3000);
  const State live = Snapshot(*client);

  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
      storage::CheckpointStore::Open(dir);
  REQUIRE(store.ok());
  storage::v1::CheckpointManifest m;
  REQUIRE((*store)->ReadManifest(c1.id, &m).ok());
  const std::string victim =
      absl::StrCat((*store)->PartDir(c1.id, 1), "/", m.parts(1).tables(3).files(0).name());
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(std::filesystem::file_size(victim) / 2));
    f.put('\x5a');
  }
  absl::StatusOr<RestoreResult> r = RestoreCluster(dir, cluster->addresses(), 1, c1.id);
  REQUIRE_FALSE(r.ok());
  INFO(r.status().ToString());
  CHECK(r.status().code() == absl::StatusCode::kDataLoss);
  CHECK(std::string(r.status().message()).find(victim) != std::string::npos);
  RequireSame(Snapshot(*client), live);  // no server restored anything
  // A server asked directly also refuses, naming the file, and keeps its state.
  {
    auto stub = v1::ParameterServer::NewStub(
        grpc::CreateChannel(cluster->addresses()[1], grpc::InsecureChannelCredentials()));
    v1::RestoreCheckpointRequest req;
    req.mutable_header()->set_shard_map_epoch(1);
    req.set_checkpoint_id(c1.id);
    v1::RestoreCheckpointResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status s = stub->RestoreCheckpoint(&ctx, req, &resp);
    CHECK(s.error_code() == grpc::StatusCode::DATA_LOSS);
    CHECK(s.error_message().find(victim) != std::string::npos);
    RequireSame(Snapshot(*client), live);
  }
  // A server started from the corrupted checkpoint refuses to start, naming the file.
  REQUIRE(cluster->Stop().ok());
  LocalClusterOptions lo;
  lo.server_binary = TESSERA_SERVER_BINARY;
  lo.num_servers = 2;
  lo.log_dir = dir;
  lo.extra_args = {"--checkpoint_dir=" + dir, "--restore"};
  absl::StatusOr<std::unique_ptr<LocalCluster>> broken = LocalCluster::Start(lo);
  REQUIRE_FALSE(broken.ok());
  std::ifstream log(dir + "/server-1.log");
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  CHECK(text.find(victim) != std::string::npos);
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

TEST_CASE("periodic checkpoints with retention and the list and inspect commands", "[checkpoint]") {
  const std::string dir = NewDir();
  auto cluster = Start(1, dir);
  auto client = Connect(*cluster);
  CreateTables(*client);
  PushRound(*client, 1, 1000);
  const std::string cli = absl::StrCat(TESSERA_CLI_BINARY, " checkpoint --checkpoint_dir=", dir);
  // About ten rounds, a full one every third, keeping the newest two restorable.
  auto [code, out] = testing::RunCommand(absl::StrCat(
      "timeout --preserve-status -s INT 3 ", cli, " run --connect=", cluster->addresses()[0],
      " --every_s=0.25 --full_every=3 --keep=2 2>&1"));
  INFO(out);
  CHECK(code == 0);
  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
      storage::CheckpointStore::Open(dir);
  REQUIRE(store.ok());
  absl::StatusOr<std::vector<uint64_t>> ids = (*store)->List();
  REQUIRE(ids.ok());
  REQUIRE(ids->size() >= 2);
  CHECK(ids->back() >= 4);                        // several rounds ran
  CHECK(ids->size() < ids->back());               // retention removed old chains
  CHECK((*store)->RetentionVictims(2)->empty());  // what is left is all needed
  CHECK(out.find("incremental on") != std::string::npos);
  CHECK(out.find("removed by retention") != std::string::npos);

  auto [list_code, list] = testing::RunCommand(cli + " list");
  CHECK(list_code == 0);
  CHECK(list.find(absl::StrCat(ids->back())) != std::string::npos);
  auto [inspect_code, inspect] = testing::RunCommand(cli + " inspect --verify");
  INFO(inspect);
  CHECK(inspect_code == 0);
  CHECK(inspect.find("verified: every file of the chain") != std::string::npos);
  CHECK(inspect.find("s_adam") != std::string::npos);
  CHECK(cluster->Stop().ok());
}

}  // namespace
}  // namespace tessera
