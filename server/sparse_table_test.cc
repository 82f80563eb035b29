#include "server/sparse_table.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <vector>

namespace tessera {
namespace {

TableConfig Config(OptimizerKind opt, InitializerConfig init = {}) {
  TableConfig t{.name = "emb", .kind = TableKind::kSparse, .dim = 3};
  t.optimizer.kind = opt;
  t.initializer = init;
  absl::StatusOr<TableConfig> r = ResolveTableConfig(t);
  REQUIRE(r.ok());
  return *r;
}

std::vector<bool> AllOwned() { return std::vector<bool>(kDefaultNumVshards, true); }

std::vector<float> Pull(SparseTable& t, const std::vector<uint64_t>& keys) {
  VshardGrouping g;
  GroupByVshard(keys, t.num_vshards(), &g);
  std::vector<float> out(keys.size() * t.dim(), -1.0f);
  t.Pull(keys, g, out.data(), 1);
  return out;
}

void Push(SparseTable& t, const std::vector<uint64_t>& keys, const std::vector<float>& grads) {
  VshardGrouping g;
  GroupByVshard(keys, t.num_vshards(), &g);
  t.Push(keys, g, grads.data(), 1);
}

TEST_CASE("rows are created on first touch with the initializer", "[sparse]") {
  const TableConfig c =
      Config(OptimizerKind::kSgd, {.kind = InitializerKind::kUniform, .seed = 42});
  SparseTable t(c, AllOwned());
  CHECK(t.num_rows() == 0);
  const std::vector<uint64_t> keys = {5, 1ULL << 40, 5, 77};
  std::vector<float> out = Pull(t, keys);
  CHECK(t.num_rows() == 3);  // 5 appears twice
  const Initializer init(c.initializer);
  for (size_t i = 0; i < keys.size(); ++i) {
    for (uint32_t d = 0; d < 3; ++d) CHECK(out[i * 3 + d] == init.Value(keys[i], d));
  }
  // A second table with the same config creates identical rows, whatever the order.
  SparseTable t2(c, AllOwned());
  std::vector<float> out2 = Pull(t2, {77, 1ULL << 40, 5});
  CHECK(out2[0] == out[9]);
  CHECK(out2[3] == out[3]);
  CHECK(out2[6] == out[0]);
  // Pushing a new key creates it too.
  Push(t, {1000}, {0, 0, 0});
  CHECK(t.num_rows() == 4);
}

TEST_CASE("pushes update only the pushed rows", "[sparse]") {
  SparseTable t(Config(OptimizerKind::kAdd), AllOwned());
  Push(t, {1, 2}, {1, 2, 3, 10, 20, 30});
  Push(t, {2}, {1, 1, 1});
  std::vector<float> out = Pull(t, {2, 1, 3});
  const std::vector<float> want = {11, 21, 31, 1, 2, 3, 0, 0, 0};
  CHECK(out == want);
}

TEST_CASE("Adam keeps one step counter per row", "[sparse]") {
  SparseTable t(Config(OptimizerKind::kAdam), AllOwned());
  const std::vector<float> g = {1, 1, 1};
  for (int i = 0; i < 5; ++i) Push(t, {10}, g);  // row 10 at step 5
  Push(t, {20}, g);                              // row 20 at step 1
  std::vector<float> out = Pull(t, {10, 20});
  // First Adam step moves every weight by exactly lr (bias correction); row 20 must show it.
  for (int d = 0; d < 3; ++d) CHECK(out[3 + d] == Approx(-0.001f).epsilon(1e-4));
  // Row 10 after 5 steps of the same gradient: 5 * lr.
  for (int d = 0; d < 3; ++d) CHECK(out[d] == Approx(-0.005f).epsilon(1e-3));
}

TEST_CASE("a large push across many vshards", "[sparse]") {
  SparseTable t(Config(OptimizerKind::kAdd), AllOwned());
  std::vector<uint64_t> keys;
  std::vector<float> grads;
  for (uint64_t k = 0; k < 20000; ++k) {
    keys.push_back(k * 7919);
    for (int d = 0; d < 3; ++d) grads.push_back(static_cast<float>(k % 100 + d));
  }
  Push(t, keys, grads);
  CHECK(t.num_rows() == 20000);
  CHECK(Pull(t, keys) == grads);
  CHECK(t.bytes() > 20000 * 3 * sizeof(float));
}

// ---- Lifecycle (docs/embedding_lifecycle.md) ----

using Plan = std::vector<std::pair<uint32_t, std::vector<SparseTable::Victim>>>;

TableConfig LifecycleConfigOf(OptimizerKind opt, LifecycleConfig l) {
  TableConfig t{.name = "emb", .kind = TableKind::kSparse, .dim = 3};
  t.optimizer.kind = opt;
  t.initializer = {.kind = InitializerKind::kUniform, .seed = 9};
  t.lifecycle = l;
  absl::StatusOr<TableConfig> r = ResolveTableConfig(t);
  REQUIRE(r.ok());
  return *r;
}

// Pushes `keys` (gradient 1 everywhere) with entry time `time_s` seconds.
void PushAt(SparseTable& t, const std::vector<uint64_t>& keys, int64_t time_s) {
  VshardGrouping g;
  GroupByVshard(keys, t.num_vshards(), &g);
  const std::vector<float> grads(keys.size() * t.dim(), 1.0f);
  t.Push(keys, g, grads.data(), 1, false, 0, 1, time_s * 1000);
}

// The keys a plan chose, sorted.
std::vector<uint64_t> Chosen(const Plan& plan) {
  std::vector<uint64_t> keys;
  for (const auto& [v, victims] : plan) {
    for (const SparseTable::Victim& victim : victims) keys.push_back(victim.key);
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

// Removes what a plan chose, with its stamps; returns the rows removed.
uint32_t RemovePlanned(SparseTable& t, const Plan& plan, uint32_t* kept) {
  uint32_t removed = 0;
  for (const auto& [v, victims] : plan) {
    std::vector<uint64_t> keys, stamps;
    for (const SparseTable::Victim& victim : victims) {
      keys.push_back(victim.key);
      stamps.push_back(victim.stamp);
    }
    removed += t.Remove(v, keys, stamps, 5, kept);
  }
  return removed;
}

TEST_CASE("a table with a lifecycle keeps 8 bytes of metadata and pulls create no rows",
          "[sparse][lifecycle]") {
  const TableConfig plain =
      Config(OptimizerKind::kAdam, {.kind = InitializerKind::kUniform, .seed = 9});
  const TableConfig with = LifecycleConfigOf(OptimizerKind::kAdam, {.ttl_seconds = 60});
  SparseTable a(plain, AllOwned()), b(with, AllOwned());
  CHECK(b.row_bytes() == a.row_bytes() + SparseTable::kMetaBytes);
  CHECK(b.row_charge() == a.row_charge() + SparseTable::kMetaBytes);
  const std::vector<uint64_t> keys = {4, 8, 15};
  CHECK(Pull(b, keys) == Pull(a, keys));  // the initializer's values...
  CHECK(b.num_rows() == 0);               // ...without a row
  CHECK(a.num_rows() == 3);
  PushAt(b, {4}, 1000);
  CHECK(b.num_rows() == 1);
}

TEST_CASE("a removal with stamps keeps a row updated since the remover looked",
          "[sparse][lifecycle]") {
  SparseTable t(LifecycleConfigOf(OptimizerKind::kSgd, {.ttl_seconds = 10}), AllOwned());
  PushAt(t, {1, 2, 3}, 1000);
  SparseTable::EvictionPlan plan;
  t.PlanEvictions(1009'999, true, 0, &plan);
  CHECK(plan.ttl.empty());  // 9.999 s < 10 s
  t.PlanEvictions(1010'000, true, 0, &plan);
  CHECK(Chosen(plan.ttl) == std::vector<uint64_t>{1, 2, 3});
  for (const auto& [v, victims] : plan.ttl) {
    for (const SparseTable::Victim& victim : victims) {
      CHECK(victim.stamp == ((uint64_t{1000} << 32) | 1));  // second 1000, one update
    }
  }
  PushAt(t, {2}, 1000);  // the same second: the stamp still changes (its count)
  uint32_t kept = 0;
  CHECK(RemovePlanned(t, plan.ttl, &kept) == 2);
  CHECK(kept == 1);
  CHECK(t.num_rows() == 1);
  // Without stamps a removal takes an updated row too.
  t.PlanEvictions(1010'000, true, 0, &plan);
  REQUIRE(Chosen(plan.ttl) == std::vector<uint64_t>{2});
  PushAt(t, {2}, 1010);
  CHECK(t.Remove(plan.ttl[0].first, std::vector<uint64_t>{2}, {}, 5) == 1);
}

TEST_CASE("capacity with LRU removes the least recently updated rows of the whole table",
          "[sparse][lifecycle]") {
  SparseTable t(LifecycleConfigOf(OptimizerKind::kAdagrad, {.capacity_rows = 100}), AllOwned());
  for (uint64_t k = 1; k <= 150; ++k) PushAt(t, {k}, 1000 + static_cast<int64_t>(k));
  PushAt(t, {3, 7}, 2000);  // recently updated: kept
  SparseTable::EvictionPlan plan;
  t.PlanEvictions(2001'000, false, t.CapacityRows(), &plan);
  CHECK(plan.ttl.empty());
  // Down to 95 rows: the 55 oldest, skipping 3 and 7.
  std::vector<uint64_t> want;
  for (uint64_t k = 1; want.size() < 55; ++k) {
    if (k != 3 && k != 7) want.push_back(k);
  }
  CHECK(Chosen(plan.capacity) == want);
  uint32_t kept = 0;
  CHECK(RemovePlanned(t, plan.capacity, &kept) == 55);
  CHECK(t.num_rows() == 95);
  t.PlanEvictions(2001'000, false, t.CapacityRows(), &plan);
  CHECK(plan.capacity.empty());  // at 95 <= 100
}

TEST_CASE("LRU breaks ties within a second by the fewest updates", "[sparse][lifecycle]") {
  SparseTable t(LifecycleConfigOf(OptimizerKind::kSgd, {.capacity_rows = 20}), AllOwned());
  for (uint64_t k = 1; k <= 30; ++k) {
    for (uint64_t n = 0; n < k % 5 + 1; ++n) PushAt(t, {k}, 1000);  // key k: k % 5 + 1 updates
  }
  SparseTable::EvictionPlan plan;
  t.PlanEvictions(1000'000, false, t.CapacityRows(), &plan);
  // Down to 19: the 11 rows with the fewest updates: the six with one (keys 5, 10, .., 30) and
  // five of the six with two (1, 6, .., 26).
  const std::vector<uint64_t> chosen = Chosen(plan.capacity);
  REQUIRE(chosen.size() == 11);
  int ones = 0, twos = 0;
  for (uint64_t k : chosen) {
    ones += k % 5 == 0;
    twos += k % 5 == 1;
  }
  CHECK(ones == 6);
  CHECK(twos == 5);
}

TEST_CASE("capacity with LFU removes the least frequently updated rows by decayed count",
          "[sparse][lifecycle]") {
  SparseTable t(LifecycleConfigOf(OptimizerKind::kSgd, {.capacity_rows = 10,
                                                        .victims = EvictionVictims::kLfu,
                                                        .lfu_half_life_seconds = 100}),
                AllOwned());
  // Key k (1..11) updated k times at second 10,000; key 12 fifty times 1,000 s earlier: ten
  // half-lives, so its count decays to 0.
  for (uint64_t k = 1; k <= 11; ++k) {
    for (uint64_t n = 0; n < k; ++n) PushAt(t, {k}, 10'000);
  }
  for (int n = 0; n < 50; ++n) PushAt(t, {12}, 9'000);
  SparseTable::EvictionPlan plan;
  t.PlanEvictions(10'000'000, false, t.CapacityRows(), &plan);
  // 12 rows, down to 10 - 10/20 = 10: two go, the lowest decayed counts: 12 (50 >> 10 = 0)
  // and 1 (count 1).
  CHECK(Chosen(plan.capacity) == std::vector<uint64_t>{1, 12});
}

TEST_CASE("capacity in bytes counts what the budget charges a row", "[sparse][lifecycle]") {
  SparseTable t(LifecycleConfigOf(OptimizerKind::kSgd, {.capacity_bytes = 1000}), AllOwned());
  CHECK(t.CapacityRows() == 1000 / t.row_charge());
  SparseTable u(
      LifecycleConfigOf(OptimizerKind::kSgd, {.capacity_rows = 2, .capacity_bytes = 1000}),
      AllOwned());
  CHECK(u.CapacityRows() == 2);
}

TEST_CASE("removal records are bounded: beyond the limit they go and the next checkpoint is full",
          "[sparse][lifecycle]") {
  SparseTable t(Config(OptimizerKind::kAdd), AllOwned());
  std::vector<uint64_t> keys;
  for (uint64_t k = 1; k <= 100; ++k) keys.push_back(k);
  Push(t, keys, std::vector<float>(keys.size() * 3, 1.0f));
  for (uint64_t k : keys)
    t.Remove(VshardOfKey(k, t.num_vshards()), std::vector<uint64_t>{k}, {}, 5);
  CHECK(t.removal_records() == 100);
  CHECK(t.CanIncrement(4));
  CHECK_FALSE(t.BoundRemovals(5, 100));  // (at the limit: kept)
  t.BeginCut(5);                         // a checkpoint being written needs them
  CHECK_FALSE(t.BoundRemovals(5, 50));
  CHECK(t.removal_records() == 100);
  t.EndCut();
  CHECK(t.BoundRemovals(6, 50));
  CHECK(t.removal_records() == 0);
  CHECK_FALSE(t.CanIncrement(4));  // an increment on an older checkpoint would lack them
  CHECK(t.CanIncrement(6));
}

TEST_CASE("admission: a key becomes a row at its k-th push, counted per vshard",
          "[sparse][lifecycle]") {
  SparseTable t(LifecycleConfigOf(OptimizerKind::kAdd, {.admission_min_count = 3}), AllOwned());
  SparseTable plain(Config(OptimizerKind::kAdd, {.kind = InitializerKind::kUniform, .seed = 9}),
                    AllOwned());
  const std::vector<float> init = Pull(plain, {7});
  PushAt(t, {7}, 1000);
  PushAt(t, {7}, 1000);
  CHECK(t.num_rows() == 0);  // two sightings: counted, gradients dropped
  CHECK(Pull(t, {7}) == init);
  PushAt(t, {7}, 1000);  // the third creates the row and applies its gradient
  CHECK(t.num_rows() == 1);
  std::vector<float> want = init;
  for (float& x : want) x += 1.0f;
  CHECK(Pull(t, {7}) == want);
  CHECK(t.lifecycle_counters().admitted == 1);
  CHECK(t.lifecycle_counters().not_admitted == 2);
  // Assigned values (loaded weights) are admitted at once.
  VshardGrouping g;
  GroupByVshard(std::vector<uint64_t>{8}, t.num_vshards(), &g);
  const std::vector<float> w = {1, 2, 3};
  t.Push(std::vector<uint64_t>{8}, g, w.data(), 1, /*assign=*/true);
  CHECK(Pull(t, {8}) == w);
  // A removed key keeps its count: its next push brings it back at once.
  t.Remove(VshardOfKey(7, t.num_vshards()), std::vector<uint64_t>{7}, {}, 5);
  PushAt(t, {7}, 1001);
  CHECK(Pull(t, {7}) == want);
  CHECK(t.sketch_bytes() > 0);
}

TEST_CASE("admission: a cut takes each vshard's sketch as it was at the cut",
          "[sparse][lifecycle]") {
  const TableConfig c = LifecycleConfigOf(OptimizerKind::kAdd, {.admission_min_count = 3});
  SparseTable t(c, AllOwned());
  PushAt(t, {11}, 1000);  // one sighting before the cut
  const uint32_t v = VshardOfKey(11, t.num_vshards());
  t.BeginCut(1);
  PushAt(t, {11}, 1000);  // a second after it: the cut must not see it
  VshardSnapshot snap;
  REQUIRE(t.TakeVshard(v, 1, 0, &snap).ok());
  // Loaded into a fresh table, that state needs two more pushes, as the source did at the cut.
  // (Mutation: taking the live sketch instead admits at the first.)
  SparseTable u(c, AllOwned());
  REQUIRE(u.LoadState(v, snap.state).ok());
  PushAt(u, {11}, 1000);
  CHECK(u.num_rows() == 0);
  PushAt(u, {11}, 1000);
  CHECK(u.num_rows() == 1);
  // A state of another shape, or for a table without admission, is refused.
  SparseTable w(LifecycleConfigOf(OptimizerKind::kAdd,
                                  {.admission_min_count = 3, .admission_sketch_depth = 2}),
                AllOwned());
  CHECK(w.LoadState(v, snap.state).code() == absl::StatusCode::kInvalidArgument);
  SparseTable plain(Config(OptimizerKind::kAdd), AllOwned());
  CHECK(plain.LoadState(v, snap.state).code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("exact admission: the k-th push creates the row, an evicted key counts afresh",
          "[sparse][lifecycle]") {
  const TableConfig c =
      LifecycleConfigOf(OptimizerKind::kAdd, {.admission_min_count = 3, .admission_exact = true});
  REQUIRE(c.lifecycle.admission_exact_keys == kDefaultExactKeys);
  SparseTable t(c, AllOwned());
  // Many keys, each pushed a number of times from 1 to 4: exactly those pushed 3 times or more
  // get a row (a sketch may admit a few more).
  std::vector<uint64_t> keys;
  for (uint64_t k = 1; k <= 4000; ++k) keys.push_back(k * 2654435761ULL);
  uint64_t want = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const int times = 1 + static_cast<int>(i % 4);
    for (int n = 0; n < times; ++n) PushAt(t, {keys[i]}, 1000);
    want += times >= 3 ? 1 : 0;
  }
  CHECK(t.num_rows() == want);
  for (size_t i = 0; i < keys.size(); ++i) CHECK(t.HasRow(keys[i]) == (i % 4 >= 2));
  // An admitted key left the counter: removed, it needs three pushes again.
  const uint64_t k = keys[2];
  t.Remove(VshardOfKey(k, t.num_vshards()), std::vector<uint64_t>{k}, {}, 5);
  PushAt(t, {k}, 1001);
  PushAt(t, {k}, 1001);
  CHECK_FALSE(t.HasRow(k));
  PushAt(t, {k}, 1001);
  CHECK(t.HasRow(k));
  // Sketch fields with exact admission are refused.
  TableConfig both{.name = "emb", .kind = TableKind::kSparse, .dim = 3};
  both.lifecycle = {
      .admission_min_count = 3, .admission_sketch_width = 1024, .admission_exact = true};
  CHECK(ResolveTableConfig(both).status().message().find("without a sketch") != std::string::npos);
}

TEST_CASE("a TTL in steps dates rows by the pushes' steps, not by time", "[sparse][lifecycle]") {
  const TableConfig c = LifecycleConfigOf(OptimizerKind::kAdd, {.ttl_steps = 100});
  SparseTable t(c, AllOwned());
  REQUIRE(t.step_clock());
  auto push = [&](const std::vector<uint64_t>& keys, uint64_t step) {
    VshardGrouping g;
    GroupByVshard(keys, t.num_vshards(), &g);
    const std::vector<float> grads(keys.size() * t.dim(), 1.0f);
    // (Entry times far apart: only the steps may matter.)
    t.Push(keys, g, grads.data(), 1, false, 0, 1, static_cast<int64_t>(step) * 1'000'000, step);
  };
  push({1, 2, 3}, 10);
  push({2}, 60);
  push({3}, 115);
  CHECK(t.max_step() == 115);
  SparseTable::EvictionPlan plan;
  t.PlanEvictions(0, /*ttl=*/true, 0, &plan);  // at step 115: key 1 (step 10) is 105 old
  CHECK(Chosen(plan.ttl) == std::vector<uint64_t>{1});
  push({4}, 160);  // step 160: key 2 (60) is 100 old
  t.PlanEvictions(0, /*ttl=*/true, 0, &plan);
  CHECK(Chosen(plan.ttl) == std::vector<uint64_t>{1, 2});
  // A restored table's step is its rows' highest.
  VshardSnapshot snap;
  t.BeginCut(1);
  const uint32_t v = VshardOfKey(4, t.num_vshards());
  REQUIRE(t.TakeVshard(v, 1, 0, &snap).ok());
  SparseTable restored(c, AllOwned());
  for (size_t i = 0; i < snap.keys.size(); ++i) {
    restored.LoadRow(v, snap.keys[i],
                     absl::string_view(snap.payload.data() + i * t.row_bytes(), t.row_bytes()));
  }
  CHECK(restored.max_step() == 160);
  // One clock a table: steps with seconds, idle seconds or LFU are refused.
  TableConfig both{.name = "emb", .kind = TableKind::kSparse, .dim = 3};
  both.lifecycle = {.ttl_seconds = 5, .ttl_steps = 5};
  CHECK(ResolveTableConfig(both).status().message().find("counts steps") != std::string::npos);
}

}  // namespace
}  // namespace tessera
