// The shard as a deterministic state machine (docs/state_machine.md): one regression test per
// finding of issue 14 that an in-process replica pair can show, and digests of primary and
// backup compared after each.
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cfloat>
#include <cmath>
#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "optimizer/initializer.h"
#include "optimizer/optimizer.h"
#include "server/core_test_util.h"
#include "server/row_arena.h"
#include "server/sparse_table.h"

namespace tessera {
namespace {

using namespace tessera::testing;  // NOLINT

TEST_CASE(
    "a push held while its table is dropped and re-created never lands in the dropped "
    "table",
    "[state_machine]") {
  // Finding 1: the push was applied to the dropped table on the primary and replayed into the
  // new one on the backup.
  absl::Notification validated, recreated;
  ServerCoreOptions p;
  std::atomic<bool> hold{true};
  p.testing_before_sequencing = [&] {
    if (!hold.exchange(false)) return;  // the first push only
    validated.Notify();
    recreated.WaitForNotification();
  };
  ReplicaPair pair(p);
  ServerCore& core = *pair.primary;
  const TableConfig c = SparseConfig("t", 2, OptimizerKind::kAdd);
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(c), &cr).ok());
  const v1::PushSparseRequest push = SparsePushReq("t", 2, {7}, {1.0f, 1.0f}, 11, 1);
  absl::Status held;
  std::thread pusher([&] {
    v1::PushResponse resp;
    held = core.PushSparse(push, &resp);
  });
  validated.WaitForNotification();
  v1::DropTableResponse dr;
  REQUIRE(core.DropTable(DropReq("t"), &dr).ok());
  REQUIRE(core.CreateTable(CreateReq(c), &cr).ok());
  recreated.Notify();
  pusher.join();
  // Refused, changing nothing: the client retries, and the retry is applied to the new table.
  CHECK(held.code() == absl::StatusCode::kUnavailable);
  CHECK(std::string(held.message()).find("re-created") != std::string::npos);
  v1::PushResponse resp;
  REQUIRE(core.PushSparse(push, &resp).ok());
  CHECK_FALSE(resp.duplicate());
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
}

