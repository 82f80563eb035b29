// Request validation: every malformed request gets its precise code and leaves the tables
// exactly as they were.
#include "server/server_core.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "common/wire.h"
#include "proto/tessera.pb.h"

namespace tessera {
namespace {

constexpr uint32_t kDim = 4;

struct Fixture {
  std::unique_ptr<ServerCore> core;
  std::vector<uint64_t> keys = {1, 2, 3, 1000000007};

  explicit Fixture(ServerCoreOptions o = {}) {
    o.max_keys_per_request = 1000;
    o.max_dense_elems_per_request = 5000;
    absl::StatusOr<std::unique_ptr<ServerCore>> c = ServerCore::Create(o);
    REQUIRE(c.ok());
    core = std::move(*c);
    Create("emb", TableKind::kSparse);
    Create("dense", TableKind::kDense);
    // Put some state in place to compare against.
    v1::PushSparseRequest push = SparsePush(keys, 1.0f, 1);
    v1::PushResponse resp;
    REQUIRE(core->PushSparse(push, &resp).ok());
  }

  void Create(const std::string& name, TableKind kind) {
    v1::CreateTableRequest req;
    req.mutable_header()->set_shard_map_epoch(1);
    TableConfig c{.name = name, .kind = kind};
    if (kind == TableKind::kSparse)
      c.dim = kDim;
    else
      c.dense_size = 10000, c.dense_block_elems = 1000;
    c.optimizer.kind = OptimizerKind::kAdagrad;
    c.initializer = {.kind = InitializerKind::kNormal, .seed = 1};
    TableConfigToProto(c, req.mutable_spec());
    v1::CreateTableResponse resp;
    REQUIRE(core->CreateTable(req, &resp).ok());
  }

  // A pull or push of keys `k` on "emb", the fields both share filled in.
  template <typename Request>
  Request OnKeys(const std::vector<uint64_t>& k) const {
    Request r;
    r.mutable_header()->set_shard_map_epoch(1);
    r.set_table("emb");
    r.set_key_type(v1::KEY_TYPE_UINT64);
    r.set_dtype(v1::DTYPE_FLOAT32);
    r.set_dim(kDim);
    r.set_num_keys(k.size());
    PackedAssign<uint64_t>(r.mutable_keys(), k);
    return r;
  }

  v1::PullSparseRequest SparsePull(const std::vector<uint64_t>& k) const {
    return OnKeys<v1::PullSparseRequest>(k);
  }

  v1::PushSparseRequest SparsePush(const std::vector<uint64_t>& k, float g, uint64_t seq) const {
    v1::PushSparseRequest r = OnKeys<v1::PushSparseRequest>(k);
    std::vector<float> v(k.size() * kDim, g);
    PackedAssign<float>(r.mutable_values(), v);
    r.mutable_id()->set_client_id(99);
    r.mutable_id()->set_sequence(seq);
    r.mutable_id()->set_floor(seq);
    return r;
  }

  v1::PushDenseRequest DensePush(uint64_t offset, uint64_t count, uint64_t seq) const {
    v1::PushDenseRequest r;
    r.mutable_header()->set_shard_map_epoch(1);
    r.set_table("dense");
    r.set_dtype(v1::DTYPE_FLOAT32);
    r.set_offset(offset);
    r.set_count(count);
    std::vector<float> v(count, 0.5f);
    PackedAssign<float>(r.mutable_values(), v);
    r.mutable_id()->set_client_id(99);
    r.mutable_id()->set_sequence(seq);
    r.mutable_id()->set_floor(seq);
    return r;
  }

