// ServerCore's checkpoints: the cut, writing this server's part, and restoring from a chain.
// Design and invariants: docs/checkpoints.md.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "proto/checkpoint.pb.h"
#include "proto/cluster.pb.h"
#include "proto/tessera.pb.h"
#include "server/apply_executors.h"
#include "server/dense_table.h"
#include "server/request_checks.h"
#include "server/server_core.h"
#include "server/sparse_table.h"
#include "storage/checkpoint_store.h"
#include "storage/file_util.h"
#include "storage/table_file.h"

namespace tessera {
namespace {

absl::Status NoCheckpointDir() {
  return absl::FailedPreconditionError(
      "this server has no checkpoint directory (start it with --checkpoint_dir)");
}

// The contiguous vshard range [first, last] that `shard` of `num_shards` owns.
std::pair<uint32_t, uint32_t> VshardRange(uint32_t shard, uint32_t num_shards,
                                          uint32_t num_vshards) {
  absl::StatusOr<ShardMap> map = ShardMap::Uniform(1, num_shards, num_vshards);
  uint32_t first = num_vshards, last = 0;
  for (uint32_t v = 0; v < num_vshards; ++v) {
    if (map->ShardOf(v) != shard) continue;
    first = std::min(first, v);
    last = std::max(last, v);
  }
  return {first, last};
}

}  // namespace

void ServerCore::MaybeCrash(uint32_t point) const {
  if (options_.testing_crash_in_checkpoint != point) return;
  LogWarning("testing: killing this server at checkpoint crash point %u", point);
  raise(SIGKILL);
}

void ServerCore::RecordCheckpoint(bool ok, double seconds, double cut_seconds, uint64_t bytes,
                                  uint64_t rows) {
  absl::MutexLock lock(&ckpt_mu_);
  if (!ok) {
    ++stats_.failed;
    return;
  }
  ++stats_.succeeded;
  stats_.last_seconds = seconds;
  stats_.last_cut_seconds = cut_seconds;
  stats_.last_bytes = bytes;
  stats_.last_rows = rows;
  stats_.bytes_total += bytes;
  stats_.last_success_unix_s = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
}

CheckpointStats ServerCore::GetCheckpointStats() const {
  absl::MutexLock lock(&ckpt_mu_);
  return stats_;
}

absl::Status ServerCore::GetCheckpointState(const v1::GetCheckpointStateRequest& req,
                                            v1::GetCheckpointStateResponse* resp) {
  TESSERA_RETURN_IF_ERROR(CheckRouting(req.header()));
  std::vector<std::shared_ptr<Table>> tables;
  {
    absl::ReaderMutexLock lock(&tables_mu_);
    for (const auto& [name, table] : tables_) tables.push_back(table);
  }
  absl::MutexLock lock(&ckpt_mu_);
  std::vector<uint64_t> known;
  for (const auto& [id, gen] : known_cuts_) {
    // Known only while every table it held can still write an increment on it (one that
    // forgot removals since cannot: the driver then takes a full checkpoint).
    const uint64_t cut = gen;
    if (std::all_of(tables.begin(), tables.end(), [cut](const auto& t) {
          return t->created_gen > cut || t->data().CanIncrement(cut);
        })) {
      known.push_back(id);
    }
  }
  std::sort(known.begin(), known.end());
  for (uint64_t id : known) resp->add_known_checkpoints(id);
  resp->set_running_checkpoint(running_checkpoint_);
  resp->set_shard_index(shard_index_);
  resp->set_num_shards(num_shards_);
  resp->set_checkpoint_dir_configured(store_ != nullptr);
  return absl::OkStatus();
}

namespace {

// The entries of one table in a range of its groups, written to one file by one thread.
struct FileJob {
  std::vector<EntryGroup> groups;  // in (vshard, id) order
  std::string name;
  absl::Status status;
  storage::FileInfo info;
};

// Adds entries to a table file. A payload the table wrote into Buffer() goes to RocksDB as it
// is, behind the entry type byte reserved in front of it (a dense block is not copied again).
class FileSink final : public EntrySink {
 public:
  explicit FileSink(storage::TableFileWriter* writer) : writer_(writer) {}