TEST_CASE(
    "a backup that cannot apply an entry is FAILED, applies nothing more, and a snapshot "
    "brings it back",
    "[state_machine]") {
  // Finding 2: the backup logged the failure and acknowledged the entry anyway.
  ServerCoreOptions b;
  b.max_keys_per_request = 2;  // a backup started with different limits
  ReplicaPair pair({}, b);
  const TableConfig c = SparseConfig("t", 1, OptimizerKind::kSgd);
  v1::CreateTableResponse cr;
  REQUIRE(pair.primary->CreateTable(CreateReq(c), &cr).ok());
  v1::PushResponse resp;
  REQUIRE(pair.primary->PushSparse(SparsePushReq("t", 1, {1, 2}, {1, 1}, 5, 1), &resp).ok());
  REQUIRE(pair.Replicate().ok());
  const uint64_t good = pair.backup->lsn();
  REQUIRE(pair.primary->PushSparse(SparsePushReq("t", 1, {1, 2, 3}, {1, 1, 1}, 5, 2), &resp).ok());
  REQUIRE(pair.primary->PushSparse(SparsePushReq("t", 1, {4}, {1}, 5, 3), &resp).ok());
  absl::Status st = pair.Replicate();
  CHECK(ServerCore::IsReplicaFailed(st));
  CHECK(st.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(pair.backup->failed());
  CHECK(pair.backup->lsn() == good);  // nothing of the refused entry was applied
  // Sticky: the next entry, which it could apply, is refused too.
  st = pair.Replicate();
  CHECK(ServerCore::IsReplicaFailed(st));
  CHECK(pair.backup->lsn() == good);
  REQUIRE(pair.Resync().ok());
  CHECK_FALSE(pair.backup->failed());
  CHECK(pair.backup->lsn() == pair.primary->lsn());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
}

TEST_CASE("exactly-once state forgets idle clients by entry time, never by a replica's clock",
          "[state_machine]") {
  // Finding 3: each replica forgot clients by its own wall clock. Here two backups replay the
  // same entries, whose times lie far from any clock: both decide alike, by entry time.
  ServerCoreOptions o;
  o.coordinated = true;
  o.dedup_client_ttl_s = 10;
  std::unique_ptr<ServerCore> a = *ServerCore::Create(o), b = *ServerCore::Create(o);
  for (ServerCore* r : {a.get(), b.get()}) {
    REQUIRE(r->Bind(0, 1).ok());
    r->SetRouting(1, false, 1);
  }
  const TableConfig c = SparseConfig("t", 1, OptimizerKind::kAdd);
  auto entry = [](uint64_t lsn, int64_t time_ms, uint64_t table_id, auto req) {
    LogEntry e;
    e.lsn = lsn;
    e.time_ms = time_ms;
    e.table_id = table_id;
    e.op = std::make_shared<const decltype(req)>(req);
    return e;
  };
  const int64_t t0 = 1000;  // 1970: no replica's clock is anywhere near
  std::vector<LogEntry> log = {
      entry(1, t0, 1, CreateReq(c)),
      entry(2, t0, 1, SparsePushReq("t", 1, {1}, {1}, /*client=*/7, 1)),
      // 25 s of entry time later another client pushes: client 7 is past the 10 s TTL.
      entry(3, t0 + 25'000, 1, SparsePushReq("t", 1, {2}, {1}, 8, 1)),
      // The sweep runs every quarter TTL: once more, and client 7 is forgotten...
      entry(4, t0 + 28'000, 1, SparsePushReq("t", 1, {2}, {1}, 8, 2)),
      // ...so its sequence 1 (a very late retry) is new again, on every replica alike.
      entry(5, t0 + 28'001, 1, SparsePushReq("t", 1, {1}, {1}, 7, 1)),
  };
  for (ServerCore* r : {a.get(), b.get()}) {
    for (const LogEntry& e : log) REQUIRE(r->Replay(1, e).ok());
    r->WaitApplied();
  }
  CHECK(a->lsn() == 5);
  CHECK(a->StateDigest() == b->StateDigest());
}

TEST_CASE("a refused push leaves exactly-once state unchanged", "[state_machine]") {
  // Finding 4: an accumulate push refused with FAILED_PRECONDITION raised the client's floor,
  // so a later push was answered "duplicate" and never applied.
  ReplicaPair pair;
  ServerCore& core = *pair.primary;
  const TableConfig c = SparseConfig("t", 1, OptimizerKind::kAdd);
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(c), &cr).ok());
  v1::PushResponse resp;
  REQUIRE(core.PushSparse(SparsePushReq("t", 1, {1}, {1}, 9, 1, 1, /*step=*/1), &resp).ok());
  v1::ApplyStepResponse ar;
  REQUIRE(core.ApplyStep(ApplyStepReq("t", 1, 1.0f), &ar).ok());
  const uint64_t digest = core.StateDigest();
  // Step 1 is applied: this push (sequence 3, floor 3) is refused...
  absl::Status st = core.PushSparse(SparsePushReq("t", 1, {1}, {5}, 9, 3, 3, 1), &resp);
  CHECK(st.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(core.StateDigest() == digest);  // ...and changes nothing, exactly-once state included
  // So sequence 2 is still new.
  resp.Clear();
  REQUIRE(core.PushSparse(SparsePushReq("t", 1, {1}, {2}, 9, 2, 2, /*step=*/2), &resp).ok());
  CHECK_FALSE(resp.duplicate());
  REQUIRE(core.ApplyStep(ApplyStepReq("t", 2, 1.0f), &ar).ok());
  CHECK(ar.rows() == 1);
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
}

TEST_CASE("a row whose allocation fails leaves no key behind", "[state_machine]") {
  // Finding 5: the key entered the vshard index before its row existed; after std::bad_alloc
  // the next access to it read an unallocated row (SIGSEGV) or aliased row 0 of the vshard.
  const TableConfig c = SparseConfig("t", 4, OptimizerKind::kAdd);
  TableConfig resolved = *ResolveTableConfig(c);
  SparseTable table(resolved, std::vector<bool>(4, true));
  // Keys of one vshard, so that a broken index would alias the first key's row.
  std::vector<uint64_t> same;
  for (uint64_t k = 1; same.size() < 2; ++k) {
    if (VshardOfKey(k, 4) == VshardOfKey(1, 4)) same.push_back(k);
  }
  // 300 rows, so that the second key's row needs a new arena block.
  std::vector<uint64_t> keys;
  for (uint64_t k = 1; keys.size() < RowArena::kRowsPerBlock; ++k) {
    if (VshardOfKey(k, 4) == VshardOfKey(same[0], 4) && k != same[1]) keys.push_back(k);
  }
  VshardGrouping g;
  GroupByVshard(keys, 4, &g);
  std::vector<float> ones(keys.size() * 4, 1.0f);
  table.Push(keys, g, ones.data(), 2);
  const std::vector<uint64_t> victim = {same[1]};
  VshardGrouping vg;
  GroupByVshard(victim, 4, &vg);
  std::vector<float> out(4);
  RowArena::fail_appends_for_testing.store(1);
  CHECK_THROWS_AS(table.Pull(victim, vg, out.data(), 2), std::bad_alloc);
  RowArena::fail_appends_for_testing.store(0);
  CHECK(table.num_rows() == keys.size());
  // The key is new again: it gets its initial values, and the other rows are untouched.
  std::vector<float> twice(4, 2.0f);
  table.Push(victim, vg, twice.data(), 3);
  table.Pull(victim, vg, out.data(), 3);
  std::vector<float> init(4);
  Initializer(resolved.initializer).FillRow(victim[0], init.data(), 4);
  for (int i = 0; i < 4; ++i) CHECK(out[i] == init[i] + 2.0f);
  std::vector<float> first(4);
  const std::vector<uint64_t> k0 = {keys[0]};
  VshardGrouping g0;
  GroupByVshard(k0, 4, &g0);
  table.Pull(k0, g0, first.data(), 3);
  Initializer(resolved.initializer).FillRow(keys[0], init.data(), 4);
  for (int i = 0; i < 4; ++i) CHECK(first[i] == init[i] + 1.0f);
}

bool AllFinite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

TEST_CASE("finite input never makes a weight or a slot NaN or infinite", "[state_machine]") {
  // Finding 8: a gradient whose square overflows float32 made FTRL's weight NaN for good and
  // froze Adagrad/Adam at an infinite accumulator; `add` of 3e38 twice gave inf.
  for (OptimizerKind kind : {OptimizerKind::kSgd, OptimizerKind::kMomentum, OptimizerKind::kAdagrad,
                             OptimizerKind::kAdam, OptimizerKind::kFtrl, OptimizerKind::kAdd}) {
    OptimizerConfig oc;
    oc.kind = kind;
    TableConfig c = SparseConfig("t", 1, kind);
    TableConfig resolved = *ResolveTableConfig(c);
    const OptimizerParams p = OptimizerParams::FromConfig(resolved.optimizer);
    INFO("optimizer " << static_cast<int>(kind));
    const size_t n = 300;  // more than one chunk of the kernel
    std::vector<float> w(n, 0.5f), s0(n, p.InitialSlotValue(0)), s1(n, p.InitialSlotValue(1));
    uint64_t step = 0;
    for (float g : {1e20f, 3e38f, -3e38f, 3e38f, 1.0f, -FLT_MAX, FLT_MAX}) {
      std::vector<float> grads(n, g);
      grads[7] = 1.0f;  // a chunk with ordinary coordinates too
      ApplyUpdate(p, w.data(), p.num_slots > 0 ? s0.data() : nullptr,
                  p.num_slots > 1 ? s1.data() : nullptr, &step, grads.data(), n);
      CHECK(AllFinite(w));
      CHECK(AllFinite(s0));
      CHECK(AllFinite(s1));
    }
  }
  // Through the server: add and BSP sums saturate at the largest float.
  ReplicaPair pair;
  ServerCore& core = *pair.primary;
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(SparseConfig("add", 1, OptimizerKind::kAdd)), &cr).ok());
  REQUIRE(core.CreateTable(CreateReq(SparseConfig("bsp", 1, OptimizerKind::kAdd)), &cr).ok());
  v1::PushResponse r;
  REQUIRE(core.PushSparse(SparsePushReq("add", 1, {1}, {3e38f}, 1, 1), &r).ok());
  REQUIRE(core.PushSparse(SparsePushReq("add", 1, {1}, {3e38f}, 1, 2), &r).ok());
  CHECK(PullRows(core, "add", 1, {1})[0] == FLT_MAX);
  REQUIRE(core.PushSparse(SparsePushReq("bsp", 1, {1}, {3e38f}, 1, 3, 1, 1), &r).ok());
  REQUIRE(core.PushSparse(SparsePushReq("bsp", 1, {1}, {3e38f}, 2, 1, 1, 1), &r).ok());
  v1::ApplyStepResponse ar;
  REQUIRE(core.ApplyStep(ApplyStepReq("bsp", 1, 4.0f), &ar).ok());
  CHECK(PullRows(core, "bsp", 1, {1})[0] == FLT_MAX);
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
}

TEST_CASE("pushes applied in parallel by the executors reach the same state on every replica",
          "[state_machine]") {
  // Finding 9: every push was applied under one mutex. Now executors apply them per vshard in
  // parallel; replicas with different numbers of executors must still agree bit for bit.
  ServerCoreOptions p, b;
  p.apply_threads = 4;
  b.apply_threads = 3;
  ReplicaPair pair(p, b);
  ServerCore& core = *pair.primary;
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(SparseConfig("adam", 8, OptimizerKind::kAdam)), &cr).ok());
  REQUIRE(core.CreateTable(CreateReq(DenseConfig("d", 5000, 100, OptimizerKind::kAdam)), &cr).ok());
  std::vector<std::thread> clients;
  for (uint64_t client = 1; client <= 4; ++client) {
    clients.emplace_back([&, client] {
      std::mt19937_64 rng(client);
      for (uint64_t seq = 1; seq <= 150; ++seq) {
        v1::PushResponse resp;
        if (seq % 3 == 0) {
          std::vector<float> g(700);
          for (float& x : g) x = std::uniform_real_distribution<float>(-1, 1)(rng);
          REQUIRE(core.PushDense(DensePushReq("d", rng() % 4300, g, client, seq), &resp).ok());
          continue;
        }
        std::vector<uint64_t> keys;
        for (uint64_t k = rng() % 50; keys.size() < 40; k += 1 + rng() % 7) keys.push_back(k);
        std::vector<float> g(keys.size() * 8);
        for (float& x : g) x = std::uniform_real_distribution<float>(-1, 1)(rng);
        REQUIRE(core.PushSparse(SparsePushReq("adam", 8, keys, g, client, seq), &resp).ok());
      }
    });
  }
  for (auto& t : clients) t.join();
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

