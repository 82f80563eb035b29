// The disk tier of sparse tables (docs/embedding_lifecycle.md, "The disk tier").
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "server/sparse_table.h"
#include "server/tier_store.h"

namespace tessera {
namespace {

std::shared_ptr<TierStore> NewTier() {
  absl::StatusOr<std::unique_ptr<TierStore>> tier = TierStore::Open("", 8 << 20);
  REQUIRE(tier.ok());
  return *std::move(tier);
}

TableConfig TierConfig(OptimizerKind opt, LifecycleConfig l = {.tier_ram_rows = 100}) {
  TableConfig t{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  t.optimizer.kind = opt;
  t.initializer = {.kind = InitializerKind::kUniform, .seed = 5};
  t.lifecycle = l;
  absl::StatusOr<TableConfig> r = ResolveTableConfig(t);
  REQUIRE(r.ok());
  return *r;
}

std::vector<bool> AllOwned() { return std::vector<bool>(kDefaultNumVshards, true); }

void PushAt(SparseTable& t, const std::vector<uint64_t>& keys, uint64_t gen, int64_t time_s,
            float g = 0.5f) {
  VshardGrouping groups;
  GroupByVshard(keys, t.num_vshards(), &groups);
  std::vector<float> grads(keys.size() * t.dim());
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = g * static_cast<float>(i % 7 + 1);
  t.Push(keys, groups, grads.data(), gen, false, 0, 1, time_s * 1000);
}

std::vector<float> Pull(SparseTable& t, const std::vector<uint64_t>& keys) {
  VshardGrouping groups;
  GroupByVshard(keys, t.num_vshards(), &groups);
  std::vector<float> out(keys.size() * t.dim());
  t.Pull(keys, groups, out.data(), 1);
  return out;
}

// Demotes `keys` (any vshards) without stamps; returns the rows moved.
uint32_t DemoteKeys(SparseTable& t, const std::vector<uint64_t>& keys) {
  uint32_t n = 0;
  for (uint64_t k : keys) n += t.Demote(VshardOfKey(k, t.num_vshards()), {k}, {});
  return n;
}

// Every owned vshard's rows as a cut at cut_gen takes them: keys and payloads, in order.
struct Taken {
  std::vector<uint64_t> keys;
  std::string payload;
  std::vector<bool> demoted;
};
Taken TakeAll(SparseTable& t, uint64_t cut_gen, uint64_t parent_gen = 0) {
  Taken all;
  for (uint32_t v = 0; v < t.num_vshards(); ++v) {
    VshardSnapshot snap;
    REQUIRE(t.TakeVshard(v, cut_gen, parent_gen, &snap).ok());
    all.keys.insert(all.keys.end(), snap.keys.begin(), snap.keys.end());
    all.payload += snap.payload;
    all.demoted.insert(all.demoted.end(), snap.demoted.begin(), snap.demoted.end());
  }
  return all;
}

TEST_CASE("the disk tier: rows demoted and promoted at random stay bit-exact (Adam, Adagrad)",
          "[sparse][tier]") {
  for (OptimizerKind opt : {OptimizerKind::kAdam, OptimizerKind::kAdagrad}) {
    const TableConfig c = TierConfig(opt);
    SparseTable tiered(c, AllOwned());
    tiered.AttachTier(NewTier());
    SparseTable ram(c, AllOwned());  // the same rows, never demoted
    std::mt19937_64 rng(7);
    std::vector<uint64_t> keys;
    for (uint64_t k = 0; k < 400; ++k) keys.push_back(k * 0x9E3779B97F4A7C15ULL);
    for (int round = 0; round < 30; ++round) {
      std::vector<uint64_t> pushed, demoted;
      for (uint64_t k : keys) {
        const uint64_t r = rng() % 4;
        if (r == 0) pushed.push_back(k);
        if (r == 1) demoted.push_back(k);
      }
      PushAt(tiered, pushed, 1, 1000 + round, 0.1f * (round + 1));
      PushAt(ram, pushed, 1, 1000 + round, 0.1f * (round + 1));
      DemoteKeys(tiered, demoted);
      // Pulls read demoted rows where they are, without bringing them back.
      const uint64_t on_disk = tiered.disk_rows();
      CHECK(Pull(tiered, keys) == Pull(ram, keys));
      CHECK(tiered.disk_rows() == on_disk);
    }
    CHECK(tiered.disk_rows() > 0);
    CHECK(tiered.lifecycle_counters().promoted > 0);
    CHECK(tiered.num_rows() + tiered.disk_rows() == ram.num_rows());
    // Every byte of every row (weights, slots, Adam's step, metadata), in both tiers.
    const Taken a = TakeAll(tiered, 1), b = TakeAll(ram, 1);
    CHECK(a.keys == b.keys);
    CHECK(a.payload == b.payload);
    CHECK(std::count(a.demoted.begin(), a.demoted.end(), true) ==
          static_cast<long>(tiered.disk_rows()));
  }
}

TEST_CASE("the disk tier: a cut in progress takes the rows as they were at it, whatever moves",
          "[sparse][tier]") {
  const TableConfig c = TierConfig(OptimizerKind::kAdagrad);
  SparseTable tiered(c, AllOwned());
  tiered.AttachTier(NewTier());
  SparseTable ram(c, AllOwned());
  std::vector<uint64_t> keys;
  for (uint64_t k = 1; k <= 300; ++k) keys.push_back(k * 7919);
  PushAt(tiered, keys, 1, 1000);
  PushAt(ram, keys, 1, 1000);
  // A third on disk at the cut.
  const std::vector<uint64_t> before(keys.begin(), keys.begin() + 100);
  REQUIRE(DemoteKeys(tiered, before) == 100);
  tiered.BeginCut(1);
  ram.BeginCut(1);
  // After the cut (generation 2): disk rows pushed (promoted) and removed; RAM rows pushed and
  // then demoted, or demoted unchanged; new rows created and demoted.
  const std::vector<uint64_t> promote(keys.begin(), keys.begin() + 30);
  const std::vector<uint64_t> remove(keys.begin() + 30, keys.begin() + 60);
  const std::vector<uint64_t> changed(keys.begin() + 100, keys.begin() + 150);
  const std::vector<uint64_t> unchanged(keys.begin() + 150, keys.begin() + 200);
  const std::vector<uint64_t> fresh = {11, 12, 13};
  for (SparseTable* t : {&tiered, &ram}) {
    PushAt(*t, promote, 2, 1001);
    PushAt(*t, changed, 2, 1001);
    PushAt(*t, fresh, 2, 1001);
    for (uint64_t k : remove) t->Remove(VshardOfKey(k, t->num_vshards()), {k}, {}, 2);
  }
  DemoteKeys(tiered, changed);
  DemoteKeys(tiered, unchanged);
  DemoteKeys(tiered, fresh);
  DemoteKeys(tiered, promote);  // (promoted by the push, then demoted again)
  const Taken a = TakeAll(tiered, 1), b = TakeAll(ram, 1);
  REQUIRE(a.keys.size() == keys.size());
  CHECK(a.keys == b.keys);
  CHECK(a.payload == b.payload);
  // And the state after the cut agrees too (the next cut).
  tiered.BeginCut(2);
  ram.BeginCut(2);
  const Taken a2 = TakeAll(tiered, 2, 1), b2 = TakeAll(ram, 2, 1);
  CHECK(a2.keys == b2.keys);
  CHECK(a2.payload == b2.payload);
}

TEST_CASE("the disk tier: a removal takes a row off the disk and leaves a tombstone",
          "[sparse][tier]") {
  const TableConfig c = TierConfig(OptimizerKind::kSgd, {.ttl_seconds = 60, .tier_ram_rows = 10});
  SparseTable t(c, AllOwned());
  t.AttachTier(NewTier());
  PushAt(t, {1, 2, 3}, 1, 1000);
  REQUIRE(DemoteKeys(t, {1, 2}) == 2);
  CHECK(t.HasDemotedRow(1));
  CHECK_FALSE(t.HasRow(1));
  // The TTL finds rows on disk too (with their stamps).
  SparseTable::EvictionPlan plan;
  t.PlanDiskTtl(1059'000, &plan);
  CHECK(plan.ttl.empty());
  t.PlanDiskTtl(1060'000, &plan);
  size_t listed = 0;
  for (const auto& [v, victims] : plan.ttl) {
    std::vector<uint64_t> ks, stamps;
    for (const SparseTable::Victim& x : victims) {
      ks.push_back(x.key);
      stamps.push_back(x.stamp);
    }
    listed += ks.size();
    CHECK(t.Remove(v, ks, stamps, 5) == ks.size());
  }
  CHECK(listed == 2);
  CHECK_FALSE(t.HasDemotedRow(1));
  CHECK_FALSE(t.HasDemotedRow(2));
  CHECK(t.disk_rows() == 0);
  // The increment after it carries their tombstones.
  t.BeginCut(5);
  std::vector<uint64_t> removed;
  for (uint32_t v = 0; v < t.num_vshards(); ++v) {
    VshardSnapshot snap;
    REQUIRE(t.TakeVshard(v, 5, 1, &snap).ok());
    removed.insert(removed.end(), snap.removed.begin(), snap.removed.end());
  }
  std::sort(removed.begin(), removed.end());
  CHECK(removed == std::vector<uint64_t>{1, 2});
  // A stale stamp keeps a demoted row.
  PushAt(t, {3}, 6, 1000);
  REQUIRE(DemoteKeys(t, {3}) == 1);
  uint32_t kept = 0;
  CHECK(t.Remove(VshardOfKey(3, t.num_vshards()), {3}, {uint64_t{1} << 40}, 7, &kept) == 0);
  CHECK(kept == 1);
  CHECK(t.HasDemotedRow(3));
}

TEST_CASE("the disk tier: placed loads rebuild both tiers, and the digest tells them apart",
          "[sparse][tier]") {
  const TableConfig c = TierConfig(OptimizerKind::kAdam);
  SparseTable src(c, AllOwned());
  src.AttachTier(NewTier());
  std::vector<uint64_t> keys;
  for (uint64_t k = 1; k <= 200; ++k) keys.push_back(k * 104729);
  PushAt(src, keys, 1, 1000);
  DemoteKeys(src, std::vector<uint64_t>(keys.begin(), keys.begin() + 80));
  src.BeginCut(1);
  const Taken snap = TakeAll(src, 1);
  REQUIRE(snap.demoted.size() == snap.keys.size());
  const size_t rb = src.row_bytes();
  auto load = [&](SparseTable& dst, bool placed) {
    for (size_t i = 0; i < snap.keys.size(); ++i) {
      const uint32_t v = VshardOfKey(snap.keys[i], dst.num_vshards());
      const absl::string_view row(snap.payload.data() + i * rb, rb);
      if (placed) {
        dst.LoadPlacedEntry(v, snap.keys[i], row, snap.demoted[i]);
      } else {
        dst.LoadRow(v, snap.keys[i], row, SparseTable::Placement::kRam);
      }
    }
  };
  SparseTable joiner(c, AllOwned());
  joiner.AttachTier(NewTier());
  load(joiner, true);
  CHECK(joiner.disk_rows() == 80);
  CHECK(joiner.Digest() == src.Digest());
  // The same rows all in RAM: another digest (the tiers differ).
  SparseTable all_ram(c, AllOwned());
  all_ram.AttachTier(NewTier());
  load(all_ram, false);
  CHECK(all_ram.disk_rows() == 0);
  CHECK(all_ram.Digest() != src.Digest());
  // A restore (LoadEntry) puts the rows beyond each vshard's share of the RAM capacity on disk.
  // (4 vshards: each holds up to its share of 110% plus 4 rows, 22.)
  SparseTable restored(TierConfig(OptimizerKind::kAdam, {.tier_ram_rows = 64}),
                       std::vector<bool>(4, true));
  restored.AttachTier(NewTier());
  for (size_t i = 0; i < snap.keys.size(); ++i) {
    restored.LoadEntry(VshardOfKey(snap.keys[i], restored.num_vshards()), snap.keys[i],
                       absl::string_view(snap.payload.data() + i * rb, rb));
  }
  CHECK(restored.num_rows() + restored.disk_rows() == 200);
  CHECK(restored.num_rows() <= uint64_t{restored.VshardCap(64)} * restored.num_vshards());
  CHECK(restored.disk_rows() > 0);
  CHECK(Pull(restored, keys) == Pull(src, keys));
}

TEST_CASE("the disk tier: demotions chosen by idle time and by the RAM capacity",
          "[sparse][tier]") {
  const TableConfig c =
      TierConfig(OptimizerKind::kSgd, {.tier_ram_rows = 100, .tier_idle_seconds = 30});
  SparseTable t(c, AllOwned());
  t.AttachTier(NewTier());
  std::vector<uint64_t> old, recent;
  for (uint64_t k = 1; k <= 60; ++k) old.push_back(k);
  for (uint64_t k = 61; k <= 160; ++k) recent.push_back(k);
  PushAt(t, old, 1, 1000);
  PushAt(t, recent, 1, 1020);
  SparseTable::EvictionPlan plan;
  // At 1031 s the old rows are idle for 31 s: all of them; then 100 rows stay, and 5 more go
  // to bring the RAM to 95% of its capacity.
  t.PlanDemotions(1031'000, /*idle=*/true, &plan);
  size_t idle = 0, over = 0;
  for (const auto& [v, victims] : plan.ttl) idle += victims.size();
  for (const auto& [v, victims] : plan.capacity) over += victims.size();
  CHECK(idle == 60);
  CHECK(over == 5);
  // Without the idle scan, 160 rows over a capacity of 100: down to 95, the oldest first.
  t.PlanDemotions(1031'000, /*idle=*/false, &plan);
  CHECK(plan.ttl.empty());
  std::vector<uint64_t> chosen;
  for (const auto& [v, victims] : plan.capacity) {
    for (const SparseTable::Victim& x : victims) chosen.push_back(x.key);
  }
  std::sort(chosen.begin(), chosen.end());
  CHECK(chosen.size() == 65);
  CHECK(std::includes(chosen.begin(), chosen.end(), old.begin(), old.end()));
}

}  // namespace
}  // namespace tessera
