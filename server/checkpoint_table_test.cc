// Tables under checkpoints: the cut's copy-on-write, dirty tracking, and bit-exact reloads of
// weights, every optimizer's slots and Adam's step counters.
#include <catch2/catch.hpp>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include "server/dense_table.h"
#include "server/sparse_table.h"

namespace tessera {
namespace {

constexpr OptimizerKind kAll[] = {
    OptimizerKind::kSgd,  OptimizerKind::kMomentum, OptimizerKind::kAdagrad, OptimizerKind::kAdam,
    OptimizerKind::kFtrl, OptimizerKind::kAdd,      OptimizerKind::kAssign};

TableConfig Sparse(OptimizerKind opt) {
  TableConfig t{.name = "s", .kind = TableKind::kSparse, .dim = 5};
  t.optimizer.kind = opt;
  t.initializer = {.kind = InitializerKind::kNormal, .seed = 3};
  return *ResolveTableConfig(t);
}

TableConfig Dense(OptimizerKind opt) {
  TableConfig t{
      .name = "d", .kind = TableKind::kDense, .dense_size = 10007, .dense_block_elems = 999};
  t.optimizer.kind = opt;
  t.initializer = {.kind = InitializerKind::kUniform, .seed = 4};
  return *ResolveTableConfig(t);
}

const std::vector<bool> kAllOwned(kDefaultNumVshards, true);

void PushRandom(SparseTable& t, std::mt19937_64& rng, uint64_t gen, int keys = 300) {
  std::vector<uint64_t> k;
  for (int i = 0; i < keys; ++i) k.push_back(rng() % 1000);
  std::sort(k.begin(), k.end());
  k.erase(std::unique(k.begin(), k.end()), k.end());
  std::vector<float> g(k.size() * t.dim());
  for (float& x : g) x = std::uniform_real_distribution<float>(-1, 1)(rng);
  VshardGrouping groups;
  GroupByVshard(k, t.num_vshards(), &groups);
  t.Push(k, groups, g.data(), gen);
}

void PushRandom(DenseTable& t, std::mt19937_64& rng, uint64_t gen) {
  const uint64_t off = rng() % 5000, len = 1 + rng() % 5000;
  std::vector<float> g(len);
  for (float& x : g) x = std::uniform_real_distribution<float>(-1, 1)(rng);
  t.Push(off, len, g.data(), gen);
}

// Everything a checkpoint would store: (vshard, key, payload) of every row.
using Image = std::vector<std::tuple<uint32_t, uint64_t, std::string>>;

// Through TableData, as checkpoints and snapshots take them.
class ImageSink final : public EntrySink {
 public:
  explicit ImageSink(Image* img) : img_(img) {}
  absl::Status Add(uint32_t vshard, uint64_t id, absl::string_view payload) override {
    img_->emplace_back(vshard, id, std::string(payload));
    return absl::OkStatus();
  }