using namespace tessera::testing;  // NOLINT

// An empty directory of this process under the temp directory.
std::string FreshDir(const std::string& prefix) {
  const std::string dir = std::filesystem::temp_directory_path() / absl::StrCat(prefix, getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

TEST_CASE("removed rows are gone on every replica and from the checkpoints after",
          "[state_machine][lifecycle]") {
  const std::string dir = FreshDir("tessera_remove_");
  ServerCoreOptions p;
  p.checkpoint_dir = dir;
  ReplicaPair pair(p);
  ServerCore& core = *pair.primary;
  const TableConfig c = SparseConfig("t", 2, OptimizerKind::kAdd);
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(c), &cr).ok());
  std::vector<uint64_t> keys;
  std::vector<float> values;
  for (uint64_t k = 1; k <= 20; ++k) {
    keys.push_back(k);
    values.insert(values.end(), {1.0f, static_cast<float>(k)});
  }
  v1::PushResponse pr;
  REQUIRE(core.PushSparse(SparsePushReq("t", 2, keys, values, 5, 1), &pr).ok());
  REQUIRE(WriteCheckpoint(core, dir, 1).ok());
  const uint64_t held = core.budget().used();

  v1::RemoveRowsResponse rr;
  REQUIRE(core.RemoveRows(RemoveRowsReq("t", {3, 5, 7, 999}), &rr).ok());
  CHECK(rr.rows() == 3);  // (999 had no row)
  CHECK(rr.lsn() == core.lsn());
  // The rows' memory stays (for the vshard's next rows), so does its charge; a row created in
  // it is not charged again.
  CHECK(core.budget().used() == held);
  // Key 5 comes back in the same step: from the initializer, then this push. (The
  // initializer's values are a function of the key: a second table of the same spec has them.)
  REQUIRE(core.PushSparse(SparsePushReq("t", 2, {5}, {0.5f, 0.5f}, 5, 2), &pr).ok());
  CHECK(core.budget().used() == held);
  REQUIRE(core.CreateTable(CreateReq(SparseConfig("u", 2, OptimizerKind::kAdd)), &cr).ok());
  const std::vector<float> init = PullRows(core, "u", 2, {3, 5, 6, 7});
  REQUIRE(init.size() == 8);
  const std::vector<float> want = {init[0],        init[1],        init[2] + 0.5f, init[3] + 0.5f,
                                   init[4] + 1.0f, init[5] + 6.0f, init[6],        init[7]};
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());

  // The increment on checkpoint 1 carries tombstones for 3 and 7 (5 is a row again): a restore
  // of the chain holds what a restore of a full checkpoint of the same state holds.
  REQUIRE(WriteCheckpoint(core, dir, 2, 1, {1}).ok());
  ServerCoreOptions fresh_options;
  fresh_options.checkpoint_dir = dir;
  auto from_chain = *ServerCore::Create(fresh_options);
  REQUIRE(RestoreNewest(*from_chain).ok());
  REQUIRE(WriteCheckpoint(core, dir, 3).ok());
  auto from_full = *ServerCore::Create(fresh_options);
  REQUIRE(RestoreNewest(*from_full).ok());
  const auto rows_of_t = [](const ServerCore& c) {
    for (const TableStats& t : c.GetTableStats()) {
      if (t.name == "t") return t.rows;
    }
    return uint64_t{0};
  };
  CHECK(rows_of_t(*from_chain) == 18);  // 20 - 3 + 1
  CHECK(rows_of_t(*from_full) == 18);
  CHECK(from_chain->StateDigest() == from_full->StateDigest());
  // (Pulls last: they create rows, at the initializer's values.)
  CHECK(PullRows(core, "t", 2, {3, 5, 6, 7}) == want);
  CHECK(PullRows(*from_chain, "t", 2, {3, 5, 6, 7}) == want);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a removal is refused before the log when its request is wrong",
          "[state_machine][lifecycle]") {
  ReplicaPair pair;
  ServerCore& core = *pair.primary;
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(SparseConfig("s", 2, OptimizerKind::kAdd)), &cr).ok());
  REQUIRE(core.CreateTable(CreateReq(DenseConfig("d", 100, 10, OptimizerKind::kSgd)), &cr).ok());
  const uint64_t lsn = core.lsn();
  v1::RemoveRowsResponse rr;
  CHECK(core.RemoveRows(RemoveRowsReq("nope", {1}), &rr).code() == absl::StatusCode::kNotFound);
  CHECK(core.RemoveRows(RemoveRowsReq("d", {1}), &rr).code() ==
        absl::StatusCode::kFailedPrecondition);
  v1::RemoveRowsRequest bad = RemoveRowsReq("s", {1, 2});
  bad.set_num_keys(3);  // more keys declared than sent
  CHECK(core.RemoveRows(bad, &rr).code() == absl::StatusCode::kInvalidArgument);
  CHECK(core.lsn() == lsn);  // nothing sequenced
}