  char* Buffer(size_t bytes) override {
    if (bytes + 1 > capacity_) {
      value_ = std::make_unique_for_overwrite<char[]>(bytes + 1);
      value_[0] = static_cast<char>(storage::EntryType::kRow);
      capacity_ = bytes + 1;
    }
    return value_.get() + 1;
  }
  absl::Status Add(uint32_t vshard, uint64_t id, absl::string_view payload) override {
    if (value_ != nullptr && payload.data() == value_.get() + 1) {
      return writer_->AddEncodedRow(vshard, id,
                                    absl::string_view(value_.get(), payload.size() + 1));
    }
    return writer_->AddRow(vshard, id, payload);
  }
  absl::Status Remove(uint32_t vshard, uint64_t id) override {
    return writer_->AddTombstone(vshard, id);
  }

 private:
  storage::TableFileWriter* const writer_;
  std::unique_ptr<char[]> value_;
  size_t capacity_ = 0;
};

// Takes entries and drops them: a group is taken even after a write failed, which ends its
// copy-on-write.
class DiscardSink final : public EntrySink {
 public:
  absl::Status Add(uint32_t, uint64_t, absl::string_view) override { return absl::OkStatus(); }
  absl::Status Remove(uint32_t, uint64_t) override { return absl::OkStatus(); }
};

void WriteFile(TableData& data, uint64_t cut_gen, uint64_t parent_gen, const std::string& path,
               FileJob& job) {
  absl::StatusOr<std::unique_ptr<storage::TableFileWriter>> writer =
      storage::TableFileWriter::Create(path);
  job.status = writer.status();
  std::unique_ptr<FileSink> file;
  if (writer.ok()) file = std::make_unique<FileSink>(writer->get());
  DiscardSink discard;
  for (const EntryGroup& g : job.groups) {
    EntrySink& sink = job.status.ok() ? static_cast<EntrySink&>(*file) : discard;
    absl::Status s = data.TakeGroup(g, cut_gen, parent_gen, sink);
    if (job.status.ok()) job.status = s;
  }
  if (!job.status.ok()) return;
  absl::StatusOr<storage::FileInfo> info = (*writer)->Finish();
  job.status = info.status();
  if (info.ok()) job.info = *info;
}

// Splits `items` into at most n contiguous, nearly equal, non-empty pieces.
template <typename T>
std::vector<std::vector<T>> Split(const std::vector<T>& items, size_t n) {
  std::vector<std::vector<T>> pieces;
  n = std::max<size_t>(1, std::min(n, items.size()));
  for (size_t i = 0; i < n; ++i) {
    pieces.emplace_back(items.begin() + items.size() * i / n,
                        items.begin() + items.size() * (i + 1) / n);
  }
  return pieces;
}

}  // namespace

absl::Status ServerCore::WriteTableFile(const Table& table, size_t index, uint64_t id,
                                        uint64_t cut_gen, uint64_t parent_gen,
                                        storage::v1::TableEntry* entry) {
  // The table's vshards split into ranges, one file and one thread each: copying rows out and
  // writing them then overlap on every core, and the disk sees several writes at once. An
  // increment is usually small: one file, so that it does not pay for several fsyncs.
  const size_t threads =
      parent_gen != 0 ? 1 : std::max<uint32_t>(1, options_.checkpoint_write_threads);
  std::vector<FileJob> jobs;
  for (auto& piece : Split(table.data().HeldGroups(), threads)) {
    jobs.push_back({.groups = std::move(piece)});
  }
  if (jobs.empty()) jobs.emplace_back();  // a table with nothing here still gets a file
  const std::string dir = store_->PartDir(id, shard_index_);
  std::vector<std::thread> workers;
  for (size_t j = 0; j < jobs.size(); ++j) {
    jobs[j].name = absl::StrCat("table-", index, "-", j, ".sst");
    workers.emplace_back([&, j] {
      FileJob& job = jobs[j];
      const std::string path = absl::StrCat(dir, "/", job.name);
      WriteFile(table.data(), cut_gen, parent_gen, path, job);
    });
  }
  for (auto& w : workers) w.join();
  TableConfigToProto(table.config, entry->mutable_spec());
  entry->set_full(parent_gen == 0);
  entry->set_incarnation(table.incarnation);
  for (const FileJob& job : jobs) {
    if (!job.status.ok()) return job.status;
    storage::v1::FileEntry* f = entry->add_files();
    f->set_name(job.name);
    f->set_size_bytes(job.info.size_bytes);
    f->set_crc32c(job.info.crc32c);
    f->set_rows(job.info.rows);
    f->set_tombstones(job.info.tombstones);
    f->set_first_vshard(job.groups.empty() ? 0 : job.groups.front().vshard);
    f->set_last_vshard(job.groups.empty() ? 0 : job.groups.back().vshard);
    entry->set_rows(entry->rows() + job.info.rows);
    entry->set_bytes(entry->bytes() + job.info.size_bytes);
  }
  return absl::OkStatus();
}

absl::Status ServerCore::WriteCheckpoint(const v1::WriteCheckpointRequest& req,
                                         v1::WriteCheckpointResponse* resp) {
  TESSERA_RETURN_IF_ERROR(CheckRouting(req.header()));
  if (store_ == nullptr) return NoCheckpointDir();
  const uint64_t id = req.checkpoint_id();
  const uint64_t parent = req.parent_id();
  if (id == 0 || parent >= id) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "checkpoint id must be > 0 and above its parent (got id %u, parent %u)", id, parent));
  }
  uint64_t parent_gen = 0;
  {
    absl::MutexLock lock(&ckpt_mu_);
    if (running_checkpoint_ != 0) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "checkpoint %u is being written on shard %u", running_checkpoint_, shard_index_));
    }
    if (parent != 0) {
      auto it = known_cuts_.find(parent);
      if (it == known_cuts_.end()) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "shard %u did not take checkpoint %u in its current life: it cannot tell what "
            "changed since; take a full checkpoint",
            shard_index_, parent));
      }
      parent_gen = it->second;
    }
    running_checkpoint_ = id;
  }
  absl::Cleanup not_running = [this] {
    absl::MutexLock lock(&ckpt_mu_);
    running_checkpoint_ = 0;
  };
  const absl::Time start = absl::Now();
  absl::Status status = store_->CreatePartDir(id, shard_index_);
  if (!status.ok()) {
    RecordCheckpoint(false, 0, 0, 0, 0);
    return status;
  }

  // The cut: one point in this server's update order.
  std::vector<std::shared_ptr<Table>> tables;
  std::vector<PushDeduplicator::ClientSnapshot> dedup;
  uint64_t cut_gen;
  {
    absl::MutexLock order(&order_mu_);
    executors_->Drain();  // the cut is an LSN fence: everything sequenced is applied
    absl::WriterMutexLock gate(&gate_);
    cut_gen = BeginCutLocked(&tables, &dedup);
  }
  const double cut_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  MaybeCrash(1);

  std::sort(tables.begin(), tables.end(),
            [](const auto& a, const auto& b) { return a->config.name < b->config.name; });
  storage::v1::PartManifest part;
  part.set_shard_index(shard_index_);
  part.set_num_shards(num_shards_);
  part.set_num_vshards(options_.num_vshards);
  part.set_cut_generation(cut_gen);
  for (const auto& t : tables) {
    // (A table that forgot removals after the parent's cut cannot write its tombstones.)
    if (parent_gen != 0 && t->created_gen <= parent_gen && !t->data().CanIncrement(parent_gen)) {
      status = absl::FailedPreconditionError(absl::StrFormat(
          "table '%s' on shard %u no longer knows what was removed since checkpoint %u; take a "
          "full checkpoint",
          t->config.name, shard_index_, parent));
    }
  }
  for (size_t i = 0; i < tables.size(); ++i) {
    const Table& t = *tables[i];
    if (!status.ok()) {  // end the copy-on-write of the tables not written
      t.data().EndCut();
      continue;
    }
    // A table created after the parent's cut is written in full.
    const uint64_t table_parent_gen = t.created_gen <= parent_gen ? parent_gen : 0;
    storage::v1::TableEntry* entry = part.add_tables();
    status = WriteTableFile(t, i, id, cut_gen, table_parent_gen, entry);
    if (status.ok()) {
      part.set_rows(part.rows() + entry->rows());
      part.set_bytes(part.bytes() + entry->bytes());
    }
    if (i == 0) MaybeCrash(2);
  }
  if (status.ok()) status = storage::SyncDir(store_->PartDir(id, shard_index_));
  if (!status.ok()) {
    RecordCheckpoint(false, 0, 0, 0, 0);
    LogError("checkpoint %u failed on shard %u: %s", id, shard_index_, status.ToString());
    return status;
  }
  for (const PushDeduplicator::ClientSnapshot& c : dedup) {
    storage::v1::DedupClient* d = part.add_dedup();
    d->set_client_id(c.client_id);
    d->set_floor(c.floor);
    for (uint64_t seq : c.applied) d->add_applied(seq);
    d->set_last_seen_ms(c.last_seen_ms);
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  part.set_cut_seconds(cut_seconds);
  part.set_write_seconds(seconds);
  MaybeCrash(3);
  {
    absl::MutexLock lock(&ckpt_mu_);
    known_cuts_[id] = cut_gen;
  }
  // Removals this file covers need no tombstone again: the next increment's parent is this
  // checkpoint or (this round failing elsewhere) the same parent as this one's.
  for (const auto& t : tables) {
    t->data().ForgetRemovals(parent_gen != 0 && t->created_gen <= parent_gen ? parent_gen
                                                                             : cut_gen);
  }
  RecordCheckpoint(true, seconds, cut_seconds, part.bytes(), part.rows());
  LogInfo(
      "checkpoint %u (%s) written on shard %u: %u tables, %u rows, %.1f MB in %.2f s "
      "(%.0f MB/s), cut held the update gate %.3f ms",
      id, parent == 0 ? "full" : absl::StrCat("incremental on ", parent), shard_index_,
      part.tables_size(), part.rows(), part.bytes() / 1e6, seconds,
      part.bytes() / 1e6 / std::max(seconds, 1e-9), cut_seconds * 1e3);
  part.SerializeToString(resp->mutable_part());
  return absl::OkStatus();
}