 private:
  Image* img_;
};

Image Take(TableData& t, uint64_t cut, uint64_t parent) {
  Image img;
  ImageSink sink(&img);
  for (const EntryGroup& g : t.HeldGroups()) REQUIRE(t.TakeGroup(g, cut, parent, sink).ok());
  return img;
}

void Load(TableData& t, const Image& img) {
  for (const auto& [v, id, payload] : img) {
    REQUIRE(t.EntryBytes(v, id) == payload.size());
    t.LoadEntry(v, id, payload);
  }
  t.FinishLoad();
}

TEST_CASE("sparse rows reload bit for bit with their slots and steps", "[checkpoint]") {
  for (OptimizerKind opt : kAll) {
    INFO(OptimizerKindName(opt));
    std::mt19937_64 rng(1);
    SparseTable t(Sparse(opt), kAllOwned);
    for (int r = 0; r < 5; ++r) PushRandom(t, rng, 1);
    t.BeginCut(1);
    const Image img = Take(t, 1, 0);
    REQUIRE(img.size() == t.num_rows());
    SparseTable loaded(Sparse(opt), kAllOwned);
    Load(loaded, img);
    loaded.BeginCut(1);
    CHECK(Take(loaded, 1, 0) == img);
    // Same future: identical pushes give identical rows (slots and steps came back too).
    std::mt19937_64 a(9), b(9);
    PushRandom(t, a, 2);
    PushRandom(loaded, b, 2);
    t.BeginCut(2);
    loaded.BeginCut(2);
    CHECK(Take(t, 2, 0) == Take(loaded, 2, 0));
  }
}

TEST_CASE("dense blocks reload bit for bit with their slots and steps", "[checkpoint]") {
  for (OptimizerKind opt : kAll) {
    INFO(OptimizerKindName(opt));
    std::mt19937_64 rng(2);
    DenseTable t(Dense(opt), kAllOwned);
    for (int r = 0; r < 5; ++r) PushRandom(t, rng, 1);
    t.BeginCut(1);
    const Image img = Take(t, 1, 0);
    REQUIRE(img.size() == t.layout().num_blocks());
    DenseTable loaded(Dense(opt), kAllOwned, /*initialize=*/false);
    Load(loaded, img);
    std::mt19937_64 a(7), c(7);
    PushRandom(t, a, 2);
    PushRandom(loaded, c, 2);
    t.BeginCut(2);
    loaded.BeginCut(2);
    CHECK(Take(t, 2, 0) == Take(loaded, 2, 0));
  }
}

TEST_CASE("the cut sees the state at the cut while pushes go on", "[checkpoint]") {
  std::mt19937_64 rng(5);
  SparseTable t(Sparse(OptimizerKind::kAdam), kAllOwned);
  DenseTable d(Dense(OptimizerKind::kAdam), kAllOwned);
  for (int r = 0; r < 3; ++r) {
    PushRandom(t, rng, 1);
    PushRandom(d, rng, 1);
  }
  // Reference images of the state at the cut, taken from copies.
  t.BeginCut(1);
  d.BeginCut(1);
  const Image sparse_at_cut = Take(t, 1, 0);
  const Image dense_at_cut = Take(d, 1, 0);
  // A second cut at generation 1 with pushes (generation 2) before the writer gets there.
  t.BeginCut(1);
  d.BeginCut(1);
  for (int r = 0; r < 3; ++r) {
    PushRandom(t, rng, 2, 600);  // also creates rows the cut must leave out
    PushRandom(d, rng, 2);
  }
  CHECK(Take(t, 1, 0) == sparse_at_cut);
  CHECK(Take(d, 1, 0) == dense_at_cut);
}

TEST_CASE("only rows changed after the parent are dirty", "[checkpoint]") {
  std::mt19937_64 rng(6);
  SparseTable t(Sparse(OptimizerKind::kAdagrad), kAllOwned);
  PushRandom(t, rng, 1, 800);
  t.BeginCut(1);
  const Image full = Take(t, 1, 0);
  // Generation 2: touch a few keys.
  const std::vector<uint64_t> touched = {3, 77, 512};
  std::vector<float> g(touched.size() * t.dim(), 0.5f);
  VshardGrouping groups;
  GroupByVshard(touched, t.num_vshards(), &groups);
  t.Push(touched, groups, g.data(), 2);
  t.BeginCut(2);
  const Image inc = Take(t, 2, 1);
  REQUIRE(inc.size() == touched.size());
  for (const auto& [v, k, payload] : inc) {
    CHECK(std::find(touched.begin(), touched.end(), k) != touched.end());
  }
  CHECK(full.size() > 100);
}

// A take with its tombstones: the rows and the removed keys, each in (vshard, key) order.
class ChainSink final : public EntrySink {
 public:
  absl::Status Add(uint32_t vshard, uint64_t id, absl::string_view payload) override {
    if (!last_.has_value() || *last_ < std::make_pair(vshard, id)) {
      last_ = std::make_pair(vshard, id);
    } else {
      return absl::InternalError("entries out of order");
    }
    rows[{vshard, id}] = std::string(payload);
    return absl::OkStatus();
  }
  absl::Status Remove(uint32_t vshard, uint64_t id) override {
    if (last_.has_value() && !(*last_ < std::make_pair(vshard, id))) {
      return absl::InternalError("tombstone out of order");
    }
    last_ = std::make_pair(vshard, id);
    removed.emplace(vshard, id);
    return absl::OkStatus();
  }
  std::map<std::pair<uint32_t, uint64_t>, std::string> rows;
  std::set<std::pair<uint32_t, uint64_t>> removed;

