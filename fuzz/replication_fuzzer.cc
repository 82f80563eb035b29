// Replication decode (docs/replication.md, docs/state_machine.md): the bytes are a
// ReplicateRequest as a backup receives it (first byte even) or an InstallSnapshotRequest
// (odd). Batches are decoded without copies, each entry parsed and replayed on a backup core
// at its next LSN; snapshot chunks are installed. A backup that turns FAILED is replaced.
#include <grpcpp/support/proto_buffer_reader.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "fuzz/fuzz_util.h"
#include "server/core_test_util.h"
#include "server/replication_codec.h"

namespace tessera {
namespace {

using namespace tessera::testing;  // NOLINT

std::unique_ptr<ServerCore> NewBackup() {
  ServerCoreOptions o;
  o.coordinated = true;
  o.num_vshards = 16;
  o.apply_threads = 2;
  o.max_keys_per_request = 4096;
  o.max_table_bytes = 64 << 20;
  o.max_memory_bytes = 512 << 20;
  std::unique_ptr<ServerCore> c = *ServerCore::Create(o);
  (void)c->Bind(0, 1);
  c->SetRouting(1, /*serving=*/false, /*term=*/1);
  return c;
}

std::unique_ptr<ServerCore>& Backup() {
  static auto* b = new std::unique_ptr<ServerCore>(NewBackup());
  return *b;
}

std::vector<std::string> Seeds() {
  // A batch as a primary sends it: a create, pushes, an ApplyStep, a drop.
  std::vector<std::string> seeds;
  v1::ReplicateRequest header;
  header.set_epoch(1);
  header.set_primary("127.0.0.1:1");
  header.set_first_lsn(1);
  std::vector<Entry> entries;
  auto add = [&](int kind, const google::protobuf::Message& m, uint64_t table_id) {
    const std::string bytes = m.SerializeAsString();
    grpc::Slice slice(bytes);
    entries.push_back({entries.size() + 1, kind, 1000, table_id, grpc::ByteBuffer(&slice, 1)});
  };
  add(v1::LOG_ENTRY_KIND_CREATE_TABLE, CreateReq(SparseConfig("s", 2, OptimizerKind::kAdam)), 1);
  add(v1::LOG_ENTRY_KIND_PUSH_SPARSE, SparsePushReq("s", 2, {1, 9}, {1, 2, 3, 4}, 5, 1), 1);
  add(v1::LOG_ENTRY_KIND_PUSH_SPARSE, SparsePushReq("s", 2, {3}, {1, 2}, 5, 2, 2, 1), 1);
  add(v1::LOG_ENTRY_KIND_APPLY_STEP, ApplyStepReq("s", 1, 1.0f), 1);
  add(v1::LOG_ENTRY_KIND_REMOVE_ROWS, RemoveRowsReq("s", {9, 4}), 1);
  add(v1::LOG_ENTRY_KIND_CREATE_TABLE, CreateReq(DenseConfig("d", 300, 50, OptimizerKind::kSgd)),
      5);
  add(v1::LOG_ENTRY_KIND_PUSH_DENSE, DensePushReq("d", 20, std::vector<float>(60, 1), 6, 1), 5);
  add(v1::LOG_ENTRY_KIND_DROP_TABLE, DropReq("s"), 1);
  std::vector<Entry*> ptrs;
  for (Entry& e : entries) ptrs.push_back(&e);
  std::vector<grpc::Slice> slices;
  (void)EncodeBatch(header, ptrs).Dump(&slices);
  std::string batch;
  for (const auto& s : slices) batch.append(reinterpret_cast<const char*>(s.begin()), s.size());
  seeds.push_back(std::string(1, '\0') + batch);
  v1::InstallSnapshotRequest snap;
  TableConfigToProto(*ResolveTableConfig(SparseConfig("s", 2, OptimizerKind::kSgd)),
                     snap.add_tables());
  snap.add_table_ids(3);
  v1::SnapshotRows* rows = snap.add_rows();
  *rows->mutable_spec() = snap.tables(0);
  const uint64_t key = 1;
  rows->set_vshard(VshardOfKey(key, 16));
  rows->set_keys(std::string(reinterpret_cast<const char*>(&key), 8));
  rows->set_payload(std::string(2 * sizeof(float), '\0'));
  snap.set_done(true);
  snap.set_lsn(4);
  snap.add_clients()->set_client_id(5);
  seeds.push_back(std::string(1, '\1') + snap.SerializeAsString());
  return seeds;
}

}  // namespace
}  // namespace tessera

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tessera::fuzz::MaybeWriteSeeds(tessera::Seeds());
  tessera::Backup();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;  // NOLINT
  if (size == 0) return 0;
  std::unique_ptr<ServerCore>& backup = Backup();
  if (backup->failed()) backup = NewBackup();
  const bool snapshot = (data[0] & 1) != 0;
  ++data;
  --size;
  if (snapshot) {
    v1::InstallSnapshotRequest req;
    if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
    req.set_seq(0);  // each input is one whole snapshot (chunk 0, maybe done)
    (void)backup->InstallSnapshot(1, req);
    return 0;
  }
  grpc::Slice slice(data, size);
  grpc::ByteBuffer bytes(&slice, 1);
  DecodedBatch batch;
  if (!DecodeBatch(bytes, &batch).ok()) return 0;
  for (DecodedBatch::Item& item : batch.entries) {
    grpc::ProtoBufferReader reader(&item.request);
    absl::StatusOr<LogEntry> entry = ServerCore::DecodeEntry(item.kind, &reader);
    if (!entry.ok()) continue;
    entry->lsn = backup->lsn() + 1;  // (in order: the fuzzer explores contents, not gaps)
    entry->time_ms = item.time_ms;
    entry->table_id = item.table_id;
    if (!backup->Replay(1, *std::move(entry)).ok()) break;
  }
  backup->WaitApplied();
  return 0;
}