absl::Status ServerCore::LoadTable(const std::vector<storage::v1::CheckpointManifest>& chain,
                                   const std::string& name, Table* table, uint64_t* rows,
                                   uint64_t* bytes) {
  const storage::v1::CheckpointManifest& last = chain.back();
  // Dense blocks are allocated without initial values; any the checkpoint does not hold get
  // them at the end (FinishLoad).
  TableData& data = table->data();
  std::atomic<uint64_t> loaded_rows{0};
  const auto [mine_first, mine_last] = VshardRange(shard_index_, num_shards_, options_.num_vshards);
  const uint32_t threads = std::max<uint32_t>(1, options_.checkpoint_write_threads);
  for (const storage::v1::PartManifest& last_part : last.parts()) {
    const uint32_t j = last_part.shard_index();
    auto [first, last_v] = VshardRange(j, last.num_shards(), last.num_vshards());
    first = std::max(first, mine_first);
    last_v = std::min(last_v, mine_last);
    if (first > last_v) continue;  // no vshard of old shard j is ours
    absl::StatusOr<std::vector<std::unique_ptr<storage::TableFileReader>>> readers =
        store_->OpenTableFiles(chain, j, name, /*verify_crc=*/true, threads);
    if (!readers.ok()) return readers.status();
    std::vector<storage::TableFileReader*> oldest_first;
    for (auto& r : *readers) {
      oldest_first.push_back(r.get());
      *bytes += std::filesystem::file_size(r->path());
    }
    const std::string& file = oldest_first.back()->path();
    auto load = [&](const storage::Entry& e) -> absl::Status {
      if (e.bytes.empty() || data.EntryBytes(e.vshard, e.key) != e.bytes.size()) {
        return absl::DataLossError(absl::StrFormat(
            "checkpoint file %s: %s %u of table '%s' (vshard %u, %u bytes) does not fit the table",
            file, table->config.kind == TableKind::kSparse ? "row" : "block", e.key,
            ShortName(name), e.vshard, e.bytes.size()));
      }
      data.LoadEntry(e.vshard, e.key, e.bytes);
      loaded_rows.fetch_add(1, std::memory_order_relaxed);
      return absl::OkStatus();
    };
    // Disjoint vshard sub-ranges merged by threads of their own: copying and page faults run
    // on every core.
    const uint32_t n = std::min(threads, last_v - first + 1);
    std::vector<absl::Status> statuses(n);
    std::vector<std::thread> workers;
    for (uint32_t k = 0; k < n; ++k) {
      const uint32_t lo = first + static_cast<uint32_t>(uint64_t{last_v - first + 1} * k / n);
      const uint32_t hi =
          first + static_cast<uint32_t>(uint64_t{last_v - first + 1} * (k + 1) / n) - 1;
      workers.emplace_back(
          [&, k, lo, hi] { statuses[k] = storage::MergeChain(oldest_first, lo, hi, load); });
    }
    for (auto& w : workers) w.join();
    for (const absl::Status& st : statuses) TESSERA_RETURN_IF_ERROR(st);
  }
  data.FinishLoad();
  *rows += loaded_rows.load();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServerCore::StagedRestore>> ServerCore::PrepareRestore(
    uint64_t id, int lifecycle) {
  if (id == 0) {
    id = store_->NewestOrZero();
    if (id == 0) {
      return absl::NotFoundError(
          absl::StrCat("no complete checkpoint in ", store_->dir(), " to restore"));
    }
  }
  {
    absl::MutexLock lock(&ckpt_mu_);
    if (running_checkpoint_ != 0) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "checkpoint %u is being written or restored; try later", running_checkpoint_));
    }
    running_checkpoint_ = id;
  }
  absl::Cleanup not_running = [this] {
    absl::MutexLock lock(&ckpt_mu_);
    running_checkpoint_ = 0;
  };
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<storage::v1::CheckpointManifest>> chain = store_->ReadChain(id);
  if (!chain.ok()) return chain.status();
  const storage::v1::CheckpointManifest& last = chain->back();
  if (last.num_vshards() != options_.num_vshards) {
    return absl::FailedPreconditionError(
        absl::StrFormat("checkpoint %u has %u vshards, this cluster %u", id, last.num_vshards(),
                        options_.num_vshards));
  }
  std::vector<std::string> ids;
  for (const auto& m : *chain) ids.push_back(absl::StrCat(m.id()));
  LogInfo("restoring checkpoint %u (chain %s) taken with %u shards into shard %u of %u", id,
          absl::StrJoin(ids, " <- "), last.num_shards(), shard_index_, num_shards_);

  // Every table of the last checkpoint, built beside the live ones.
  auto staged = std::make_unique<StagedRestore>();
  staged->id = id;
  std::vector<TableConfig> specs;
  for (const auto& part : last.parts()) {
    for (const auto& entry : part.tables()) {
      absl::StatusOr<TableConfig> config = TableConfigFromProto(entry.spec());
      if (!config.ok()) return config.status();
      absl::StatusOr<TableConfig> resolved = ResolveTableConfig(*config);
      if (!resolved.ok()) return resolved.status();
      if (std::none_of(specs.begin(), specs.end(),
                       [&](const TableConfig& c) { return c.name == resolved->name; })) {
        specs.push_back(*resolved);
      }
    }
  }
  // A live table whose lifecycle differs from the checkpoint's: never silently
  // (docs/embedding_lifecycle.md).
  for (TableConfig& config : specs) {
    std::shared_ptr<Table> live;
    {
      absl::ReaderMutexLock lock(&tables_mu_);
      auto it = tables_.find(config.name);
      if (it != tables_.end()) live = it->second;
    }
    if (live == nullptr || live->config.lifecycle == config.lifecycle) continue;
    const std::string both = absl::StrFormat(
        "table '%s': the checkpoint's lifecycle is %s, the live table's %s", ShortName(config.name),
        DescribeLifecycle(config.lifecycle), DescribeLifecycle(live->config.lifecycle));
    if (lifecycle == v1::RESTORE_LIFECYCLE_CHECKPOINT) continue;
    if (lifecycle != v1::RESTORE_LIFECYCLE_LIVE) {
      return absl::FailedPreconditionError(
          absl::StrCat(both,
                       "; restore with --lifecycle=checkpoint to take the checkpoint's, or "
                       "--lifecycle=live to keep the live one's"));
    }
    if (live->config.lifecycle.enabled() != config.lifecycle.enabled()) {
      return absl::FailedPreconditionError(
          absl::StrCat(both,
                       "; the rows of a table with a lifecycle carry 8 more bytes than without: "
                       "--lifecycle=live keeps a policy only between tables that both have one (or "
                       "both none)"));
    }
    LogInfo("%s: keeping the live one's (--lifecycle=live)", both);
    config.lifecycle = live->config.lifecycle;
  }
  for (const TableConfig& config : specs) {
    const absl::Time t0 = absl::Now();
    absl::StatusOr<std::shared_ptr<Table>> made = NewTable(config, /*initialize=*/false);
    if (!made.ok()) return made.status();
    std::shared_ptr<Table> table = *std::move(made);
    uint64_t rows = 0, bytes = 0;
    TESSERA_RETURN_IF_ERROR(LoadTable(*chain, config.name, table.get(), &rows, &bytes));
    TESSERA_RETURN_IF_ERROR(ChargeLoadedRows(*table, /*force=*/false));
    const double s = absl::ToDoubleSeconds(absl::Now() - t0);
    LogInfo("  loaded table '%s': %u rows/blocks from %.1f MB of files in %.2f s (%.0f MB/s)",
            config.name, rows, bytes / 1e6, s, bytes / 1e6 / std::max(s, 1e-9));
    staged->rows += rows;
    staged->bytes += bytes;
    staged->tables.emplace(config.name, std::move(table));
  }
  staged->same_layout = last.num_shards() == num_shards_;
  if (staged->same_layout) {
    for (const auto& part : last.parts()) {
      if (part.shard_index() != shard_index_) continue;
      for (const auto& c : part.dedup()) {
        staged->dedup.push_back(
            {c.client_id(), c.floor(), {c.applied().begin(), c.applied().end()}, c.last_seen_ms()});
      }
    }
  }
  staged->seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return staged;
}