 private:
  std::optional<std::pair<uint32_t, uint64_t>> last_;
};

ChainSink TakeChain(SparseTable& t, uint64_t cut, uint64_t parent) {
  t.BeginCut(cut);
  ChainSink sink;
  for (const EntryGroup& g : t.HeldGroups()) REQUIRE(t.TakeGroup(g, cut, parent, sink).ok());
  return sink;
}

// Applies an increment to a restored image, as a chain restore does: newest wins, a tombstone
// removes.
void ApplyIncrement(std::map<std::pair<uint32_t, uint64_t>, std::string>& image,
                    const ChainSink& inc) {
  for (const auto& k : inc.removed) {
    REQUIRE(!inc.rows.contains(k));  // (never a row and a tombstone for one key)
    image.erase(k);
  }
  for (const auto& [k, payload] : inc.rows) image[k] = payload;
}

void RemoveKeys(SparseTable& t, const std::vector<uint64_t>& keys, uint64_t gen) {
  std::map<uint32_t, std::vector<uint64_t>> by_vshard;
  for (uint64_t k : keys) by_vshard[VshardOfKey(k, t.num_vshards())].push_back(k);
  for (const auto& [v, ks] : by_vshard) t.Remove(v, ks, {}, gen);
}

TEST_CASE("increments after removals carry tombstones and a chain restores the live rows",
          "[checkpoint][lifecycle]") {
  std::mt19937_64 rng(12);
  SparseTable t(Sparse(OptimizerKind::kAdam), kAllOwned);
  PushRandom(t, rng, 1, 800);
  auto image = TakeChain(t, 1, 0).rows;  // the full base
  REQUIRE(image.size() == t.num_rows());
  uint64_t parent = 1;
  for (uint64_t gen = 2; gen <= 5; ++gen) {
    PushRandom(t, rng, gen, 200);
    std::vector<uint64_t> gone;
    for (int i = 0; i < 150; ++i) gone.push_back(rng() % 1000);  // present or not
    std::sort(gone.begin(), gone.end());
    gone.erase(std::unique(gone.begin(), gone.end()), gone.end());
    RemoveKeys(t, gone, gen);
    if (gen == 3) PushRandom(t, rng, gen, 200);  // some removed keys come back in the same step
    const ChainSink inc = TakeChain(t, gen, parent);
    CHECK(!inc.removed.empty());
    ApplyIncrement(image, inc);
    t.ForgetRemovals(parent);
    parent = gen;
    // The chain equals a full take of the live table.
    const ChainSink full = TakeChain(t, gen, 0);
    CHECK(full.removed.empty());
    REQUIRE(image.size() == t.num_rows());
    CHECK(image == full.rows);
  }
}

TEST_CASE("a row removed after the cut is written as it was at the cut, not its reused memory",
          "[checkpoint][lifecycle]") {
  std::mt19937_64 rng(13);
  SparseTable t(Sparse(OptimizerKind::kAdagrad), kAllOwned);
  PushRandom(t, rng, 1, 800);
  const auto at_cut = TakeChain(t, 1, 0).rows;
  t.BeginCut(1);
  // After the cut: change some rows, then remove them and others, then create new keys that
  // take over the released rows' memory, before the writer takes anything.
  std::vector<uint64_t> present;
  for (const auto& [k, payload] : at_cut) present.push_back(k.second);
  std::vector<uint64_t> changed(present.begin(), present.begin() + 40);
  std::vector<float> g(changed.size() * t.dim(), 0.25f);
  VshardGrouping groups;
  GroupByVshard(changed, t.num_vshards(), &groups);
  t.Push(changed, groups, g.data(), 2);
  RemoveKeys(t, std::vector<uint64_t>(present.begin(), present.begin() + 80), 2);
  std::vector<uint64_t> fresh;
  for (uint64_t k = 5000; k < 5300; ++k) fresh.push_back(k);
  std::vector<float> f(fresh.size() * t.dim(), 1.0f);
  GroupByVshard(fresh, t.num_vshards(), &groups);
  t.Push(fresh, groups, f.data(), 2);
  ChainSink sink;
  for (const EntryGroup& grp : t.HeldGroups()) REQUIRE(t.TakeGroup(grp, 1, 0, sink).ok());
  CHECK(sink.rows == at_cut);
}

TEST_CASE("removal counts, recreation from the initializer and the increment horizon",
          "[checkpoint][lifecycle]") {
  std::mt19937_64 rng(14);
  SparseTable t(Sparse(OptimizerKind::kSgd), kAllOwned);
  const std::vector<uint64_t> keys = {11, 12};
  std::vector<float> first(keys.size() * t.dim());
  VshardGrouping groups;
  GroupByVshard(keys, t.num_vshards(), &groups);
  t.Pull(keys, groups, first.data(), 1);
  std::vector<float> g(keys.size() * t.dim(), 3.0f);
  t.Push(keys, groups, g.data(), 2);
  REQUIRE(t.num_rows() == 2);
  const uint32_t v = VshardOfKey(11, t.num_vshards());
  CHECK(t.Remove(v, std::vector<uint64_t>{11, 99999}, {}, 3) == 1);  // (an absent key is skipped)
  CHECK(t.num_rows() == 1);
  std::vector<float> again(keys.size() * t.dim());
  t.Pull(keys, groups, again.data(), 4);
  // Key 11 starts over from the initializer; key 12 kept its update.
  CHECK(std::equal(again.begin(), again.begin() + t.dim(), first.begin()));
  CHECK(!std::equal(again.begin() + t.dim(), again.end(), first.begin() + t.dim()));
  // Increments: on any parent until the removal is forgotten, then not below it.
  CHECK(t.CanIncrement(1));
  t.ForgetRemovals(3);
  CHECK(!t.CanIncrement(2));
  CHECK(t.CanIncrement(3));
  SparseTable quiet(Sparse(OptimizerKind::kSgd), kAllOwned);
  quiet.ForgetRemovals(10);  // nothing was removed: nothing lost
  CHECK(quiet.CanIncrement(1));
}

TEST_CASE("entries that do not belong to the table are refused before loading", "[checkpoint]") {
  std::vector<bool> half(kDefaultNumVshards, false);
  for (uint32_t v = 0; v < kDefaultNumVshards / 2; ++v) half[v] = true;
  SparseTable s(Sparse(OptimizerKind::kAdam), half);
  uint64_t mine = 0, other = 0;
  while (!half[VshardOfKey(mine, kDefaultNumVshards)]) ++mine;
  while (half[VshardOfKey(other, kDefaultNumVshards)]) ++other;
  const uint32_t v = VshardOfKey(mine, kDefaultNumVshards);
  CHECK(s.EntryBytes(v, mine) == s.row_bytes());
  CHECK(s.EntryBytes(v + 1, mine) == 0);  // a key in another vshard than it says
  CHECK(s.EntryBytes(VshardOfKey(other, kDefaultNumVshards), other) == 0);  // not owned
  CHECK(s.EntryBytes(kDefaultNumVshards, mine) == 0);
  DenseTable d(Dense(OptimizerKind::kAdam), half, /*initialize=*/false);
  for (uint64_t b = 0; b < d.layout().num_blocks(); ++b) {
    CHECK(d.EntryBytes(d.VshardOf(b), b) == (d.Holds(b) ? d.BlockPayloadBytes(b) : 0));
    CHECK(d.EntryBytes(d.VshardOf(b) + 1, b) == 0);
  }
  CHECK(d.EntryBytes(0, d.layout().num_blocks()) == 0);
}

TEST_CASE("a dense load initializes exactly the blocks nothing was loaded into", "[checkpoint]") {
  std::mt19937_64 rng(3);
  DenseTable t(Dense(OptimizerKind::kAdagrad), kAllOwned);
  for (int r = 0; r < 5; ++r) PushRandom(t, rng, 1);
  t.BeginCut(1);
  Image img = Take(t, 1, 0);
  const uint64_t b0 = std::get<1>(img.front());
  img.erase(img.begin());  // the first block is not in the image
  DenseTable loaded(Dense(OptimizerKind::kAdagrad), kAllOwned, /*initialize=*/false);
  Load(loaded, img);
  DenseTable fresh(Dense(OptimizerKind::kAdagrad), kAllOwned);
  loaded.BeginCut(1);
  fresh.BeginCut(1);
  const Image got = Take(loaded, 1, 0), initial = Take(fresh, 1, 0);
  REQUIRE(got.size() == initial.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("block " << std::get<1>(got[i]));
    if (i == 0) {
      REQUIRE(std::get<1>(got[i]) == b0);
      CHECK(got[i] == initial[i]);  // the initializer's values, not the zeros it was mapped with
    } else {
      CHECK(got[i] == img[i - 1]);
    }
  }
}

TEST_CASE("step sums applied through the table equal the same pushes", "[checkpoint]") {
  SparseTable s(Sparse(OptimizerKind::kAdam), kAllOwned),
      s_ref(Sparse(OptimizerKind::kAdam), kAllOwned);
  EntrySums sums;
  std::vector<uint64_t> keys = {7, 1000003, 42};
  std::vector<float> grads;
  for (uint64_t k : keys) {
    std::vector<float>& sum = sums[k];
    for (uint32_t i = 0; i < s.dim(); ++i) sum.push_back(0.25f * (k % 5) - 0.5f + i);
    for (float g : sum) grads.push_back(g * 0.5f);
  }
  CHECK(s.ApplySums(sums, 0.5f, 2, 0, 0) == keys.size());
  VshardGrouping groups;
  GroupByVshard(keys, s_ref.num_vshards(), &groups);
  s_ref.Push(keys, groups, grads.data(), 2);
  s.BeginCut(2);
  s_ref.BeginCut(2);
  CHECK(Take(s, 2, 0) == Take(s_ref, 2, 0));

  DenseTable d(Dense(OptimizerKind::kAdam), kAllOwned),
      d_ref(Dense(OptimizerKind::kAdam), kAllOwned);
  EntrySums dense_sums;
  const uint64_t b = 3;
  const size_t len = d.SumFloats(b);
  REQUIRE(len == d.layout().BlockEnd(b) - d.layout().BlockBegin(b));
  CHECK(d.SumFloats(d.layout().num_blocks()) == 0);
  std::vector<float> g(len, 2.0f), half(len, 1.0f);
  dense_sums[b] = g;
  CHECK(d.ApplySums(dense_sums, 0.5f, 2, 0, 0) == len);
  d_ref.Push(d.layout().BlockBegin(b), len, half.data(), 2);
  d.BeginCut(2);
  d_ref.BeginCut(2);
  CHECK(Take(d, 2, 0) == Take(d_ref, 2, 0));
}

}  // namespace
}  // namespace tessera
