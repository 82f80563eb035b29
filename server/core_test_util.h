// Request builders and an in-process replica pair for ServerCore tests: the primary's log is
// captured and replayed on a backup core through the same decode and apply path as over gRPC.
#ifndef TESSERA_SERVER_CORE_TEST_UTIL_H_
#define TESSERA_SERVER_CORE_TEST_UTIL_H_

#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/wire.h"
#include "proto/checkpoint.pb.h"
#include "proto/cluster.pb.h"
#include "proto/tessera.pb.h"
#include "server/server_core.h"
#include "storage/checkpoint_store.h"

namespace tessera::testing {

inline v1::CreateTableRequest CreateReq(const TableConfig& c) {
  v1::CreateTableRequest req;
  req.mutable_header()->set_shard_map_epoch(1);
  TableConfigToProto(c, req.mutable_spec());
  return req;
}

inline TableConfig SparseConfig(const std::string& name, uint32_t dim, OptimizerKind opt) {
  TableConfig c{.name = name, .kind = TableKind::kSparse};
  c.dim = dim;
  c.optimizer.kind = opt;
  c.initializer = {.kind = InitializerKind::kNormal, .seed = 3};
  return c;
}

inline TableConfig DenseConfig(const std::string& name, uint64_t size, uint32_t block,
                               OptimizerKind opt) {
  TableConfig c{.name = name, .kind = TableKind::kDense};
  c.dense_size = size;
  c.dense_block_elems = block;
  c.optimizer.kind = opt;
  c.initializer = {.kind = InitializerKind::kNormal, .seed = 5};
  return c;
}

inline v1::DropTableRequest DropReq(const std::string& name) {
  v1::DropTableRequest req;
  req.mutable_header()->set_shard_map_epoch(1);
  req.set_table(name);
  return req;
}

// A sparse pull or push of `keys` (epoch 1), without values.
template <typename Req>
Req SparseReq(const std::string& table, uint32_t dim, const std::vector<uint64_t>& keys) {
  Req r;
  r.mutable_header()->set_shard_map_epoch(1);
  r.set_table(table);
  r.set_key_type(v1::KEY_TYPE_UINT64);
  r.set_dtype(v1::DTYPE_FLOAT32);
  r.set_dim(dim);
  r.set_num_keys(keys.size());
  PackedAssign<uint64_t>(r.mutable_keys(), keys);
  return r;
}

// The push id and BSP step of a push.
template <typename Req>
void SetPushId(Req* r, uint64_t client, uint64_t seq, uint64_t floor, uint64_t step) {
  r->mutable_id()->set_client_id(client);
  r->mutable_id()->set_sequence(seq);
  r->mutable_id()->set_floor(floor);
  r->set_accumulate_step(step);
}

inline v1::PushSparseRequest SparsePushReq(const std::string& table, uint32_t dim,
                                           const std::vector<uint64_t>& keys,
                                           const std::vector<float>& values, uint64_t client,
                                           uint64_t seq, uint64_t floor = 1, uint64_t step = 0) {
  auto r = SparseReq<v1::PushSparseRequest>(table, dim, keys);
  PackedAssign<float>(r.mutable_values(), values);
  SetPushId(&r, client, seq, floor, step);
  return r;
}

inline v1::PushDenseRequest DensePushReq(const std::string& table, uint64_t offset,
                                         const std::vector<float>& values, uint64_t client,
                                         uint64_t seq, uint64_t floor = 1, uint64_t step = 0) {
  v1::PushDenseRequest r;
  r.mutable_header()->set_shard_map_epoch(1);
  r.set_table(table);
  r.set_dtype(v1::DTYPE_FLOAT32);
  r.set_offset(offset);
  r.set_count(values.size());
  PackedAssign<float>(r.mutable_values(), values);
  SetPushId(&r, client, seq, floor, step);
  return r;
}

inline v1::ApplyStepRequest ApplyStepReq(const std::string& table, uint64_t step, float scale) {
  v1::ApplyStepRequest r;
  r.mutable_header()->set_shard_map_epoch(1);
  r.set_table(table);
  r.set_step(step);
  r.set_scale(scale);
  return r;
}

inline v1::RemoveRowsRequest RemoveRowsReq(const std::string& table,
                                           const std::vector<uint64_t>& keys) {
  v1::RemoveRowsRequest r;
  r.mutable_header()->set_shard_map_epoch(1);
  r.set_table(table);
  r.set_key_type(v1::KEY_TYPE_UINT64);
  r.set_num_keys(keys.size());
  PackedAssign<uint64_t>(r.mutable_keys(), keys);
  return r;
}

inline v1::PullSparseRequest SparsePullReq(const std::string& table, uint32_t dim,
                                           const std::vector<uint64_t>& keys) {
  return SparseReq<v1::PullSparseRequest>(table, dim, keys);
}

// The weights of `keys` (empty on error).
inline std::vector<float> PullRows(ServerCore& core, const std::string& table, uint32_t dim,
                                   const std::vector<uint64_t>& keys) {
  v1::PullSparseResponse resp;
  if (!core.PullSparse(SparsePullReq(table, dim, keys), &resp).ok()) return {};
  const float* v = reinterpret_cast<const float*>(resp.values().data());
  return std::vector<float>(v, v + keys.size() * dim);
}

// Writes checkpoint `id` of a single-shard core, full or (parent != 0, `chain` its parent's
// chain) incremental, and publishes its manifest, as the checkpoint driver does.
inline absl::Status WriteCheckpoint(ServerCore& core, const std::string& dir, uint64_t id,
                                    uint64_t parent = 0, std::vector<uint64_t> chain = {}) {
  v1::WriteCheckpointRequest req;
  req.mutable_header()->set_shard_map_epoch(1);
  req.set_checkpoint_id(id);
  req.set_parent_id(parent);
  v1::WriteCheckpointResponse resp;
  absl::Status st = core.WriteCheckpoint(req, &resp);
  if (!st.ok()) return st;
  storage::v1::CheckpointManifest m;
  m.set_id(id);
  m.set_parent_id(parent);
  for (uint64_t c : chain) m.add_chain(c);
  m.add_chain(id);
  m.set_num_shards(1);
  m.set_shard_map_epoch(1);
  if (!m.add_parts()->ParseFromString(resp.part())) return absl::DataLossError("bad part");
  m.set_num_vshards(m.parts(0).num_vshards());
  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
      storage::CheckpointStore::Open(dir);
  if (!store.ok()) return store.status();
  return (*store)->Publish(m);
}

inline absl::Status RestoreNewest(ServerCore& core) {
  v1::RestoreCheckpointRequest req;
  req.mutable_header()->set_shard_map_epoch(1);
  req.set_phase(v1::RESTORE_PHASE_PREPARE_AND_COMMIT);
  v1::RestoreCheckpointResponse resp;
  return core.RestoreCheckpoint(req, &resp);
}

// Captures every entry the primary logs.
class CapturingLog : public ServerCore::UpdateLog {
 public:
  void Append(const LogEntry& entry) override {
    absl::MutexLock lock(&mu_);
    entries_.push_back(entry);
  }
  std::vector<LogEntry> Take(size_t from) {
    absl::MutexLock lock(&mu_);
    return std::vector<LogEntry>(entries_.begin() + std::min(from, entries_.size()),
                                 entries_.end());
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return entries_.size();
  }