// ---- The lifecycle task (docs/embedding_lifecycle.md) ----

// A table's lifecycle figures on a core.
TableStats StatsOf(const ServerCore& core, const std::string& name) {
  for (const TableStats& t : core.GetTableStats()) {
    if (t.name == name) return t;
  }
  return TableStats{};
}

TableConfig LifecycleTable(const std::string& name, LifecycleConfig l) {
  TableConfig c = SparseConfig(name, 2, OptimizerKind::kAdagrad);
  c.lifecycle = l;
  return c;
}

// Pushes `keys` (gradient 1) as client 5 with the next sequence number.
void PushKeys(ServerCore& core, const std::string& table, const std::vector<uint64_t>& keys,
              uint64_t* seq) {
  v1::PushResponse pr;
  REQUIRE(core.PushSparse(SparsePushReq(table, 2, keys, std::vector<float>(keys.size() * 2, 1.0f),
                                        5, ++*seq),
                          &pr)
              .ok());
}

// A replica pair whose primary reads its clock from `clock` (Unix ms; second 1,000 of 1970 at
// first: no real clock is near), and no lifecycle task of its own (tests run the rounds).
struct ClockedPair {
  static ServerCoreOptions WithClock(ServerCoreOptions o, std::atomic<int64_t>* clock) {
    o.testing_clock_ms = [clock] { return clock->load(); };
    o.lifecycle_interval_ms = 0;
    return o;
  }
  explicit ClockedPair(ServerCoreOptions p = {})
      : pair(WithClock(std::move(p), &clock), WithClock({}, &clock)) {}
  std::atomic<int64_t> clock{1'000'000};
  ReplicaPair pair;
};

TEST_CASE("the primary's TTL removes rows by entry time on every replica and from checkpoints",
          "[state_machine][lifecycle]") {
  const std::string dir = FreshDir("tessera_ttl_");
  ServerCoreOptions p;
  p.checkpoint_dir = dir;
  ClockedPair clocked(p);
  std::atomic<int64_t>& clock = clocked.clock;
  ReplicaPair& pair = clocked.pair;
  ServerCore& core = *pair.primary;
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(LifecycleTable("t", {.ttl_seconds = 60})), &cr).ok());
  uint64_t seq = 0;
  PushKeys(core, "t", {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, &seq);
  clock = 1'030'000;
  PushKeys(core, "t", {1, 2, 3, 4, 5}, &seq);
  clock = 1'059'999;
  CHECK(core.RunLifecycle() == 0);  // keys 6..10: 59.999 s
  clock = 1'070'000;
  CHECK(core.RunLifecycle() == 0);  // (a scan is due every quarter TTL: 15 s)
  clock = 1'075'000;
  const uint64_t lsn = core.lsn();
  CHECK(core.RunLifecycle() == 5);  // keys 6..10: 75 s; 1..5: 45 s
  CHECK(core.lsn() == lsn + 1);     // one entry
  {
    // tessera status shows how old the rows are: the five left, 45 s.
    v1::DescribeTableRequest req;
    req.mutable_header()->set_shard_map_epoch(1);
    req.set_table("t");
    v1::DescribeTableResponse resp;
    REQUIRE(core.DescribeTable(req, &resp).ok());
    CHECK(std::vector<uint64_t>(resp.info().update_age_quantiles_s().begin(),
                                resp.info().update_age_quantiles_s().end()) ==
          std::vector<uint64_t>{45, 45, 45});
  }
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
  for (ServerCore* r : {pair.primary.get(), pair.backup.get()}) {
    CHECK(StatsOf(*r, "t").rows == 5);
    CHECK(StatsOf(*r, "t").evicted_ttl == 5);  // (a backup counts what it applies)
  }
  // A removed key reads as never seen, and a pull creates no row.
  REQUIRE(core.CreateTable(CreateReq(SparseConfig("u", 2, OptimizerKind::kAdagrad)), &cr).ok());
  CHECK(PullRows(core, "t", 2, {7, 8}) == PullRows(core, "u", 2, {7, 8}));
  CHECK(StatsOf(core, "t").rows == 5);
  // The next checkpoint lacks them.
  REQUIRE(WriteCheckpoint(core, dir, 1).ok());
  ServerCoreOptions fresh_options;
  fresh_options.checkpoint_dir = dir;
  fresh_options.lifecycle_interval_ms = 0;
  auto restored = *ServerCore::Create(fresh_options);
  REQUIRE(RestoreNewest(*restored).ok());
  CHECK(StatsOf(*restored, "t").rows == 5);
  CHECK(PullRows(*restored, "t", 2, {1, 7}) == PullRows(core, "t", 2, {1, 7}));
  // Later the other five age out too.
  clock = 1'089'000;
  CHECK(core.RunLifecycle() == 0);  // (not due)
  clock = 1'090'000;
  CHECK(core.RunLifecycle() == 5);  // 1..5: 60 s
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
  CHECK(StatsOf(*pair.backup, "t").rows == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a removal keeps, on every replica, a row pushed after the remover looked",
          "[state_machine][lifecycle]") {
  ClockedPair clocked;
  ReplicaPair& pair = clocked.pair;
  ServerCore& core = *pair.primary;
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(LifecycleTable("t", {.ttl_seconds = 60})), &cr).ok());
  REQUIRE(core.CreateTable(CreateReq(SparseConfig("plain", 2, OptimizerKind::kAdd)), &cr).ok());
  uint64_t seq = 0;
  PushKeys(core, "t", {1, 2}, &seq);
  // The stamps a remover saw: second 1,000, one update each. Then key 1 is pushed again in
  // the same second.
  const uint64_t seen = (uint64_t{1000} << 32) | 1;
  PushKeys(core, "t", {1}, &seq);
  v1::RemoveRowsRequest req = RemoveRowsReq("t", {1, 2});
  PackedAssign<uint64_t>(req.mutable_stamps(), std::vector<uint64_t>{seen, seen});
  req.set_reason(v1::REMOVE_REASON_TTL);
  v1::RemoveRowsResponse rr;
  REQUIRE(core.RemoveRows(req, &rr).ok());
  CHECK(rr.rows() == 1);  // key 2
  CHECK(rr.kept() == 1);  // key 1, updated since
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
  for (ServerCore* r : {pair.primary.get(), pair.backup.get()}) {
    CHECK(StatsOf(*r, "t").rows == 1);
    CHECK(StatsOf(*r, "t").kept == 1);
  }
  // Stamps of the wrong length, on a table without a lifecycle, or an unknown reason: refused
  // before the log.
  const uint64_t lsn = core.lsn();
  v1::RemoveRowsRequest bad = req;
  bad.mutable_stamps()->resize(12);
  CHECK(core.RemoveRows(bad, &rr).code() == absl::StatusCode::kInvalidArgument);
  bad = RemoveRowsReq("plain", {1});
  PackedAssign<uint64_t>(bad.mutable_stamps(), std::vector<uint64_t>{seen});
  CHECK(core.RemoveRows(bad, &rr).code() == absl::StatusCode::kInvalidArgument);
  bad = req;
  bad.set_reason(static_cast<v1::RemoveReason>(99));
  CHECK(core.RemoveRows(bad, &rr).code() == absl::StatusCode::kInvalidArgument);
  CHECK(core.lsn() == lsn);
}

