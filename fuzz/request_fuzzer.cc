// Request decode + validation + apply (docs/state_machine.md): the first byte picks a
// ParameterServer method, the rest is its request as a client would send it; the request is
// parsed and run against one long-lived ServerCore with small limits. Any crash, sanitizer
// report or leak is a finding.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "fuzz/fuzz_util.h"
#include "server/core_test_util.h"

namespace tessera {
namespace {

using namespace tessera::testing;  // NOLINT

ServerCore& Core() {
  static ServerCore* core = [] {
    ServerCoreOptions o;
    o.num_vshards = 16;
    o.apply_threads = 2;
    o.max_keys_per_request = 4096;
    o.max_dense_elems_per_request = 1 << 16;
    o.max_table_bytes = 64 << 20;
    o.max_memory_bytes = 512 << 20;
    o.max_response_bytes = 8 << 20;
    ServerCore* c = ServerCore::Create(o)->release();
    v1::CreateTableResponse r;
    (void)c->CreateTable(CreateReq(SparseConfig("s", 4, OptimizerKind::kAdam)), &r);
    (void)c->CreateTable(CreateReq(SparseConfig("f", 2, OptimizerKind::kFtrl)), &r);
    (void)c->CreateTable(CreateReq(DenseConfig("d", 1000, 100, OptimizerKind::kAdagrad)), &r);
    return c;
  }();
  return *core;
}

template <typename Req, typename Resp, typename Call>
void Run(const uint8_t* data, size_t size, bool fix_epoch, Call call) {
  Req req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  if (fix_epoch) req.mutable_header()->set_shard_map_epoch(1);  // get past routing mostly
  Resp resp;
  (void)call(req, &resp);
}

std::vector<std::string> Seeds() {
  std::vector<std::string> seeds;
  auto add = [&](char method, const google::protobuf::Message& m) {
    seeds.push_back(std::string(1, method) + m.SerializeAsString());
  };
  add(0, CreateReq(SparseConfig("n", 3, OptimizerKind::kMomentum)));
  add(0, CreateReq(DenseConfig("m", 500, 64, OptimizerKind::kAdam)));
  add(1, DropReq("n"));
  add(2, SparsePullReq("s", 4, {1, 2, 3}));
  add(3, SparsePushReq("s", 4, {1, 2}, std::vector<float>(8, 0.5f), 7, 1));
  add(3, SparsePushReq("f", 2, {5}, {1e20f, -3e38f}, 7, 2, 1, 1));
  v1::PullDenseRequest pd;
  pd.mutable_header()->set_shard_map_epoch(1);
  pd.set_table("d");
  pd.set_dtype(v1::DTYPE_FLOAT32);
  pd.set_offset(10);
  pd.set_count(100);
  add(4, pd);
  add(5, DensePushReq("d", 90, std::vector<float>(30, 0.25f), 8, 1));
  add(5, DensePushReq("d", 0, std::vector<float>(10, 1.0f), 8, 2, 1, 1));
  add(6, ApplyStepReq("d", 1, 0.5f));
  v1::DescribeTableRequest dt;
  dt.mutable_header()->set_shard_map_epoch(1);
  dt.set_table("s");
  add(7, dt);
  v1::ListTablesRequest lt;
  lt.mutable_header()->set_shard_map_epoch(1);
  add(8, lt);
  add(9, RemoveRowsReq("s", {1, 3, 99}));
  return seeds;
}

}  // namespace
}  // namespace tessera

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tessera::fuzz::MaybeWriteSeeds(tessera::Seeds());
  tessera::Core();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;  // NOLINT
  if (size == 0) return 0;
  ServerCore& core = Core();
  const uint8_t method = data[0] % 10;
  const bool fix_epoch = (data[0] & 0x80) == 0;
  ++data;
  --size;
  switch (method) {
    case 0:
      Run<v1::CreateTableRequest, v1::CreateTableResponse>(
          data, size, fix_epoch, [&](auto& q, auto* p) { return core.CreateTable(q, p); });
      break;
    case 1:
      Run<v1::DropTableRequest, v1::DropTableResponse>(
          data, size, fix_epoch, [&](auto& q, auto* p) { return core.DropTable(q, p); });
      break;
    case 2:
      Run<v1::PullSparseRequest, v1::PullSparseResponse>(
          data, size, fix_epoch, [&](auto& q, auto* p) { return core.PullSparse(q, p); });
      break;
    case 3:
      Run<v1::PushSparseRequest, v1::PushResponse>(
          data, size, fix_epoch, [&](auto& q, auto* p) { return core.PushSparse(q, p); });
      break;
    case 4:
      Run<v1::PullDenseRequest, v1::PullDenseResponse>(
          data, size, fix_epoch, [&](auto& q, auto* p) { return core.PullDense(q, p); });
      break;
    case 5:
      Run<v1::PushDenseRequest, v1::PushResponse>(
          data, size, fix_epoch, [&](auto& q, auto* p) { return core.PushDense(q, p); });
      break;
    case 6:
      Run<v1::ApplyStepRequest, v1::ApplyStepResponse>(
          data, size, fix_epoch, [&](auto& q, auto* p) { return core.ApplyStep(q, p); });
      break;
    case 7:
      Run<v1::DescribeTableRequest, v1::DescribeTableResponse>(
          data, size, fix_epoch, [&](auto& q, auto* p) { return core.DescribeTable(q, p); });
      break;
    case 8:
      Run<v1::ListTablesRequest, v1::ListTablesResponse>(
          data, size, fix_epoch, [&](auto& q, auto* p) { return core.ListTables(q, p); });
      break;
    case 9:
      Run<v1::RemoveRowsRequest, v1::RemoveRowsResponse>(
          data, size, fix_epoch, [&](auto& q, auto* p) { return core.RemoveRows(q, p); });
      break;
  }
  return 0;
}
