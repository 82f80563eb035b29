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
#include "server/request_checks.h"
#include "server/server_core.h"
#include "server/sparse_table.h"

namespace tessera {
namespace {

// running_checkpoint_ while a catch-up cut is being streamed (checkpoints wait for it).
constexpr uint64_t kCatchUpRunning = std::numeric_limits<uint64_t>::max();

// A group's entries as one SnapshotRows of `chunk` (added at the first entry; none for a group
// with nothing to send): ids in `keys`, payloads back to back.
class SnapshotRowsSink final : public EntrySink {
 public:
  SnapshotRowsSink(v1::InstallSnapshotRequest* chunk, const TableConfig& config)
      : chunk_(chunk), config_(config) {}

  absl::Status Add(uint32_t vshard, uint64_t id, absl::string_view payload) override {
    return AddPlaced(vshard, id, payload, /*on_disk=*/false);
  }
  absl::Status AddDemoted(uint32_t vshard, uint64_t id, absl::string_view payload) override {
    return AddPlaced(vshard, id, payload, /*on_disk=*/true);
  }
  absl::Status SetState(uint32_t vshard, absl::string_view state) override {
    Start(vshard);
    rows_->set_state(std::string(state));
    return absl::OkStatus();
  }
  size_t bytes() const {
    return rows_ == nullptr
               ? 0
               : rows_->keys().size() + rows_->payload().size() + rows_->state().size();
  }

 private:
  absl::Status AddPlaced(uint32_t vshard, uint64_t id, absl::string_view payload, bool on_disk) {
    Start(vshard);
    const size_t i = rows_->keys().size() / sizeof(id);
    rows_->mutable_keys()->append(reinterpret_cast<const char*>(&id), sizeof(id));
    rows_->mutable_payload()->append(payload.data(), payload.size());
    if (config_.lifecycle.tier()) {  // (a bit per entry: where the joiner puts it)
      std::string& bits = *rows_->mutable_demoted();
      if (bits.size() < i / 8 + 1) bits.push_back('\0');
      if (on_disk) bits[i / 8] = static_cast<char>(bits[i / 8] | (1 << (i % 8)));
    }
    return absl::OkStatus();
  }
  void Start(uint32_t vshard) {
    if (rows_ != nullptr) return;
    rows_ = chunk_->add_rows();
    TableConfigToProto(config_, rows_->mutable_spec());
    rows_->set_vshard(vshard);
  }

  v1::InstallSnapshotRequest* const chunk_;
  const TableConfig& config_;
  v1::SnapshotRows* rows_ = nullptr;
};

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
      for (const auto& [id, sum] : sums.Sorted()) {
        a->mutable_keys()->append(reinterpret_cast<const char*>(&id), sizeof(id));
        a->mutable_sums()->append(reinterpret_cast<const char*>(sum->data()),
                                  sum->size() * sizeof(float));
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
  for (const auto& t : tables) {
    // Each group's entries become one SnapshotRows (ids in `keys`, payloads back to back).
    for (const EntryGroup& g : t->data().HeldGroups()) {
      SnapshotRowsSink sink(&chunk, t->config);
      TESSERA_RETURN_IF_ERROR(t->data().TakeGroup(g, cut_gen, /*parent_gen=*/0, sink));
      bytes += sink.bytes();
      if (bytes >= chunk_bytes) TESSERA_RETURN_IF_ERROR(flush());
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
    TableData& data = it->second->data();
    if (rows.keys().size() % sizeof(uint64_t) != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("snapshot rows of table '%s' (vshard %u): %u bytes of ids",
                          ShortName(rows.spec().name()), rows.vshard(), rows.keys().size()));
    }
    std::vector<uint64_t> scratch;
    const absl::Span<const uint64_t> ids = PackedView<uint64_t>(rows.keys(), &scratch);
    // Every entry is checked before any is loaded: a chunk that does not fit changes nothing.
    size_t offset = 0;
    for (uint64_t id : ids) {
      const size_t n = data.EntryBytes(rows.vshard(), id);
      if (n == 0 || n > rows.payload().size() - offset) {
        return absl::InvalidArgumentError(
            absl::StrFormat("snapshot entry %u of table '%s' (vshard %u) does not fit the table",
                            id, ShortName(rows.spec().name()), rows.vshard()));
      }
      offset += n;
    }
    const bool placed = !rows.demoted().empty();
    if (placed && rows.demoted().size() != (ids.size() + 7) / 8) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "snapshot rows of table '%s' (vshard %u): %u bytes of tier bits for %u entries",
          ShortName(rows.spec().name()), rows.vshard(), rows.demoted().size(), ids.size()));
    }
    if (placed && !it->second->config.lifecycle.tier()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("snapshot rows of table '%s' (vshard %u) name a disk tier it lacks",
                          ShortName(rows.spec().name()), rows.vshard()));
    }
    if (offset != rows.payload().size()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "snapshot rows of table '%s' (vshard %u): %u payload bytes left over",
          ShortName(rows.spec().name()), rows.vshard(), rows.payload().size() - offset));
    }
    // (The state is checked as it is loaded: nothing of it changes when it does not fit.)
    TESSERA_RETURN_IF_ERROR(data.LoadState(rows.vshard(), rows.state()));
    offset = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      const size_t n = data.EntryBytes(rows.vshard(), ids[i]);
      const absl::string_view payload(rows.payload().data() + offset, n);
      if (placed) {
        data.LoadPlacedEntry(rows.vshard(), ids[i], payload,
                             (static_cast<unsigned char>(rows.demoted()[i / 8]) >> (i % 8)) & 1);
      } else {
        data.LoadEntry(rows.vshard(), ids[i], payload);
      }
      offset += n;
    }
  }
  ++in.next_seq;
  if (!req.done()) return absl::OkStatus();
  for (auto& [name, t] : in.tables) {
    t->data().FinishLoad();
    (void)ChargeLoadedRows(*t, /*force=*/true);
  }

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
      const size_t len = t.data().SumFloats(id);
      if (len == 0 || offset + len > total) {
        return absl::InvalidArgumentError(
            absl::StrFormat("snapshot step sums of table '%s' do not fit", ShortName(a.table())));
      }
      // (In the part of the executor that applies the entry's vshard, as if accumulated here.)
      std::vector<float>& sum =
          t.sums.parts[executors_->ExecutorOf(t.data().VshardOfEntry(id))][id];
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
