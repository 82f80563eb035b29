// Tables under checkpoints: the cut's copy-on-write, dirty tracking, and bit-exact reloads of
// weights, every optimizer's slots and Adam's step counters.
#include <catch2/catch.hpp>
#include <random>
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

Image Take(SparseTable& t, uint64_t cut, uint64_t parent) {
  Image img;
  VshardSnapshot snap;
  for (uint32_t v = 0; v < t.num_vshards(); ++v) {
    t.TakeVshard(v, cut, parent, &snap);
    for (size_t i = 0; i < snap.keys.size(); ++i) {
      img.emplace_back(v, snap.keys[i], snap.payload.substr(i * t.row_bytes(), t.row_bytes()));
    }
  }
  return img;
}

Image Take(DenseTable& t, uint64_t cut, uint64_t parent) {
  Image img;
  for (uint64_t b = 0; b < t.layout().num_blocks(); ++b) {
    std::string payload(t.BlockPayloadBytes(b), '\0');
    if (t.TakeBlock(b, cut, parent, payload.data())) img.emplace_back(t.VshardOf(b), b, payload);
  }
  return img;
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
    for (const auto& [v, k, payload] : img) loaded.LoadRow(v, k, payload);
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
    for (const auto& [v, b, payload] : img) loaded.LoadBlock(b, payload);
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

}  // namespace
}  // namespace tessera