TEST_CASE("capacity keeps the most recently updated rows and a dry run only counts",
          "[state_machine][lifecycle]") {
  ClockedPair clocked;
  std::atomic<int64_t>& clock = clocked.clock;
  ReplicaPair& pair = clocked.pair;
  ServerCore& core = *pair.primary;
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(LifecycleTable("t", {.capacity_rows = 40})), &cr).ok());
  REQUIRE(core.CreateTable(CreateReq(LifecycleTable("dry", {.capacity_rows = 40, .dry_run = true})),
                           &cr)
              .ok());
  uint64_t seq = 0;
  for (uint64_t k = 1; k <= 60; ++k) {
    clock += 1000;
    PushKeys(core, "t", {k}, &seq);
    PushKeys(core, "dry", {k}, &seq);
  }
  const uint64_t lsn = core.lsn();
  CHECK(core.RunLifecycle() == 22);  // 60 rows, down to 40 - 2
  CHECK(core.lsn() == lsn + 1);      // (the dry run sequenced nothing)
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
  CHECK(StatsOf(*pair.backup, "t").rows == 38);
  CHECK(StatsOf(*pair.backup, "t").evicted_capacity == 22);
  CHECK(StatsOf(core, "dry").rows == 60);
  CHECK(StatsOf(core, "dry").would_evict == 22);
  // The oldest went: keys 1..22 read as never seen, 23.. kept their updates.
  REQUIRE(core.CreateTable(CreateReq(SparseConfig("u", 2, OptimizerKind::kAdagrad)), &cr).ok());
  CHECK(PullRows(core, "t", 2, {22}) == PullRows(core, "u", 2, {22}));
  CHECK(PullRows(core, "t", 2, {23}) != PullRows(core, "u", 2, {23}));
}

TEST_CASE("under a stream of new keys the memory held follows the capacity, not the stream",
          "[state_machine][lifecycle]") {
  ServerCoreOptions p;
  p.lifecycle_interval_ms = 0;
  std::unique_ptr<ServerCore> core = *ServerCore::Create(p);
  v1::CreateTableResponse cr;
  constexpr uint64_t kCapacity = 50'000;
  REQUIRE(
      core->CreateTable(CreateReq(LifecycleTable("t", {.capacity_rows = kCapacity})), &cr).ok());
  const uint64_t empty = core->budget().used();
  uint64_t seq = 0, next = 1, most = 0;
  for (int batch = 0; batch < 200; ++batch) {
    std::vector<uint64_t> keys(1000);
    for (uint64_t& k : keys) k = next++ * 0x9E3779B97F4A7C15ull;
    PushKeys(*core, "t", keys, &seq);
    core->RunLifecycle();
    most = std::max(most, core->budget().used() - empty);
  }
  const TableStats t = StatsOf(*core, "t");
  INFO(absl::StrFormat("%u rows, %u evicted, at most %u bytes held", t.rows, t.evicted_capacity,
                       most));
  CHECK(t.rows <= kCapacity);
  CHECK(t.evicted_capacity == 200'000 - t.rows);
  // A removed row's memory (and its charge) serves the next new row of its vshard only: what is
  // held follows the most rows each vshard held at once, which the vshards' caps keep near the
  // capacity: a cap is 110% of a vshard's share and 4 rows, and a batch adds a few rows to a
  // vshard before the next round (measured: 1.24x the capacity; without the caps, 2.4x).
  const uint64_t row_charge = (2 + 2 + 2 + 2) * sizeof(float) + SparseTable::kIndexBytesPerRow +
                              SparseTable::kBlockBytesPerRow;  // dim 2, Adagrad
  CHECK(most <= (kCapacity * 11 / 10 + 12 * kDefaultNumVshards) * row_charge);
}

TEST_CASE("admission counts are replicated state: a backup that joined by snapshot admits alike",
          "[state_machine][lifecycle]") {
  ServerCoreOptions p, b;
  p.lifecycle_interval_ms = b.lifecycle_interval_ms = 0;
  ReplicaPair pair(p, b);
  ServerCore& core = *pair.primary;
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(LifecycleTable("t", {.admission_min_count = 3})), &cr).ok());
  uint64_t seq = 0;
  std::vector<uint64_t> keys;
  for (uint64_t k = 1; k <= 500; ++k) keys.push_back(k * 7919);
  PushKeys(core, "t", keys, &seq);  // one sighting each
  REQUIRE(pair.Replicate().ok());
  // The backup starts again from a snapshot: the sightings travel in it...
  REQUIRE(pair.Resync().ok());
  PushKeys(core, "t", keys, &seq);                                                     // two
  PushKeys(core, "t", std::vector<uint64_t>(keys.begin(), keys.begin() + 250), &seq);  // three
  REQUIRE(pair.Replicate().ok());
  // ...so it admits the same keys, at the same push, as its primary.
  CHECK(StatsOf(*pair.primary, "t").rows == 250);
  CHECK(StatsOf(*pair.backup, "t").rows == 250);
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
  CHECK(StatsOf(*pair.primary, "t").admitted == 250);
  CHECK(StatsOf(*pair.primary, "t").sketch_bytes > 0);
}

