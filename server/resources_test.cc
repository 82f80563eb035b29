// Resource accounting (docs/state_machine.md, "Resources"): finding 6 of issue 14, one case
// each. Every byte a request would make the server hold is checked before it is allocated.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "absl/synchronization/notification.h"
#include "server/core_test_util.h"
#include "server/dense_table.h"
#include "server/row_arena.h"

namespace tessera {
namespace {

using namespace tessera::testing;  // NOLINT

std::unique_ptr<ServerCore> Core(ServerCoreOptions o = {}) { return *ServerCore::Create(o); }

bool Contains(const absl::Status& st, const std::string& part) {
  return std::string(st.message()).find(part) != std::string::npos;
}

uint64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGE_SIZE));
}

TEST_CASE("a dense table's limit counts the bookkeeping of its blocks", "[resources]") {
  // 4 Mi elements (16 MiB of weights) in blocks of one element: the blocks' bookkeeping is
  // far more than the weights. The limit used to ignore it and admit the table.
  ServerCoreOptions o;
  o.max_table_bytes = uint64_t{64} << 20;
  auto core = Core(o);
  v1::CreateTableResponse r;
  const absl::Status st =
      core->CreateTable(CreateReq(DenseConfig("d", uint64_t{4} << 20, 1, OptimizerKind::kSgd)), &r);
  CHECK(st.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(st, "'d' would take"));
  CHECK(Contains(st, "--max_table_bytes"));
  CHECK(core->GetTableStats().empty());
  // Its bytes as reported are what admission counted.
  REQUIRE(
      core->CreateTable(CreateReq(DenseConfig("e", 100000, 1000, OptimizerKind::kAdam)), &r).ok());
  const std::vector<TableStats> stats = core->GetTableStats();
  REQUIRE(stats.size() == 1);
  CHECK(stats[0].bytes == *DenseTable::BytesFor(*ResolveTableConfig(DenseConfig(
                                                    "e", 100000, 1000, OptimizerKind::kAdam)),
                                                std::vector<bool>(kDefaultNumVshards, true), 0));
  CHECK(stats[0].bytes > 100000 * 3 * sizeof(float));
}

TEST_CASE("a dense table of 2^40 one-element blocks is refused at once", "[resources]") {
  // Admission used to walk every block (about 40 CPU-minutes) before refusing.
  auto core = Core();
  v1::CreateTableResponse r;
  const absl::Status st = core->CreateTable(
      CreateReq(DenseConfig("huge", uint64_t{1} << 40, 1, OptimizerKind::kSgd)), &r);
  CHECK(st.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(st, "blocks"));
}

TEST_CASE("a pull whose response would be too large is refused before it is built", "[resources]") {
  auto core = Core();
  v1::CreateTableResponse r;
  REQUIRE(core->CreateTable(CreateReq(SparseConfig("wide", 65536, OptimizerKind::kSgd)), &r).ok());
  std::vector<uint64_t> keys(2000);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = i;
  v1::PullSparseResponse resp;
  const absl::Status st = core->PullSparse(SparsePullReq("wide", 65536, keys), &resp);
  CHECK(st.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(st, "--max_response_bytes"));
  CHECK(resp.values().empty());
  CHECK(core->GetTableStats()[0].rows == 0);  // and no row was created
}

TEST_CASE("reported table bytes are within 15% of what is resident", "[resources]") {
  // 1,024 rows of 1,024 Adam floats over 1,024 vshards: the table used to report 256-row
  // blocks per vshard (160x what was resident).
  ServerCoreOptions o;
  o.apply_threads = 1;
  auto core = Core(o);
  v1::CreateTableResponse r;
  REQUIRE(core->CreateTable(CreateReq(SparseConfig("t", 1024, OptimizerKind::kAdam)), &r).ok());
  std::vector<uint64_t> keys(1024);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = i * 7919;
  const std::vector<float> g(keys.size() * 1024, 0.5f);
  v1::PushResponse resp;
  // Warm up: the executor's allocator arena exists before the measurement.
  REQUIRE(core->CreateTable(CreateReq(SparseConfig("w", 1024, OptimizerKind::kAdam)), &r).ok());
  REQUIRE(
      core->PushSparse(SparsePushReq("w", 1024, {1, 2, 3}, std::vector<float>(3072), 1, 1), &resp)
          .ok());
  auto stats = [&] {
    for (const TableStats& t : core->GetTableStats()) {
      if (t.name == "t") return t.bytes;
    }
    return uint64_t{0};
  };
  const uint64_t before_bytes = stats();
  // The request is built before the measurement and handed over without a copy.
  auto push =
      std::make_shared<const v1::PushSparseRequest>(SparsePushReq("t", 1024, keys, g, 1, 2));
  const uint64_t rss_before = ResidentBytes();
  absl::Notification applied;
  core->PushSparse(push, &resp, nullptr, [&](absl::Status st) {
    CHECK(st.ok());
    applied.Notify();
  });
  applied.WaitForNotification();
  const uint64_t rss = ResidentBytes() - rss_before;
  const uint64_t reported = stats() - before_bytes;
  INFO("reported " << reported << " bytes, resident grew by " << rss);
  CHECK(reported >= rss * 0.9);
  // (An upper bound by design: a block's partial last page and its allocator header's page
  // count as resident. When the blocks come out of an arena's heap whose pages are resident
  // already, or share the header's page with the chunk before, the process grows by less:
  // 12.9% less measured, 1 run in 2 to 10 after other tests of the process, which 1.1 made a
  // flake.)
  CHECK(reported <= rss * 1.15);
}

