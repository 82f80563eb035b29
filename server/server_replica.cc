// ServerCore's side of replication: replaying a primary's changes on a backup, and the
// catch-up snapshot (export on the primary, install on the joining replica). Design and
// invariants: docs/replication.md.
#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "proto/cluster.pb.h"
#include "proto/tessera.pb.h"
#include "server/apply_executors.h"
#include "server/dense_table.h"
#include "server/server_core.h"
#include "server/sparse_table.h"

namespace tessera {
namespace {

// running_checkpoint_ while a catch-up cut is being streamed (checkpoints wait for it).
constexpr uint64_t kCatchUpRunning = std::numeric_limits<uint64_t>::max();

}  // namespace

absl::StatusOr<uint64_t> ServerCore::ExportSnapshot(
    size_t chunk_bytes, const std::function<absl::Status(v1::InstallSnapshotRequest&)>& send) {
  {
    absl::MutexLock lock(&ckpt_mu_);
    if (running_checkpoint_ != 0) {
      return absl::UnavailableError("a checkpoint is being written; catch-up waits for it");
    }
    running_checkpoint_ = kCatchUpRunning;
  }
  absl::Cleanup not_running = [this] {
    absl::MutexLock lock(&ckpt_mu_);
    running_checkpoint_ = 0;
  };

  // The cut: an LSN and copy-on-write in every table, under the order and the gate.
  std::vector<std::shared_ptr<Table>> tables;
  std::vector<PushDeduplicator::ClientSnapshot> dedup;
  google::protobuf::RepeatedPtrField<v1::SnapshotAccumulator> accumulators;
  uint64_t cut_gen, cut_lsn;
  int64_t cut_time;
  {
    absl::MutexLock order(&order_mu_);
    executors_->Drain();  // the cut is an LSN fence: everything sequenced is applied
    absl::WriterMutexLock gate(&gate_);
    cut_lsn = lsn_;
    cut_time = time_ms_;
    cut_gen = BeginCutLocked(&tables, &dedup);
    // BSP sums not applied yet (they change only under the order, held here).
    for (const auto& t : tables) {
      const StepSums& sums = t->sums;
      if (sums.step == 0 && sums.applied_step == 0) continue;
      v1::SnapshotAccumulator* a = accumulators.Add();
      a->set_table(t->config.name);
      a->set_step(sums.step);
      a->set_applied_step(sums.applied_step);
      for (const auto& [key, sum] : sums.rows) {
        a->mutable_keys()->append(reinterpret_cast<const char*>(&key), sizeof(key));
        a->mutable_sums()->append(reinterpret_cast<const char*>(sum.data()),
                                  sum.size() * sizeof(float));
      }
      for (const auto& [block, sum] : sums.blocks) {
        a->mutable_keys()->append(reinterpret_cast<const char*>(&block), sizeof(block));
        a->mutable_sums()->append(reinterpret_cast<const char*>(sum.data()),
                                  sum.size() * sizeof(float));
      }
    }
  }
  absl::Cleanup end_cut = [&] {
    for (const auto& t : tables) {
      t->data().EndCut();
    }
  };

  v1::InstallSnapshotRequest chunk;
  size_t bytes = 0;
  auto flush = [&]() -> absl::Status {
    absl::Status s = send(chunk);
    chunk.Clear();
    bytes = 0;
    return s;
  };
  for (const auto& t : tables) {
    TableConfigToProto(t->config, chunk.add_tables());
    chunk.add_table_ids(t->id);
  }
  TESSERA_RETURN_IF_ERROR(flush());
  VshardSnapshot snap;
  for (const auto& t : tables) {
    if (t->sparse != nullptr) {
      SparseTable& sparse = *t->sparse;
      for (uint32_t v = 0; v < sparse.num_vshards(); ++v) {
        if (!sparse.Owns(v)) continue;
        sparse.TakeVshard(v, cut_gen, /*parent_gen=*/0, &snap);
        if (snap.keys.empty()) continue;
        v1::SnapshotRows* rows = chunk.add_rows();
        TableConfigToProto(t->config, rows->mutable_spec());
        rows->set_vshard(v);
        rows->set_keys(snap.keys.data(), snap.keys.size() * sizeof(uint64_t));
        rows->set_payload(std::move(snap.payload));
        snap.payload.clear();
        bytes += rows->keys().size() + rows->payload().size();
        if (bytes >= chunk_bytes) TESSERA_RETURN_IF_ERROR(flush());
      }
    } else {
      DenseTable& dense = *t->dense;
      for (uint64_t b = 0; b < dense.layout().num_blocks(); ++b) {
        if (!dense.Holds(b)) continue;
        std::string payload(dense.BlockPayloadBytes(b), '\0');
        if (!dense.TakeBlock(b, cut_gen, /*parent_gen=*/0, payload.data())) continue;
        v1::SnapshotRows* rows = chunk.add_rows();
        TableConfigToProto(t->config, rows->mutable_spec());
        rows->set_vshard(dense.VshardOf(b));
        rows->set_dense_block(b);
        rows->set_payload(std::move(payload));
        bytes += rows->payload().size();
        if (bytes >= chunk_bytes) TESSERA_RETURN_IF_ERROR(flush());
      }
    }
  }
  for (const PushDeduplicator::ClientSnapshot& c : dedup) {
    v1::SnapshotClient* client = chunk.add_clients();
    client->set_client_id(c.client_id);
    client->set_floor(c.floor);
    for (uint64_t seq : c.applied) client->add_applied(seq);
    client->set_last_seen_ms(c.last_seen_ms);
  }
  chunk.mutable_accumulators()->Swap(&accumulators);
  chunk.set_done(true);
  chunk.set_lsn(cut_lsn);
  chunk.set_time_ms(cut_time);
  TESSERA_RETURN_IF_ERROR(flush());
  return cut_lsn;
}

absl::Status ServerCore::InstallSnapshot(uint64_t term, const v1::InstallSnapshotRequest& req) {
  if (!bound()) return absl::FailedPreconditionError("this server is not bound to a shard");
  absl::MutexLock lock(&snap_mu_);
  if (req.seq() == 0) {
    incoming_ = std::make_unique<IncomingSnapshot>();
    incoming_->id = req.snapshot_id();
    if (req.table_ids_size() != req.tables_size()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("snapshot %u names %u tables but %u table ids", req.snapshot_id(),
                          req.tables_size(), req.table_ids_size()));
    }
    for (int i = 0; i < req.tables_size(); ++i) {
      const v1::TableSpec& spec = req.tables(i);
      absl::StatusOr<TableConfig> parsed = TableConfigFromProto(spec);
      if (!parsed.ok()) return parsed.status();
      absl::StatusOr<TableConfig> config = ResolveTableConfig(*parsed);
      if (!config.ok()) return config.status();
      absl::StatusOr<std::shared_ptr<Table>> table =
          NewTable(*config, /*initialize=*/false, /*force=*/true);  // (what its primary holds)
      if (!table.ok()) return table.status();
      (*table)->id = req.table_ids(i);
      incoming_->tables.emplace(config->name, *std::move(table));
    }
  } else if (incoming_ == nullptr || incoming_->id != req.snapshot_id() ||
             incoming_->next_seq != req.seq()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("snapshot %u chunk %u is out of order; the primary must start again",
                        req.snapshot_id(), req.seq()));
  }
  IncomingSnapshot& in = *incoming_;
  for (const v1::SnapshotRows& rows : req.rows()) {
    auto it = in.tables.find(rows.spec().name());
    if (it == in.tables.end()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("snapshot rows for unknown table '%s'", rows.spec().name()));
    }
    Table& t = *it->second;
    if (t.sparse != nullptr) {
      SparseTable& sparse = *t.sparse;
      const size_t n = rows.keys().size() / sizeof(uint64_t);
      const size_t rb = sparse.row_bytes();
      if (rows.keys().size() != n * sizeof(uint64_t) || rows.payload().size() != n * rb ||
          rows.vshard() >= sparse.num_vshards() || !sparse.Owns(rows.vshard())) {
        return absl::InvalidArgumentError(
            absl::StrFormat("snapshot rows of table '%s' (vshard %u) do not fit",
                            rows.spec().name(), rows.vshard()));
      }
      std::vector<uint64_t> scratch;
      absl::Span<const uint64_t> keys = PackedView<uint64_t>(rows.keys(), &scratch);
      for (size_t i = 0; i < n; ++i) {
        if (VshardOfKey(keys[i], sparse.num_vshards()) != rows.vshard()) {
          return absl::InvalidArgumentError(
              absl::StrFormat("snapshot key %u of table '%s' is not in vshard %u", keys[i],
                              rows.spec().name(), rows.vshard()));
        }
        sparse.LoadRow(rows.vshard(), keys[i],
                       absl::string_view(rows.payload().data() + i * rb, rb));
      }
    } else {
      DenseTable& dense = *t.dense;
      const uint64_t b = rows.dense_block();
      if (b >= dense.layout().num_blocks() || !dense.Holds(b) ||
          rows.payload().size() != dense.BlockPayloadBytes(b)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("snapshot block %u of table '%s' does not fit", b, rows.spec().name()));
      }
      dense.LoadBlock(b, rows.payload());
    }
  }
  ++in.next_seq;
  if (!req.done()) return absl::OkStatus();
  for (auto& [name, t] : in.tables) (void)ChargeLoadedRows(*t, /*force=*/true);

  for (const v1::SnapshotAccumulator& a : req.accumulators()) {
    auto it = in.tables.find(a.table());
    if (it == in.tables.end()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("snapshot step sums for unknown table '%s'", a.table()));
    }
    Table& t = *it->second;
    t.sums.step = a.step();
    t.sums.applied_step = a.applied_step();
    const size_t n = a.keys().size() / sizeof(uint64_t);
    std::vector<uint64_t> ids(n);
    std::memcpy(ids.data(), a.keys().data(), n * sizeof(uint64_t));
    size_t offset = 0;  // in floats
    const size_t total = a.sums().size() / sizeof(float);
    for (uint64_t id : ids) {
      const size_t len =
          t.sparse != nullptr
              ? t.sparse->dim()
              : (id < t.dense->layout().num_blocks()
                     ? t.dense->layout().BlockEnd(id) - t.dense->layout().BlockBegin(id)
                     : total + 1);
      if (offset + len > total) {
        return absl::InvalidArgumentError(
            absl::StrFormat("snapshot step sums of table '%s' do not fit", a.table()));
      }
      std::vector<float>& sum = t.sparse != nullptr ? t.sums.rows[id] : t.sums.blocks[id];
      sum.resize(len);
      std::memcpy(sum.data(), a.sums().data() + offset * sizeof(float), len * sizeof(float));
      offset += len;
    }
  }
  std::vector<PushDeduplicator::ClientSnapshot> clients;
  for (const v1::SnapshotClient& c : req.clients()) {
    clients.push_back(
        {c.client_id(), c.floor(), {c.applied().begin(), c.applied().end()}, c.last_seen_ms()});
  }
  absl::flat_hash_map<std::string, std::shared_ptr<Table>> old;  // freed outside the locks
  const size_t num_tables = in.tables.size();
  {
    absl::ReaderMutexLock role(&role_mu_);
    TESSERA_RETURN_IF_ERROR(CheckReplayTerm(term));
    absl::MutexLock order(&order_mu_);
    executors_->Drain();  // replays of the state being replaced finish first
    absl::WriterMutexLock gate(&gate_);
    absl::MutexLock tables_lock(&tables_mu_);
    old.swap(tables_);
    tables_ = std::move(in.tables);
    dedup_.Restore(clients);
    lsn_ = req.lsn();
    time_ms_ = req.time_ms();
    failed_ = absl::OkStatus();  // a snapshot is the way out of FAILED
  }
  incoming_.reset();
  {
    absl::MutexLock ckpt(&ckpt_mu_);
    known_cuts_.clear();  // increments need a full checkpoint of this state first
  }
  LogInfo("installed a snapshot of shard %u at LSN %u: %u tables", shard_index_, req.lsn(),
          num_tables);
  return absl::OkStatus();
}

}  // namespace tessera