  // Everything observable: the pulled values of the known keys, the whole dense table, rows.
  std::vector<float> Snapshot() {
    v1::PullSparseResponse sr;
    REQUIRE(core->PullSparse(SparsePull(keys), &sr).ok());
    std::vector<float> snap(sr.values().size() / 4);
    std::memcpy(snap.data(), sr.values().data(), sr.values().size());
    for (uint64_t off = 0; off < 10000; off += 5000) {
      v1::PullDenseRequest dr;
      dr.mutable_header()->set_shard_map_epoch(1);
      dr.set_table("dense");
      dr.set_dtype(v1::DTYPE_FLOAT32);
      dr.set_offset(off);
      dr.set_count(5000);
      v1::PullDenseResponse resp;
      REQUIRE(core->PullDense(dr, &resp).ok());
      const float* v = reinterpret_cast<const float*>(resp.values().data());
      snap.insert(snap.end(), v, v + 5000);
    }
    std::vector<TableStats> stats = core->GetTableStats();  // (in no particular order)
    std::sort(stats.begin(), stats.end(),
              [](const TableStats& x, const TableStats& y) { return x.name < y.name; });
    for (const TableStats& t : stats) snap.push_back(static_cast<float>(t.rows));
    return snap;
  }
};

// Runs a bad request and checks its code, a message naming the problem, and unchanged state.
template <typename Req, typename Resp, typename... Extra>
void ExpectRejected(Fixture& f, absl::Status (ServerCore::*fn)(const Req&, Resp*, Extra...),
                    const Req& req, absl::StatusCode code, const std::string& message_part) {
  const std::vector<float> before = f.Snapshot();
  Resp resp;
  const absl::Status s = (f.core.get()->*fn)(req, &resp, Extra{}...);
  INFO(s.ToString());
  CHECK(s.code() == code);
  CHECK(std::string(s.message()).find(message_part) != std::string::npos);
  CHECK(f.Snapshot() == before);
}

TEST_CASE("sparse bad input is rejected with its code and changes nothing", "[validation]") {
  Fixture f;
  const auto pull = &ServerCore::PullSparse;
  absl::Status (ServerCore::*push)(const v1::PushSparseRequest&, v1::PushResponse*) =
      &ServerCore::PushSparse;
  using C = absl::StatusCode;

  auto p = f.SparsePull({4, 5});
  p.set_table("nope");
  ExpectRejected(f, pull, p, C::kNotFound, "'nope' does not exist");

  p = f.SparsePull({4, 5});
  p.set_table("dense");
  ExpectRejected(f, pull, p, C::kFailedPrecondition, "is dense");

  p = f.SparsePull({4, 5});
  p.set_dim(8);
  ExpectRejected(f, pull, p, C::kInvalidArgument, "has dim 4, request has dim 8");

  p = f.SparsePull({4, 5});
  p.set_key_type(static_cast<v1::KeyType>(7));
  ExpectRejected(f, pull, p, C::kInvalidArgument, "unknown key_type 7");

  p = f.SparsePull({4, 5});
  p.set_dtype(v1::DTYPE_UNSPECIFIED);
  ExpectRejected(f, pull, p, C::kInvalidArgument, "unsupported dtype");

  p = f.SparsePull({4, 5});
  p.set_num_keys(3);
  ExpectRejected(f, pull, p, C::kInvalidArgument, "needs 24 key bytes, got 16");

  p = f.SparsePull({4, 5});
  p.mutable_keys()->push_back('x');  // malformed payload: not a whole number of keys
  ExpectRejected(f, pull, p, C::kInvalidArgument, "key bytes");

  p = f.SparsePull(std::vector<uint64_t>(1001, 4));
  ExpectRejected(f, pull, p, C::kResourceExhausted, "over the limit of 1000");

  p = f.SparsePull({4, 5});
  p.mutable_header()->set_shard_map_epoch(2);
  ExpectRejected(f, pull, p, C::kFailedPrecondition, "epoch 2");

  auto q = f.SparsePush({4, 5}, 1.0f, 10);
  q.mutable_values()->resize(q.values().size() - 4);
  ExpectRejected(f, push, q, C::kInvalidArgument, "value bytes");

  q = f.SparsePush({4, 5, 4}, 1.0f, 11);
  ExpectRejected(f, push, q, C::kInvalidArgument, "key 4 appears more than once");

  q = f.SparsePush({4, 5}, NAN, 12);
  ExpectRejected(f, push, q, C::kInvalidArgument, "not finite");

  q = f.SparsePush({4, 5}, INFINITY, 13);
  ExpectRejected(f, push, q, C::kInvalidArgument, "not finite");

  q = f.SparsePush({4, 5}, 1.0f, 14);
  q.mutable_id()->set_client_id(0);
  ExpectRejected(f, push, q, C::kInvalidArgument, "client_id != 0");

  q = f.SparsePush({4, 5}, 1.0f, 15);
  q.set_dim(2);
  q.set_num_keys(4);
  ExpectRejected(f, push, q, C::kInvalidArgument, "has dim 4, request has dim 2");
}

TEST_CASE("dense bad input is rejected with its code and changes nothing", "[validation]") {
  Fixture f;
  absl::Status (ServerCore::*push)(const v1::PushDenseRequest&, v1::PushResponse*) =
      &ServerCore::PushDense;
  using C = absl::StatusCode;

  auto d = f.DensePush(9990, 20, 20);
  ExpectRejected(f, push, d, C::kInvalidArgument, "outside the table's 10000 elements");

  d = f.DensePush(0, 5001, 21);
  ExpectRejected(f, push, d, C::kResourceExhausted, "over the limit of 5000");

  d = f.DensePush(0, 10, 22);
  d.set_count(11);
  ExpectRejected(f, push, d, C::kInvalidArgument, "11 values need 44 value bytes, got 40");

  d = f.DensePush(0, 10, 23);
  d.set_table("emb");
  ExpectRejected(f, push, d, C::kFailedPrecondition, "is sparse");

  d = f.DensePush(UINT64_MAX - 5, 10, 24);
  ExpectRejected(f, push, d, C::kInvalidArgument, "outside");

  d = f.DensePush(0, 10, 25);
  float* v = reinterpret_cast<float*>(d.mutable_values()->data());
  v[7] = NAN;
  ExpectRejected(f, push, d, C::kInvalidArgument, "value 7 of 10 is not finite");
}

TEST_CASE("keys and blocks of other shards are refused", "[validation]") {
  // Shard 1 of 2: owns the upper half of the vshards.
  Fixture f({.shard_index = 0, .num_shards = 1});
  ServerCoreOptions o{.shard_index = 1, .num_shards = 2};
  absl::StatusOr<std::unique_ptr<ServerCore>> half = ServerCore::Create(o);
  REQUIRE(half.ok());
  v1::CreateTableRequest req;
  req.mutable_header()->set_shard_map_epoch(1);
  TableConfigToProto({.name = "emb", .kind = TableKind::kSparse, .dim = kDim}, req.mutable_spec());
  v1::CreateTableResponse cr;
  REQUIRE((*half)->CreateTable(req, &cr).ok());
  absl::StatusOr<ShardMap> map = ShardMap::Uniform(1, 2);
  uint64_t foreign = 0;
  while (map->ShardOfKey(foreign) != 0) ++foreign;
  v1::PullSparseResponse resp;
  const absl::Status s = (*half)->PullSparse(f.SparsePull({foreign}), &resp);
  CHECK(s.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(s.message()).find("does not own") != std::string::npos);
}

TEST_CASE("table management", "[validation]") {
  Fixture f;
  v1::CreateTableRequest req;
  req.mutable_header()->set_shard_map_epoch(1);
  TableConfig c{.name = "emb", .kind = TableKind::kSparse, .dim = kDim};
  c.optimizer.kind = OptimizerKind::kAdagrad;
  c.initializer = {.kind = InitializerKind::kNormal, .seed = 1};
  TableConfigToProto(c, req.mutable_spec());
  v1::CreateTableResponse resp;
  CHECK(f.core->CreateTable(req, &resp).ok());                 // same spec again: fine
  CHECK(resp.spec().optimizer().epsilon() == Approx(1e-10f));  // resolved defaults come back

  req.mutable_spec()->set_dim(8);
  CHECK(f.core->CreateTable(req, &resp).code() == absl::StatusCode::kAlreadyExists);

  req.mutable_spec()->set_name("bad name!");
  CHECK(f.core->CreateTable(req, &resp).code() == absl::StatusCode::kInvalidArgument);

  req.mutable_spec()->set_name("x");
  req.mutable_spec()->mutable_optimizer()->set_kind(static_cast<v1::OptimizerKind>(42));
  CHECK(f.core->CreateTable(req, &resp).code() == absl::StatusCode::kInvalidArgument);

  v1::CreateTableRequest huge;
  huge.mutable_header()->set_shard_map_epoch(1);
  TableConfigToProto({.name = "huge", .kind = TableKind::kDense, .dense_size = uint64_t{1} << 38},
                     huge.mutable_spec());
  CHECK(f.core->CreateTable(huge, &resp).code() == absl::StatusCode::kResourceExhausted);

  v1::ListTablesRequest lr;
  lr.mutable_header()->set_shard_map_epoch(1);
  v1::ListTablesResponse list;
  REQUIRE(f.core->ListTables(lr, &list).ok());
  REQUIRE(list.tables_size() == 2);
  CHECK(list.tables(0).spec().name() == "dense");
  CHECK(list.tables(1).rows() == 4);

  v1::DropTableRequest dr;
  dr.mutable_header()->set_shard_map_epoch(1);
  dr.set_table("emb");
  v1::DropTableResponse drr;
  CHECK(f.core->DropTable(dr, &drr).ok());
  CHECK(f.core->DropTable(dr, &drr).code() == absl::StatusCode::kNotFound);
}

TEST_CASE("a retried push is acknowledged but not applied again", "[validation]") {
  Fixture f;
  const std::vector<float> before = f.Snapshot();
  v1::PushResponse resp;
  auto push = f.SparsePush({1, 2}, 0.5f, 2);
  REQUIRE(f.core->PushSparse(push, &resp).ok());
  CHECK_FALSE(resp.duplicate());
  const std::vector<float> after = f.Snapshot();
  CHECK(after != before);
  REQUIRE(f.core->PushSparse(push, &resp).ok());
  CHECK(resp.duplicate());
  CHECK(f.Snapshot() == after);
  CHECK(f.core->duplicate_pushes() == 1);
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

#define TESSERA_REQUIRE_OK_CORE(expr)    \
  do {                                   \
    const absl::Status status_ = (expr); \
    INFO(status_.ToString());            \
    REQUIRE(status_.ok());               \
  } while (0)

TEST_CASE("BSP steps: accumulated gradients are applied once, as their scaled sum", "[bsp]") {
  Fixture a, b;  // a: two accumulated pushes then ApplyStep(0.5); b: one push of the mean
  using C = absl::StatusCode;
  const std::vector<uint64_t> k = {5, 6};
  auto accumulate = [&](Fixture& f, float g, uint64_t seq, uint64_t step) {
    v1::PushSparseRequest r = f.SparsePush(k, g, seq);
    r.set_accumulate_step(step);
    v1::PushResponse resp;
    return f.core->PushSparse(r, &resp);
  };
  auto apply = [&](Fixture& f, uint64_t step, float scale, v1::ApplyStepResponse* resp) {
    v1::ApplyStepRequest r;
    r.mutable_header()->set_shard_map_epoch(1);
    r.set_table("emb");
    r.set_step(step);
    r.set_scale(scale);
    return f.core->ApplyStep(r, resp);
  };
  const std::vector<float> before = a.Snapshot();
  TESSERA_REQUIRE_OK_CORE(accumulate(a, 1.0f, 2, 1));
  TESSERA_REQUIRE_OK_CORE(accumulate(a, 3.0f, 3, 1));
  CHECK(a.Snapshot() == before);  // nothing applied yet
  // Another step while step 1 is pending is refused.
  CHECK(accumulate(a, 1.0f, 4, 2).code() == C::kFailedPrecondition);
  v1::ApplyStepResponse resp;
  TESSERA_REQUIRE_OK_CORE(apply(a, 1, 0.5f, &resp));
  CHECK(resp.rows() == 2);
  CHECK_FALSE(resp.duplicate());
  // The same as one push of the mean (2.0) on an identical server.
  v1::PushSparseRequest mean = b.SparsePush(k, 2.0f, 2);
  v1::PushResponse pr;
  TESSERA_REQUIRE_OK_CORE(b.core->PushSparse(mean, &pr));
  CHECK(a.Snapshot() == b.Snapshot());
  // Applying again is a no-op; accumulating into an applied step is refused.
  TESSERA_REQUIRE_OK_CORE(apply(a, 1, 0.5f, &resp));
  CHECK(resp.duplicate());
  CHECK(a.Snapshot() == b.Snapshot());
  CHECK(accumulate(a, 1.0f, 5, 1).code() == C::kFailedPrecondition);
  CHECK(apply(a, 0, 1.0f, &resp).code() == C::kInvalidArgument);
  v1::ApplyStepRequest missing;
  missing.mutable_header()->set_shard_map_epoch(1);
  missing.set_table("nope");
  missing.set_step(1);
  CHECK(a.core->ApplyStep(missing, &resp).code() == C::kNotFound);
  // Dense tables accumulate per block.
  v1::PushDenseRequest d = a.DensePush(900, 200, 6);  // spans blocks 0 and 1
  d.set_accumulate_step(2);
  TESSERA_REQUIRE_OK_CORE(a.core->PushDense(d, &pr));
  v1::ApplyStepRequest ad;
  ad.mutable_header()->set_shard_map_epoch(1);
  ad.set_table("dense");
  ad.set_step(2);
  ad.set_scale(1.0f);
  TESSERA_REQUIRE_OK_CORE(a.core->ApplyStep(ad, &resp));
  CHECK(resp.rows() == 2000);  // both blocks, whole
  TESSERA_REQUIRE_OK_CORE(b.core->PushDense(b.DensePush(900, 200, 6), &pr));
  CHECK(a.Snapshot() == b.Snapshot());
}

}  // namespace
}  // namespace tessera
