#include "server/sparse_table.h"

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

}  // namespace
}  // namespace tessera
