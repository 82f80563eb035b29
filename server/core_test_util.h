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
#include "common/wire.h"
#include "proto/cluster.pb.h"
#include "proto/tessera.pb.h"
#include "server/server_core.h"

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

inline v1::PushSparseRequest SparsePushReq(const std::string& table, uint32_t dim,
                                           const std::vector<uint64_t>& keys,
                                           const std::vector<float>& values, uint64_t client,
                                           uint64_t seq, uint64_t floor = 1, uint64_t step = 0) {
  v1::PushSparseRequest r;
  r.mutable_header()->set_shard_map_epoch(1);
  r.set_table(table);
  r.set_key_type(v1::KEY_TYPE_UINT64);
  r.set_dtype(v1::DTYPE_FLOAT32);
  r.set_dim(dim);
  r.set_num_keys(keys.size());
  PackedAssign<uint64_t>(r.mutable_keys(), keys);
  PackedAssign<float>(r.mutable_values(), values);
  r.mutable_id()->set_client_id(client);
  r.mutable_id()->set_sequence(seq);
  r.mutable_id()->set_floor(floor);
  r.set_accumulate_step(step);
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
  r.mutable_id()->set_client_id(client);
  r.mutable_id()->set_sequence(seq);
  r.mutable_id()->set_floor(floor);
  r.set_accumulate_step(step);
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

inline v1::PullSparseRequest SparsePullReq(const std::string& table, uint32_t dim,
                                           const std::vector<uint64_t>& keys) {
  v1::PullSparseRequest r;
  r.mutable_header()->set_shard_map_epoch(1);
  r.set_table(table);
  r.set_key_type(v1::KEY_TYPE_UINT64);
  r.set_dtype(v1::DTYPE_FLOAT32);
  r.set_dim(dim);
  r.set_num_keys(keys.size());
  PackedAssign<uint64_t>(r.mutable_keys(), keys);
  return r;
}

// The weights of `keys` (empty on error).
inline std::vector<float> PullRows(ServerCore& core, const std::string& table, uint32_t dim,
                                   const std::vector<uint64_t>& keys) {
  v1::PullSparseResponse resp;
  if (!core.PullSparse(SparsePullReq(table, dim, keys), &resp).ok()) return {};
  const float* v = reinterpret_cast<const float*>(resp.values().data());
  return std::vector<float>(v, v + keys.size() * dim);
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
    for (const LogEntry& e : log.Take(replayed)) {
      if (std::holds_alternative<RestoreOp>(e.op)) {
        absl::Status st = Resync();
        if (!st.ok()) return st;
        ++replayed;
        continue;
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
    backup->WaitApplied();
    return absl::OkStatus();
  }

  // A catch-up snapshot of the primary installed on the backup.
  absl::Status Resync() {
    static uint64_t next_id = 1;
    const uint64_t id = next_id++;
    uint64_t seq = 0;
    absl::StatusOr<uint64_t> cut =
        primary->ExportSnapshot(1 << 20, [&](v1::InstallSnapshotRequest& chunk) {
          chunk.set_snapshot_id(id);
          chunk.set_seq(seq++);
          return backup->InstallSnapshot(1, chunk);
        });
    if (!cut.ok()) return cut.status();
    replayed = log.size();  // the snapshot holds everything logged up to its cut
    return absl::OkStatus();
  }
};

}  // namespace tessera::testing

#endif  // TESSERA_SERVER_CORE_TEST_UTIL_H_