void ServerCore::CommitRestore(std::unique_ptr<StagedRestore> staged) {
  const size_t num_tables = staged->tables.size();
  absl::flat_hash_map<std::string, std::shared_ptr<Table>> old;  // freed outside the locks
  {
    absl::MutexLock order(&order_mu_);
    executors_->Drain();  // a barrier: changes to the old tables finish first
    LogEntry entry;
    entry.op = RestoreOp{};
    for (const auto& c : staged->dedup) time_ms_ = std::max(time_ms_, c.last_seen_ms);
    {
      absl::WriterMutexLock gate(&gate_);
      absl::MutexLock lock(&tables_mu_);
      for (auto& [name, t] : staged->tables) t->id = lsn_ + 1;  // made by the restore's entry
      old.swap(tables_);
      tables_ = std::move(staged->tables);
      dedup_.Restore(staged->dedup);  // (changes from now on carry generations > kBaseGeneration)
    }
    // One change in the update order: backups take a snapshot of the restored state.
    Sequence(Origin{}, &entry);
  }
  {
    absl::MutexLock lock(&ckpt_mu_);
    known_cuts_.clear();
    if (staged->same_layout) known_cuts_[staged->id] = kBaseGeneration;
    ++stats_.restores;
    stats_.last_restore_seconds = staged->seconds;
    stats_.last_restore_bytes = staged->bytes;
  }
  LogInfo(
      "restored checkpoint %u: %u tables, %u rows/blocks, %.1f MB loaded in %.2f s (%.0f MB/s)%s",
      staged->id, num_tables, staged->rows, staged->bytes / 1e6, staged->seconds,
      staged->bytes / 1e6 / std::max(staged->seconds, 1e-9),
      staged->same_layout ? "" : "; shard layout changed: exactly-once state not restored");
}