 private:
  absl::Mutex mu_;
  std::vector<LogEntry> entries_ ABSL_GUARDED_BY(mu_);
};

// The request bytes of an entry as the primary would send them.
inline std::string EntryBytes(const LogEntry& e) {
  return std::visit(
      [](const auto& op) -> std::string {
        if constexpr (std::is_same_v<std::decay_t<decltype(op)>, RestoreOp>) {
          return "";
        } else {
          return op->SerializeAsString();
        }
      },
      e.op);
}

// A primary (serving, uncoordinated) and a backup core (bound to shard 0 of 1, term 1).
struct ReplicaPair {
  std::unique_ptr<ServerCore> primary, backup;
  CapturingLog log;
  size_t replayed = 0;

  explicit ReplicaPair(ServerCoreOptions p = {}, ServerCoreOptions b = {}) {
    primary = *ServerCore::Create(p);
    primary->SetUpdateLog(&log);
    b.coordinated = true;
    backup = *ServerCore::Create(b);
    (void)backup->Bind(0, 1);
    backup->SetRouting(1, /*serving=*/false, /*term=*/1);
  }

  // Replays what the primary logged since the last call, as the replicator does: decoded from
  // bytes, in LSN order; a restore is a snapshot. Returns the first refusal.
  absl::Status Replicate() {
    for (bool again = true; again;) {
      again = false;
      for (const LogEntry& e : log.Take(replayed)) {
        if (std::holds_alternative<RestoreOp>(e.op)) {
          absl::Status st = Resync();  // sets `replayed` past its cut
          if (!st.ok()) return st;
          again = true;
          break;
        }
        const std::string bytes = EntryBytes(e);
        google::protobuf::io::ArrayInputStream in(bytes.data(), static_cast<int>(bytes.size()));
        absl::StatusOr<LogEntry> decoded = ServerCore::DecodeEntry(LogEntryKindOf(e), &in);
        if (!decoded.ok()) return decoded.status();
        decoded->lsn = e.lsn;
        decoded->time_ms = e.time_ms;
        decoded->table_id = e.table_id;
        absl::Status st = backup->Replay(1, *std::move(decoded));
        if (!st.ok()) return st;
        ++replayed;
      }
    }
    backup->WaitApplied();
    return absl::OkStatus();
  }

  // A catch-up snapshot of the primary installed on the backup (retried while a checkpoint
  // is being written, a bounded number of times).
  absl::Status Resync() {
    absl::StatusOr<uint64_t> cut;
    for (int attempt = 0; attempt < 1000; ++attempt) {
      const uint64_t id = ++snapshots;
      uint64_t seq = 0;
      cut = primary->ExportSnapshot(1 << 20, [&](v1::InstallSnapshotRequest& chunk) {
        chunk.set_snapshot_id(id);
        chunk.set_seq(seq++);
        return backup->InstallSnapshot(1, chunk);
      });
      if (cut.ok() || cut.status().code() != absl::StatusCode::kUnavailable) break;
      absl::SleepFor(absl::Milliseconds(1));  // (a checkpoint is being written: retry)
    }
    if (!cut.ok()) return cut.status();
    // The snapshot holds everything logged up to its cut.
    replayed = 0;
    for (const LogEntry& e : log.Take(0)) replayed += e.lsn <= *cut ? 1 : 0;
    return absl::OkStatus();
  }
  uint64_t snapshots = 0;
};

}  // namespace tessera::testing

#endif  // TESSERA_SERVER_CORE_TEST_UTIL_H_
