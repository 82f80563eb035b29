#include "server/dense_table.h"

#include <catch2/catch.hpp>
#include <numeric>
#include <vector>

#include "common/hash.h"
#include "common/shard_map.h"
#include "optimizer/initializer.h"

namespace tessera {
namespace {

TableConfig Config(uint64_t size, uint32_t block, OptimizerKind opt = OptimizerKind::kAdd) {
  TableConfig t{
      .name = "w", .kind = TableKind::kDense, .dense_size = size, .dense_block_elems = block};
  t.optimizer.kind = opt;
  t.initializer = {.kind = InitializerKind::kUniform, .seed = 5};
  absl::StatusOr<TableConfig> r = ResolveTableConfig(t);
  REQUIRE(r.ok());
  return *r;
}

TEST_CASE("layout at odd sizes", "[dense]") {
  DenseLayout l{1000003, 4099};
  CHECK(l.num_blocks() == 244);  // 243 full blocks + 1 of 4046
  CHECK(l.BlockBegin(243) == 243u * 4099);
  CHECK(l.BlockEnd(243) == 1000003);
  DenseLayout one{7, 4099};
  CHECK(one.num_blocks() == 1);
  CHECK(one.BlockEnd(0) == 7);
  DenseLayout exact{8, 4};
  CHECK(exact.num_blocks() == 2);
}

TEST_CASE("pull and push across block boundaries", "[dense]") {
  const TableConfig c = Config(1000003, 4099);
  DenseTable t(c, std::vector<bool>(kDefaultNumVshards, true));
  CHECK(t.num_elements() == 1000003);
  const Initializer init(c.initializer);
  std::vector<float> out(10000);
  t.Pull(4000, 10000, out.data());  // spans blocks 0..3
  for (int i = 0; i < 10000; ++i) REQUIRE(out[i] == init.Value(4000 + i, 0));

  std::vector<float> g(9000);
  std::iota(g.begin(), g.end(), 1.0f);
  t.Push(1000003 - 9000, 9000, g.data(), 1);  // the short last block and its neighbours
  std::vector<float> tail(9000);
  t.Pull(1000003 - 9000, 9000, tail.data());
  for (int i = 0; i < 9000; ++i) {
    REQUIRE(tail[i] == init.Value(1000003 - 9000 + i, 0) + g[i]);
  }
}

TEST_CASE("a server holds exactly the blocks of its vshards", "[dense]") {
  const TableConfig c = Config(100000, 1000);
  absl::StatusOr<ShardMap> map = ShardMap::Uniform(1, 3);
  REQUIRE(map.ok());
  uint64_t total = 0;
  for (uint32_t s = 0; s < 3; ++s) {
    std::vector<bool> owned(kDefaultNumVshards);
    for (uint32_t v = 0; v < kDefaultNumVshards; ++v) owned[v] = map->ShardOf(v) == s;
    DenseTable t(c, owned);
    total += t.num_elements();
    CHECK(t.bytes() == *DenseTable::BytesFor(c, owned, 0));
    for (uint64_t b = 0; b < 100; ++b) {
      const bool mine = map->ShardOf(VshardOfDenseBlock(Fnv1a64("w"), b, kDefaultNumVshards)) == s;
      CHECK((t.FirstMissingBlock(b * 1000, 1000) < 0) == mine);
    }
  }
  CHECK(total == 100000);
}

TEST_CASE("dense Adam keeps one step per block", "[dense]") {
  const TableConfig c = Config(10, 4, OptimizerKind::kAdam);
  DenseTable t(c, std::vector<bool>(kDefaultNumVshards, true));
  std::vector<float> before(10), after(10);
  t.Pull(0, 10, before.data());
  std::vector<float> g(10, 1.0f);
  t.Push(0, 10, g.data(), 1);
  t.Pull(0, 10, after.data());
  // One step everywhere: each element moves by lr = 0.001.
  for (int i = 0; i < 10; ++i) CHECK(after[i] - before[i] == Approx(-0.001f).epsilon(1e-3));
}

}  // namespace
}  // namespace tessera