absl::Status ServerCore::RestoreCheckpoint(const v1::RestoreCheckpointRequest& req,
                                           v1::RestoreCheckpointResponse* resp) {
  TESSERA_RETURN_IF_ERROR(CheckRouting(req.header(), /*allow_restoring=*/true));
  if (store_ == nullptr) return NoCheckpointDir();
  std::unique_ptr<StagedRestore> staged;
  switch (req.phase()) {
    case v1::RESTORE_PHASE_PREPARE:
    case v1::RESTORE_PHASE_PREPARE_AND_COMMIT: {
      absl::StatusOr<std::unique_ptr<StagedRestore>> prepared =
          PrepareRestore(req.checkpoint_id(), req.lifecycle());
      if (!prepared.ok()) return prepared.status();
      staged = std::move(*prepared);
      break;
    }
    case v1::RESTORE_PHASE_COMMIT:
    case v1::RESTORE_PHASE_ABORT: {
      absl::MutexLock lock(&ckpt_mu_);
      if (staged_ == nullptr || (req.checkpoint_id() != 0 && staged_->id != req.checkpoint_id())) {
        return absl::FailedPreconditionError(
            absl::StrFormat("no restore of checkpoint %u is prepared on shard %u",
                            req.checkpoint_id(), shard_index_));
      }
      staged = std::move(staged_);
      break;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("unknown restore phase %d", static_cast<int>(req.phase())));
  }
  resp->set_checkpoint_id(staged->id);
  resp->set_tables(staged->tables.size());
  resp->set_rows(staged->rows);
  resp->set_bytes(staged->bytes);
  resp->set_seconds(staged->seconds);
  if (req.phase() == v1::RESTORE_PHASE_PREPARE) {
    absl::MutexLock lock(&ckpt_mu_);
    staged_ = std::move(staged);  // replaces an older prepared restore, if any
  } else if (req.phase() == v1::RESTORE_PHASE_ABORT) {
    LogInfo("restore of checkpoint %u aborted", staged->id);
  } else {
    CommitRestore(std::move(staged));
  }
  resp->set_lsn(lsn());
  return absl::OkStatus();
}

}  // namespace tessera