TEST_CASE("a push refused at the memory limit while a capacity evicts says when to retry",
          "[state_machine][lifecycle]") {
  ServerCoreOptions o;
  o.max_memory_bytes = 4 << 20;
  o.lifecycle_interval_ms = 100;  // (the task runs: the hint is one round)
  std::unique_ptr<ServerCore> core = *ServerCore::Create(o);
  v1::CreateTableResponse cr;
  REQUIRE(
      core->CreateTable(CreateReq(LifecycleTable("t", {.capacity_rows = 1'000'000})), &cr).ok());
  REQUIRE(
      core->CreateTable(CreateReq(SparseConfig("plain", 2, OptimizerKind::kAdagrad)), &cr).ok());
  auto fill = [&](const std::string& table) {
    uint64_t next = 1;
    for (int push = 0; push < 1000; ++push) {
      std::vector<uint64_t> keys(1000);
      for (uint64_t& k : keys) k = next++;
      v1::PushResponse pr;
      absl::Status st = core->PushSparse(
          SparsePushReq(table, 2, keys, std::vector<float>(keys.size() * 2, 1.0f), 9, push + 1),
          &pr);
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  };
  const absl::Status refused = fill("t");
  REQUIRE(refused.code() == absl::StatusCode::kResourceExhausted);
  CHECK(ServerCore::RetryAfterMs(refused) == 100);
  CHECK(absl::StrContains(refused.message(), "evicting rows: retry"));
  // A table without a capacity: nothing makes room for it, no hint.
  const absl::Status plain = fill("plain");
  REQUIRE(plain.code() == absl::StatusCode::kResourceExhausted);
  CHECK(ServerCore::RetryAfterMs(plain) == 0);
}

TEST_CASE("a restore never changes a live table's lifecycle silently",
          "[state_machine][lifecycle]") {
  const std::string dir = FreshDir("tessera_restore_policy_");
  ServerCoreOptions o;
  o.checkpoint_dir = dir;
  o.lifecycle_interval_ms = 0;
  std::unique_ptr<ServerCore> core = *ServerCore::Create(o);
  v1::CreateTableResponse cr;
  REQUIRE(core->CreateTable(CreateReq(LifecycleTable("t", {.ttl_seconds = 60})), &cr).ok());
  uint64_t seq = 0;
  PushKeys(*core, "t", {1, 2, 3}, &seq);
  REQUIRE(WriteCheckpoint(*core, dir, 1).ok());
  auto restore = [&](v1::RestoreLifecycle lifecycle) {
    v1::RestoreCheckpointRequest req;
    req.mutable_header()->set_shard_map_epoch(1);
    req.set_phase(v1::RESTORE_PHASE_PREPARE_AND_COMMIT);
    req.set_lifecycle(lifecycle);
    v1::RestoreCheckpointResponse resp;
    return core->RestoreCheckpoint(req, &resp);
  };
  auto recreate = [&](LifecycleConfig l) {
    v1::DropTableResponse dr;
    REQUIRE(core->DropTable(DropReq("t"), &dr).ok());
    REQUIRE(core->CreateTable(CreateReq(LifecycleTable("t", l)), &cr).ok());
  };
  auto ttl_of_t = [&] {
    v1::DescribeTableRequest req;
    req.mutable_header()->set_shard_map_epoch(1);
    req.set_table("t");
    v1::DescribeTableResponse resp;
    REQUIRE(core->DescribeTable(req, &resp).ok());
    return resp.info().spec().lifecycle().ttl_seconds();
  };
  // The same policy: restored as always.
  CHECK(restore(v1::RESTORE_LIFECYCLE_MATCH).ok());
  // Another one live: refused, naming both, unless the choice is explicit.
  recreate({.ttl_seconds = 120});
  const absl::Status refused = restore(v1::RESTORE_LIFECYCLE_MATCH);
  CHECK(refused.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(refused.message(), "checkpoint's lifecycle is ttl 60 s"));
  CHECK(absl::StrContains(refused.message(), "live table's ttl 120 s"));
  CHECK(ttl_of_t() == 120);  // (nothing changed)
  REQUIRE(restore(v1::RESTORE_LIFECYCLE_LIVE).ok());
  CHECK(ttl_of_t() == 120);
  CHECK(StatsOf(*core, "t").rows == 3);  // the checkpoint's rows, the live policy
  REQUIRE(restore(v1::RESTORE_LIFECYCLE_CHECKPOINT).ok());
  CHECK(ttl_of_t() == 60);
  // Keeping "no lifecycle" for rows that carry one cannot be done: refused.
  v1::DropTableResponse dr;
  REQUIRE(core->DropTable(DropReq("t"), &dr).ok());
  REQUIRE(core->CreateTable(CreateReq(SparseConfig("t", 2, OptimizerKind::kAdagrad)), &cr).ok());
  const absl::Status layout = restore(v1::RESTORE_LIFECYCLE_LIVE);
  CHECK(layout.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(layout.message(), "8 more bytes"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("near the memory limit a table with a TTL gives up its oldest rows to new keys",
          "[state_machine][lifecycle]") {
  // A stream of new keys into a table whose TTL (an hour) frees nothing, on a server with 4 MiB
  // for tables: as its memory nears the limit, the lifecycle's rounds (one after each push
  // here, the task's 100 ms in a server) remove the oldest rows and new keys take their
  // memory. A push refused meanwhile comes through after the next round, as a client retries it
  // after the refusal's hint.
  ServerCoreOptions o;
  o.max_memory_bytes = 4 << 20;
  o.lifecycle_interval_ms = 0;  // (rounds run here)
  std::atomic<int64_t> clock{1'000'000};
  o.testing_clock_ms = [&clock] { return clock.load(); };
  std::unique_ptr<ServerCore> core = *ServerCore::Create(o);
  v1::CreateTableResponse cr;
  REQUIRE(core->CreateTable(CreateReq(LifecycleTable("t", {.ttl_seconds = 3600})), &cr).ok());
  uint64_t seq = 0, most = 0, refusals = 0;
  for (uint64_t push = 0; push < 150; ++push) {
    clock += 1000;  // a second a push: the oldest rows are the first pushed
    std::vector<uint64_t> keys(1000);
    for (uint64_t i = 0; i < keys.size(); ++i) keys[i] = push * 1000 + i + 1;
    const auto req =
        SparsePushReq("t", 2, keys, std::vector<float>(keys.size() * 2, 1.0f), 9, ++seq);
    v1::PushResponse pr;
    absl::Status pushed = core->PushSparse(req, &pr);
    if (!pushed.ok()) {
      CHECK(pushed.code() == absl::StatusCode::kResourceExhausted);
      ++refusals;
      core->RunLifecycle();
      pushed = core->PushSparse(req, &pr);
    }
    INFO(pushed.ToString() << "; push " << push << ", rows " << StatsOf(*core, "t").rows);
    REQUIRE(pushed.ok());
    core->RunLifecycle();
    most = std::max(most, StatsOf(*core, "t").rows);
    CHECK(core->budget().used() <= core->budget().limit());
  }
  const TableStats t = StatsOf(*core, "t");
  INFO(t.rows << " rows of at most " << most << ", " << t.evicted_memory << " evicted, " << refusals
              << " pushes refused once");
  CHECK(t.evicted_memory > 100'000);  // 150,000 keys streamed through ~40,000 rows of memory
  CHECK(t.rows >= most / 2);          // (the table keeps most of what fits)
  // The newest keys are held, the oldest gone (read as never seen: the initializer's values).
  const Initializer init(ResolveTableConfig(LifecycleTable("t", {}))->initializer);
  auto initial = [&](uint64_t key) {
    return std::vector<float>{init.Value(key, 0), init.Value(key, 1)};
  };
  CHECK(PullRows(*core, "t", 2, {1}) == initial(1));
  CHECK(PullRows(*core, "t", 2, {150'000}) != initial(150'000));
}

// ---- The disk tier (docs/embedding_lifecycle.md, "The disk tier") ----

TEST_CASE("the disk tier: demotions travel in the log, a TTL empties both tiers and checkpoints",
          "[state_machine][lifecycle][tier]") {
  const std::string dir = FreshDir("tessera_tier_");
  ServerCoreOptions p;
  p.checkpoint_dir = dir;
  ClockedPair clocked(p);
  std::atomic<int64_t>& clock = clocked.clock;
  ReplicaPair& pair = clocked.pair;
  ServerCore& core = *pair.primary;
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(
                  CreateReq(LifecycleTable("t", {.ttl_seconds = 120, .tier_ram_rows = 50})), &cr)
              .ok());
  // The same pushes into a table without a lifecycle: the values every pull must match.
  REQUIRE(core.CreateTable(CreateReq(SparseConfig("u", 2, OptimizerKind::kAdagrad)), &cr).ok());
  std::vector<uint64_t> keys, again;
  for (uint64_t k = 1; k <= 200; ++k) keys.push_back(k * 7919);
  for (size_t i = 0; i < keys.size(); i += 2) again.push_back(keys[i]);
  uint64_t seq = 0;
  for (const char* table : {"t", "u"}) PushKeys(core, table, keys, &seq);
  CHECK(core.RunLifecycle() > 0);  // over the RAM capacity: the rows above it go to disk
  const TableStats moved = StatsOf(core, "t");
  CHECK(moved.rows <= 50);
  CHECK(moved.rows + moved.disk_rows == 200);
  CHECK(moved.demoted == moved.disk_rows);
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
  CHECK(StatsOf(*pair.backup, "t").disk_rows == moved.disk_rows);  // (demotions are entries)
  CHECK(PullRows(core, "t", 2, keys) == PullRows(core, "u", 2, keys));
  // Half of them pushed again (at 1,060 s): those on disk come back, values as without a tier.
  clock = 1'060'000;
  for (const char* table : {"t", "u"}) PushKeys(core, table, again, &seq);
  CHECK(StatsOf(core, "t").promoted > 0);
  CHECK(PullRows(core, "t", 2, keys) == PullRows(core, "u", 2, keys));
  core.RunLifecycle();
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
  CHECK(StatsOf(*pair.backup, "t").promoted == StatsOf(core, "t").promoted);
  // A checkpoint holds both tiers.
  REQUIRE(WriteCheckpoint(core, dir, 1).ok());
  ServerCoreOptions fresh_options;
  fresh_options.checkpoint_dir = dir;
  fresh_options.lifecycle_interval_ms = 0;
  {
    auto restored = *ServerCore::Create(fresh_options);
    REQUIRE(RestoreNewest(*restored).ok());
    const TableStats r = StatsOf(*restored, "t");
    CHECK(r.rows + r.disk_rows == 200);  // (placement at restore: tier_test.cc)
    CHECK(PullRows(*restored, "t", 2, keys) == PullRows(core, "u", 2, keys));
  }
  // At 1,120 s the keys not pushed again are 120 s old: the TTL removes them from RAM and disk,
  // on every replica, and from the next checkpoint.
  clock = 1'120'000;
  core.RunLifecycle();
  const TableStats after = StatsOf(core, "t");
  CHECK(after.rows + after.disk_rows == again.size());
  CHECK(after.evicted_ttl == keys.size() - again.size());
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
  REQUIRE(core.CreateTable(CreateReq(SparseConfig("never", 2, OptimizerKind::kAdagrad)), &cr).ok());
  CHECK(PullRows(core, "t", 2, {keys[1], keys[3]}) ==
        PullRows(core, "never", 2, {keys[1], keys[3]}));
  REQUIRE(WriteCheckpoint(core, dir, 2).ok());
  {
    auto restored = *ServerCore::Create(fresh_options);
    REQUIRE(RestoreNewest(*restored).ok());
    const TableStats r = StatsOf(*restored, "t");
    CHECK(r.rows + r.disk_rows == again.size());
    CHECK(PullRows(*restored, "t", 2, again) == PullRows(core, "u", 2, again));
  }
  // A joiner by catch-up snapshot holds the same rows in the same tiers (the digest has both).
  REQUIRE(pair.Resync().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
  CHECK(StatsOf(*pair.backup, "t").disk_rows == StatsOf(core, "t").disk_rows);
  std::filesystem::remove_all(dir);
}
TEST_CASE("a TTL in steps: pushes carry their step, BSP steps count, every replica agrees",
          "[state_machine][lifecycle]") {
  ClockedPair clocked;
  ReplicaPair& pair = clocked.pair;
  ServerCore& core = *pair.primary;
  v1::CreateTableResponse cr;
  REQUIRE(core.CreateTable(CreateReq(LifecycleTable("t", {.ttl_steps = 10})), &cr).ok());
  uint64_t seq = 0;
  auto push = [&](const std::vector<uint64_t>& keys, uint64_t step, uint64_t accumulate = 0) {
    v1::PushSparseRequest req = SparsePushReq(
        "t", 2, keys, std::vector<float>(keys.size() * 2, 1.0f), 5, ++seq, 1, accumulate);
    req.set_step(step);
    v1::PushResponse pr;
    return core.PushSparse(req, &pr);
  };
  // A push without a step is refused, before the log: its rows would look never updated.
  const uint64_t lsn = core.lsn();
  absl::Status refused = push({1}, 0);
  CHECK(refused.code() == absl::StatusCode::kInvalidArgument);
  CHECK(refused.message().find("training steps") != std::string::npos);
  CHECK(core.lsn() == lsn);
  REQUIRE(push({1, 2, 3}, 1).ok());
  REQUIRE(push({2, 3}, 5).ok());
  // BSP: the step's sums are applied at ApplyStep, dated by that step.
  REQUIRE(push({3}, 0, /*accumulate=*/8).ok());
  v1::ApplyStepResponse ar;
  REQUIRE(core.ApplyStep(ApplyStepReq("t", 8, 1.0f), &ar).ok());
  CHECK(core.RunLifecycle() == 0);  // step 8: nothing is 10 steps old
  REQUIRE(push({4}, 12).ok());      // step 12: key 1 (step 1) is 11 old
  CHECK(core.RunLifecycle() == 1);
  REQUIRE(push({4}, 16).ok());  // step 16: key 2 (step 5) is 11 old; key 3 (8) is 8
  CHECK(core.RunLifecycle() == 1);
  CHECK(StatsOf(core, "t").rows == 2);
  REQUIRE(pair.Replicate().ok());
  CHECK(pair.primary->StateDigest() == pair.backup->StateDigest());
  CHECK(StatsOf(*pair.backup, "t").evicted_ttl == 2);
}

TEST_CASE("near the memory limit a table with a disk tier moves its oldest rows to disk",
          "[state_machine][lifecycle][tier]") {
  // As the TTL case above with only a disk tier (its RAM capacity never reached): near the
  // limit the rounds demote the oldest rows instead of removing them, every push comes
  // through (after a refusal, a round), and every key keeps its row, in RAM or on disk.
  ServerCoreOptions o;
  o.max_memory_bytes = 4 << 20;
  o.lifecycle_interval_ms = 0;  // (rounds run here)
  std::atomic<int64_t> clock{1'000'000};
  o.testing_clock_ms = [&clock] { return clock.load(); };
  std::unique_ptr<ServerCore> core = *ServerCore::Create(o);
  v1::CreateTableResponse cr;
  REQUIRE(
      core->CreateTable(CreateReq(LifecycleTable("t", {.tier_ram_rows = 10'000'000})), &cr).ok());
  uint64_t seq = 0;
  for (uint64_t push = 0; push < 150; ++push) {
    clock += 1000;
    std::vector<uint64_t> keys(1000);
    for (uint64_t i = 0; i < keys.size(); ++i) keys[i] = push * 1000 + i + 1;
    const auto req =
        SparsePushReq("t", 2, keys, std::vector<float>(keys.size() * 2, 1.0f), 9, ++seq);
    v1::PushResponse pr;
    absl::Status pushed = core->PushSparse(req, &pr);
    if (!pushed.ok()) {
      CHECK(pushed.code() == absl::StatusCode::kResourceExhausted);
      core->RunLifecycle();
      pushed = core->PushSparse(req, &pr);
    }
    INFO(pushed.ToString() << "; push " << push);
    REQUIRE(pushed.ok());
    core->RunLifecycle();
    CHECK(core->budget().used() <= core->budget().limit());
  }
  const TableStats t = StatsOf(*core, "t");
  CHECK(t.rows + t.disk_rows == 150'000);
  CHECK(t.disk_rows > 100'000);
  CHECK(t.evicted_memory == 0);
  // The oldest key, on disk, reads as pushed (not the initializer's values).
  const Initializer init(ResolveTableConfig(LifecycleTable("t", {}))->initializer);
  CHECK(PullRows(*core, "t", 2, {1}) != std::vector<float>{init.Value(1, 0), init.Value(1, 1)});
}

}  // namespace
}  // namespace tessera