TEST_CASE("a key count that would wrap a length check is refused", "[resources]") {
  // num_keys * 8 wrapped to 0 when the limit was set high enough.
  ServerCoreOptions o;
  o.max_keys_per_request = uint64_t{1} << 62;
  auto core = Core(o);
  v1::CreateTableResponse r;
  REQUIRE(core->CreateTable(CreateReq(SparseConfig("t", 2, OptimizerKind::kSgd)), &r).ok());
  v1::PullSparseRequest pull = SparsePullReq("t", 2, {});
  pull.set_num_keys(uint64_t{1} << 61);
  v1::PullSparseResponse resp;
  CHECK(core->PullSparse(pull, &resp).code() == absl::StatusCode::kInvalidArgument);
  v1::PushSparseRequest push = SparsePushReq("t", 2, {}, {}, 1, 1);
  push.set_num_keys(uint64_t{1} << 61);
  v1::PushResponse pr;
  CHECK(core->PushSparse(push, &pr).code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("the server's memory budget refuses rows before they exist and changes nothing",
          "[resources]") {
  ServerCoreOptions o;
  o.max_memory_bytes = 4 << 20;
  auto core = Core(o);
  v1::CreateTableResponse r;
  REQUIRE(core->CreateTable(CreateReq(SparseConfig("t", 256, OptimizerKind::kAdam)), &r).ok());
  const uint64_t held = core->budget().used();
  const uint64_t digest = core->StateDigest();
  std::vector<uint64_t> keys(4096);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = i;
  const std::vector<float> g(keys.size() * 256, 0.25f);
  v1::PushResponse resp;
  const absl::Status st = core->PushSparse(SparsePushReq("t", 256, keys, g, 1, 1), &resp);
  CHECK(st.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(st, "table 't'"));
  CHECK(Contains(st, "--max_memory_bytes"));
  CHECK(core->StateDigest() == digest);  // not applied, exactly-once state included
  CHECK(core->budget().used() == held);  // the reservation went back
  // A push that fits is applied, and what it holds stays charged until the table is dropped.
  keys.resize(100);
  REQUIRE(
      core->PushSparse(SparsePushReq("t", 256, keys, std::vector<float>(100 * 256, 1), 1, 1), &resp)
          .ok());
  CHECK(core->budget().used() > held);
  v1::DropTableResponse dr;
  REQUIRE(core->DropTable(DropReq("t"), &dr).ok());
  core->WaitApplied();
  CHECK(core->budget().used() == 0);
}

TEST_CASE("row arenas grow by blocks of 4 to 256 rows and keep every row in place", "[resources]") {
  RowArena arena(3);
  std::vector<float*> rows;
  for (uint32_t i = 0; i < 2000; ++i) {
    REQUIRE(arena.Append() == i);
    float* row = arena.Row(i);
    row[0] = static_cast<float>(i);
    rows.push_back(row);
  }
  for (uint32_t i = 0; i < 2000; ++i) {
    CHECK(arena.Row(i) == rows[i]);
    CHECK(rows[i][0] == static_cast<float>(i));
  }
  RowArena small(3);
  small.Append();
  CHECK(small.bytes() == 4 * 3 * sizeof(float));
}

TEST_CASE("released rows are reused, newest first, before the arena grows", "[resources]") {
  RowArena arena(2);
  for (uint32_t i = 0; i < 300; ++i) REQUIRE(arena.Append() == i);
  const size_t bytes = arena.bytes();
  for (uint32_t id : {7u, 250u, 3u}) arena.Release(id);
  CHECK(arena.live() == 297);
  CHECK(arena.size() == 300);
  CHECK(arena.used_bytes() == 297 * 2 * sizeof(float));
  float* kept = arena.Row(8);
  kept[0] = 8.0f;
  kept[1] = -8.0f;
  CHECK(arena.Append() == 3);
  CHECK(arena.Append() == 250);
  CHECK(arena.Append() == 7);
  CHECK(arena.bytes() == bytes);  // no block added
  CHECK(arena.live() == 300);
  CHECK(arena.Append() == 300);  // the list is empty: a new id
  CHECK(kept[0] == 8.0f);        // (a neighbour of a released row is untouched)
  CHECK(kept[1] == -8.0f);
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

TEST_CASE("a retried create of an existing table allocates nothing", "[resources]") {
  // A broadcast create is retried; the retry must not build (and reserve) the table again.
  const TableConfig c = testing::DenseConfig("d", uint64_t{1} << 20, 1 << 16, OptimizerKind::kSgd);
  ServerCoreOptions o;
  o.max_memory_bytes = (uint64_t{3} << 20) * 2;  // room for one 4 MiB table, not two
  auto core = *ServerCore::Create(o);
  v1::CreateTableResponse r;
  REQUIRE(core->CreateTable(testing::CreateReq(c), &r).ok());
  const uint64_t held = core->budget().used();
  const absl::Status again = core->CreateTable(testing::CreateReq(c), &r);
  INFO(again.ToString());
  CHECK(again.ok());
  CHECK(core->budget().used() == held);
}

}  // namespace
}  // namespace tessera
