// The transport-free heart of tessera-server: the tables this server holds, request
// validation, and push deduplication. The gRPC layer (grpc_service.h) only adapts to it.
#ifndef TESSERA_SERVER_SERVER_CORE_H_
#define TESSERA_SERVER_SERVER_CORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/shard_map.h"
#include "common/table_config.h"
#include "server/generation.h"
#include "server/memory_budget.h"
#include "server/push_dedup.h"
#include "server/shard_log.h"
#include "server/table_data.h"
#include "server/tier_store.h"

namespace tessera {

struct BulkBuffer;  // common/bulk_codec.h

namespace v1 {
class RequestHeader;
class PushId;
class CreateTableRequest;
class CreateTableResponse;
class DropTableRequest;
class DropTableResponse;
class DescribeTableRequest;
class DescribeTableResponse;
class ListTablesRequest;
class ListTablesResponse;
class TableInfo;
class PullSparseRequest;
class PullSparseResponse;
class PushSparseRequest;
class PullDenseRequest;
class PullDenseResponse;
class PushDenseRequest;
class PushResponse;
class WriteCheckpointRequest;
class WriteCheckpointResponse;
class GetCheckpointStateRequest;
class GetCheckpointStateResponse;
class RestoreCheckpointRequest;
class RestoreCheckpointResponse;
class InstallSnapshotRequest;
class ApplyStepRequest;
class ApplyStepResponse;
class RemoveRowsRequest;
class RemoveRowsResponse;
}  // namespace v1

}  // namespace tessera

namespace google::protobuf::io {
class ZeroCopyInputStream;
}  // namespace google::protobuf::io

namespace tessera {

namespace storage {
class CheckpointStore;
namespace v1 {
class CheckpointManifest;
class TableEntry;
}  // namespace v1
}  // namespace storage

class SparseTable;
class DenseTable;
class ApplyExecutors;

// Per-process options of the server core. Defaults suit a server with a few GB of memory.
struct ServerCoreOptions {
  // This server's shard and the static shard map it belongs to.
  uint32_t shard_index = 0;
  uint32_t num_shards = 1;
  uint32_t num_vshards = kDefaultNumVshards;
  uint64_t shard_map_epoch = 1;
  // The shard map comes from a coordinator (docs/replication.md): the core starts unbound and
  // not serving; shard_index, num_shards and shard_map_epoch above are then ignored.
  bool coordinated = false;

  // Most keys in one sparse request; more is RESOURCE_EXHAUSTED. Default 1 Mi.
  uint64_t max_keys_per_request = uint64_t{1} << 20;
  // Most elements in one dense request; more is RESOURCE_EXHAUSTED. Default 16 Mi (64 MiB).
  uint64_t max_dense_elems_per_request = uint64_t{16} << 20;
  // Most bytes one table may hold on this server (rows or blocks, slots, bookkeeping).
  // Default 16 GiB.
  uint64_t max_table_bytes = uint64_t{16} << 30;
  // Most bytes this server holds for tables, requests and responses (docs/state_machine.md,
  // "Resources"); 0: 80% of the machine's physical memory.
  uint64_t max_memory_bytes = 0;
  // Largest pull response. Default 256 MiB.
  uint64_t max_response_bytes = uint64_t{256} << 20;
  // Push state of a client not heard from for this long is forgotten. Default 1 hour.
  int64_t dedup_client_ttl_s = 3600;

  // Fault injection for tests: when > 0, every N-th push is applied and then answered
  // UNAVAILABLE, as if the response were lost. Never set in production.
  uint32_t testing_fail_push_after_apply_every = 0;
  // Fault injection for tests: each push waits this long before it is applied, so that a test
  // can hold pushes in flight. Never set in production.
  uint32_t testing_push_delay_ms = 0;
  // Tests: runs on a client's push after it was validated, before it is sequenced.
  std::function<void()> testing_before_sequencing;

  // Threads that apply sequenced changes (docs/state_machine.md); 0: one per core, at most 16.
  uint32_t apply_threads = 0;

  // The primary's lifecycle task (docs/embedding_lifecycle.md) runs a round this often while
  // a table has a lifecycle; 0: no task (tests call RunLifecycle).
  uint32_t lifecycle_interval_ms = 100;
  // Tests: the primary's clock in Unix milliseconds (entry times, lifecycle decisions); unset:
  // the system clock.
  std::function<int64_t()> testing_clock_ms;

  // The disk tier (docs/embedding_lifecycle.md): the RocksDB directory for the demoted rows of
  // tables with a tier, opened (and cleared) when the first such table is made; empty: a
  // private directory under $TMPDIR, removed at exit. Its block cache, in bytes.
  std::string tier_dir;
  uint64_t tier_cache_bytes = uint64_t{32} << 20;

  // Checkpoint directory shared by every server and the checkpoint driver
  // (docs/checkpoints.md); empty disables checkpoints.
  std::string checkpoint_dir;
  // Fault injection for tests: SIGKILL this process at a point of the next checkpoint write:
  // 1 right after the cut, 2 after the first table file, 3 after all files, before answering.
  uint32_t testing_crash_in_checkpoint = 0;
  // Threads (and files) per table when writing or restoring a checkpoint; more than the cores
  // helps, since each thread waits for its direct writes. Default 4.
  uint32_t checkpoint_write_threads = 4;
};

// Checkpoint figures for metrics.
struct CheckpointStats {
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  double last_seconds = 0;
  double last_cut_seconds = 0;  // how long the last cut held the update gate
  uint64_t last_bytes = 0;
  uint64_t last_rows = 0;
  double last_success_unix_s = 0;
  uint64_t bytes_total = 0;
  uint64_t restores = 0;
  double last_restore_seconds = 0;
  uint64_t last_restore_bytes = 0;
};

// Per-table figures for metrics and Describe.
struct TableStats {
  std::string name;
  TableKind kind;
  uint64_t rows;   // sparse rows / dense elements held here
  uint64_t bytes;  // memory for weights and slots held here
  // A sparse table's lifecycle (docs/embedding_lifecycle.md), when it has one.
  bool lifecycle = false;
  uint64_t evicted_ttl = 0;
  uint64_t evicted_capacity = 0;
  uint64_t evicted_memory = 0;
  uint64_t would_evict = 0;
  uint64_t kept = 0;          // listed for removal but updated since
  uint64_t admitted = 0;      // rows created at their admission count
  uint64_t not_admitted = 0;  // sightings below it
  uint64_t sketch_bytes = 0;  // the admission sketches held here
  // The disk tier (tables with one).
  bool tier = false;
  uint64_t demoted = 0;
  uint64_t promoted = 0;
  uint64_t disk_rows = 0;
  uint64_t disk_bytes = 0;  // rows on disk x their size (the store's files: TierDiskBytes)
};

// Thread-safe. Every method validates its request completely before touching state: on any
// error the tables are unchanged. Errors: NOT_FOUND (no such table), INVALID_ARGUMENT
// (malformed request), FAILED_PRECONDITION (stale epoch, not owned here, wrong table kind),
// RESOURCE_EXHAUSTED (over a limit), ALREADY_EXISTS (create with a different spec),
// UNAVAILABLE (the same push is being applied concurrently).
//
// Checkpoints (server_checkpoint.cc, docs/checkpoints.md): every change to a table holds the
// update gate shared and stamps what it changes with the current generation; a checkpoint's
// cut holds the gate exclusively just long enough to advance the generation.
class ServerCore {
 public:
  static absl::StatusOr<std::unique_ptr<ServerCore>> Create(const ServerCoreOptions& options);
  ~ServerCore();

  // ---- Changes (docs/state_machine.md) ----
  // Each is validated, then sequenced (LSN, exactly-once, log) under the order lock, then
  // applied by the executors. `done` runs exactly once: inline when the change is refused, is
  // a duplicate or is applied under the lock, else on an executor once applied; `resp` (filled
  // when sequenced) must stay valid until then. `wire` (may be null) travels to the log.
  using Done = std::function<void(absl::Status)>;
  void CreateTable(std::shared_ptr<const v1::CreateTableRequest> req, v1::CreateTableResponse* resp,
                   std::shared_ptr<const WireBytes> wire, Done done);
  void DropTable(std::shared_ptr<const v1::DropTableRequest> req, v1::DropTableResponse* resp,
                 std::shared_ptr<const WireBytes> wire, Done done);
  void PushSparse(std::shared_ptr<const v1::PushSparseRequest> req, v1::PushResponse* resp,
                  std::shared_ptr<const WireBytes> wire, Done done);
  void PushDense(std::shared_ptr<const v1::PushDenseRequest> req, v1::PushResponse* resp,
                 std::shared_ptr<const WireBytes> wire, Done done);
  // BSP steps (docs/worker.md): pushes with accumulate_step add to the step's sums; ApplyStep
  // applies them once. Errors: FAILED_PRECONDITION when another step is pending.
  void ApplyStep(std::shared_ptr<const v1::ApplyStepRequest> req, v1::ApplyStepResponse* resp,
                 std::shared_ptr<const WireBytes> wire, Done done);
  // The same, waiting until done (tests, tools).
  absl::Status CreateTable(const v1::CreateTableRequest& req, v1::CreateTableResponse* resp);
  absl::Status DropTable(const v1::DropTableRequest& req, v1::DropTableResponse* resp);
  absl::Status PushSparse(const v1::PushSparseRequest& req, v1::PushResponse* resp);
  absl::Status PushDense(const v1::PushDenseRequest& req, v1::PushResponse* resp);
  absl::Status ApplyStep(const v1::ApplyStepRequest& req, v1::ApplyStepResponse* resp);

  // Removes sparse rows (docs/embedding_lifecycle.md): a change in the log like a push.
  void RemoveRows(std::shared_ptr<const v1::RemoveRowsRequest> req, v1::RemoveRowsResponse* resp,
                  std::shared_ptr<const WireBytes> wire, Done done);
  absl::Status RemoveRows(const v1::RemoveRowsRequest& req, v1::RemoveRowsResponse* resp);

  // One round of the primary's lifecycle task (docs/embedding_lifecycle.md): for every sparse
  // table with a lifecycle whose TTL scan is due or that is over its capacity, chooses the
  // rows to remove and sequences RemoveRows entries for them (a dry run only counts them).
  // Does nothing unless this server is the serving primary. Returns the rows removed.
  uint64_t RunLifecycle() ABSL_LOCKS_EXCLUDED(order_mu_, tables_mu_);

  absl::Status DescribeTable(const v1::DescribeTableRequest& req, v1::DescribeTableResponse* resp);
  absl::Status ListTables(const v1::ListTablesRequest& req, v1::ListTablesResponse* resp);

  // Pulls. With `values`, the pulled values go there (written in place, never zeroed first)
  // instead of resp->values.
  absl::Status PullSparse(const v1::PullSparseRequest& req, v1::PullSparseResponse* resp,
                          BulkBuffer* values = nullptr);
  absl::Status PullDense(const v1::PullDenseRequest& req, v1::PullDenseResponse* resp,
                         BulkBuffer* values = nullptr);

  // Checkpoints. WriteCheckpoint takes the cut and writes this server's part (seconds for
  // large tables: callers run it off the RPC threads); RestoreCheckpoint replaces every table
  // with a checkpoint's (0: the newest), atomically.
  absl::Status WriteCheckpoint(const v1::WriteCheckpointRequest& req,
                               v1::WriteCheckpointResponse* resp)
      ABSL_LOCKS_EXCLUDED(ckpt_mu_, gate_, tables_mu_);
  absl::Status GetCheckpointState(const v1::GetCheckpointStateRequest& req,
                                  v1::GetCheckpointStateResponse* resp)
      ABSL_LOCKS_EXCLUDED(ckpt_mu_);
  absl::Status RestoreCheckpoint(const v1::RestoreCheckpointRequest& req,
                                 v1::RestoreCheckpointResponse* resp)
      ABSL_LOCKS_EXCLUDED(ckpt_mu_, gate_, tables_mu_);
  CheckpointStats GetCheckpointStats() const ABSL_LOCKS_EXCLUDED(ckpt_mu_);

  std::vector<TableStats> GetTableStats() const ABSL_LOCKS_EXCLUDED(tables_mu_);
  uint64_t shard_map_epoch() const { return epoch_.load(std::memory_order_acquire); }

  // ---- Replication (docs/replication.md) ----

  // Receives every change this server sequences for its clients, in LSN order, while the
  // order is still held. Implementations must be quick and must not call back.
  class UpdateLog {
   public:
    virtual ~UpdateLog() = default;
    virtual void Append(const LogEntry& entry) = 0;
  };
  // Set before serving; null: changes are not logged.
  void SetUpdateLog(UpdateLog* log) { log_ = log; }

  // Coordinated servers start unbound (a spare) and are bound to their shard once, before any
  // table exists; until then, and while not the primary, client requests are refused with
  // FAILED_PRECONDITION and the reroute payload (see IsReroute()).
  absl::Status Bind(uint32_t shard_index, uint32_t num_shards) ABSL_LOCKS_EXCLUDED(gate_);
  bool bound() const { return bound_.load(std::memory_order_acquire); }
  int32_t shard_index() const { return bound() ? static_cast<int32_t>(shard_index_) : -1; }
  // The map epoch this server acts on, whether it serves clients (the primary), the
  // replicator's term (replays checked in another term are refused: docs/replication.md, R4)
  // and whether its shard is being restored (then only the restore is served). Waits for a
  // replay in progress to finish.
  void SetRouting(uint64_t epoch, bool serving, uint64_t term = 0, bool restoring = false)
      ABSL_LOCKS_EXCLUDED(role_mu_);
  // Called (without locks held) when a request shows that a newer map exists.
  void SetNewerMapCallback(std::function<void()> fn) { newer_map_ = std::move(fn); }

  uint64_t lsn() const ABSL_LOCKS_EXCLUDED(order_mu_);
  // A backup replays its primary's entry through the same checks and executors as a client's
  // change, checked in replicator term `term`. An entry at or below lsn() was applied before
  // and is skipped; one above lsn() + 1, a term that is not the current one, or a core that
  // serves clients: FAILED_PRECONDITION (R4). An entry this replica cannot apply exactly as
  // its primary did puts it in the sticky FAILED state (IsReplicaFailed): nothing changes, and
  // every later replay is refused until a snapshot is installed (docs/state_machine.md).
  absl::Status Replay(uint64_t term, LogEntry entry)
      ABSL_LOCKS_EXCLUDED(role_mu_, order_mu_, gate_, tables_mu_);
  // Parses a replicated entry's request (kind: v1::LogEntryKind).
  static absl::StatusOr<LogEntry> DecodeEntry(int kind,
                                              google::protobuf::io::ZeroCopyInputStream* request);
  // Returns once every change sequenced so far is applied.
  void WaitApplied();
  // The replica-failed payload of a refused replay (the gRPC layer's trailing metadata).
  static bool IsReplicaFailed(const absl::Status& status);
  bool failed() const ABSL_LOCKS_EXCLUDED(order_mu_);

  // Catch-up, on the primary: takes a cut (LSN and copy-on-write, as for a checkpoint) and
  // hands `send` the state as of the cut in chunks of about `chunk_bytes`: first the table
  // specs, then rows and blocks, last the exactly-once table and the cut's LSN (done = true).
  // `send` fills epoch, shard, primary, snapshot_id and seq. Returns the cut's LSN.
  absl::StatusOr<uint64_t> ExportSnapshot(
      size_t chunk_bytes, const std::function<absl::Status(v1::InstallSnapshotRequest&)>& send)
      ABSL_LOCKS_EXCLUDED(order_mu_, gate_, tables_mu_, ckpt_mu_);
  // On a backup: builds the state beside the live one, chunk by chunk; the last chunk replaces
  // every table, the exactly-once table and the LSN.
  // The swap is refused (FAILED_PRECONDITION) outside replicator term `term` (R4).
  absl::Status InstallSnapshot(uint64_t term, const v1::InstallSnapshotRequest& req)
      ABSL_LOCKS_EXCLUDED(role_mu_, order_mu_, gate_, tables_mu_, snap_mu_);

  // A stable hash of the replicated state (docs/state_machine.md): LSN, tables and their ids,
  // rows, blocks, slots, BSP sums and the exactly-once table. Replicas that applied the same
  // entries have the same digest. Waits for the executors; blocks changes while it reads.
  uint64_t StateDigest() ABSL_LOCKS_EXCLUDED(order_mu_, gate_, tables_mu_);

  // Routing errors carry this payload; the gRPC layer turns it into trailing metadata.
  static bool IsReroute(const absl::Status& status);
  // A refusal that passes (the lifecycle evicting rows to make room) says when to retry: the
  // gRPC layer and the data plane send it, clients retry by themselves. 0: none.
  static uint32_t RetryAfterMs(const absl::Status& status);
  static absl::Status RetryLater(absl::Status status, uint32_t retry_after_ms);
  uint64_t duplicate_pushes() const { return duplicate_pushes_.load(std::memory_order_relaxed); }
  // What this server holds for tables, requests and responses, against --max_memory_bytes.
  // The disk tier's figures: reads and their latency, the store's bytes (none: null).
  std::shared_ptr<TierStore> tier() const ABSL_LOCKS_EXCLUDED(tier_mu_);
  MemoryBudget& budget() { return budget_; }
  const MemoryBudget& budget() const { return budget_; }
  uint64_t max_response_bytes() const { return options_.max_response_bytes; }

 private:
  // A table's BSP step: gradient sums of the pending step, not applied yet. step and
  // applied_step change under the core's order_mu_ (they are sequencing decisions); the sums
  // are accumulated by the executors like any change: parts[e] holds the entries of the
  // vshards executor e applies, changed only by it, in LSN order per vshard, and read only
  // with the executors drained (ApplyStep, snapshots, the digest).
  struct StepSums {
    uint64_t step = 0;             // pending step; 0: none
    uint64_t applied_step = 0;     // the last step applied
    std::vector<EntrySums> parts;  // by executor (one per executor, from creation on)
    // Every entry id with its sums, in id order (REQUIRES: executors drained).
    std::vector<std::pair<uint64_t, const std::vector<float>*>> Sorted() const;
  };
  struct Table {
    ~Table();                        // gives its memory back to the budget
    TableConfig config;              // resolved
    MemoryBudget* budget = nullptr;  // charged for what the table holds
    std::atomic<uint64_t> charged{0};
    std::unique_ptr<SparseTable> sparse;
    std::unique_ptr<DenseTable> dense;
    uint64_t incarnation = 0;  // distinct for every creation on this server
    uint64_t id = 0;           // the LSN that made it (create, restore, snapshot): replicated
    // The lifecycle task's last TTL scan of the table (the primary's clock; its thread only).
    std::atomic<int64_t> ttl_scan_ms{0};
    std::atomic<int64_t> idle_scan_ms{0};    // likewise, the disk tier's idle scan
    std::atomic<uint64_t> ttl_scan_step{0};  // a TTL in steps: the table's step at the last scan
    // A push to it was refused at the memory limit since the lifecycle task's last round.
    std::atomic<bool> refused_for_memory{false};
    uint64_t created_gen = 0;  // generation at creation; 0 when restored from a checkpoint
    StepSums sums;
    std::atomic<uint64_t> sums_charged{0};  // of `charged`: the BSP sums
    // What the table holds, whatever its kind.
    TableData& data() const;
  };
  // Memory reserved for what a change may create in table `t` (sparse rows, or BSP sums),
  // settled when the change has been applied: what it created (AddCreated units of
  // `unit_bytes`) stays charged to the table, the rest is released.
  class Reservation {
   public:
    Reservation(std::shared_ptr<Table> t, MemoryBudget* budget, uint64_t reserved,
                uint64_t unit_bytes, bool sums)
        : table_(std::move(t)),
          budget_(budget),
          reserved_(reserved),
          unit_bytes_(unit_bytes),
          sums_(sums) {}
    ~Reservation();
    void AddCreated(uint64_t units) { created_.fetch_add(units, std::memory_order_relaxed); }

   private:
    std::shared_ptr<Table> table_;
    MemoryBudget* budget_;
    const uint64_t reserved_;
    const uint64_t unit_bytes_;
    const bool sums_;  // of the table's BSP sums (released by ApplyStep)
    std::atomic<uint64_t> created_{0};
  };
  // Checks that `step` may accumulate in `table` now. REQUIRES: order_mu_.
  static absl::Status CheckAccumulate(const Table& table, uint64_t step);
  // Applies the table's pending step sums, scaled, at the entry's time. REQUIRES: order_mu_,
  // executors drained.
  void ApplyStepSums(Table& table, float scale, int64_t time_ms, uint64_t step,
                     v1::ApplyStepResponse* resp) ABSL_LOCKS_EXCLUDED(gate_);

  explicit ServerCore(const ServerCoreOptions& options);

  // The table named `name`, or NOT_FOUND.
  absl::StatusOr<std::shared_ptr<Table>> LookupTable(const std::string& name) const
      ABSL_LOCKS_EXCLUDED(tables_mu_);
  // Checks the routing (unless header is null), then finds the table: NOT_FOUND when absent,
  // FAILED_PRECONDITION when of another kind.
  absl::StatusOr<std::shared_ptr<Table>> FindTable(const v1::RequestHeader* header,
                                                   const std::string& name, TableKind kind) const
      ABSL_LOCKS_EXCLUDED(tables_mu_);
  void FillInfo(const Table& table, v1::TableInfo* info) const;
  // A new table of this shard; dense blocks get their initial values when `initialize`
  // (otherwise they are loaded by the caller). Its memory is reserved first (`force`: beyond
  // the limits, for what a backup must hold): RESOURCE_EXHAUSTED over a limit or when memory
  // cannot be mapped.
  absl::StatusOr<std::shared_ptr<Table>> NewTable(const TableConfig& config, bool initialize,
                                                  bool force = false);
  // Memory for up to `rows` new rows of sparse table `t`, reserved against the table's and the
  // server's limits (`force`: beyond them); settled by the returned object once the rows that
  // were really created are known.
  // Charges the rows a restore or snapshot loaded into sparse table `t` (before it serves).
  absl::Status ChargeLoadedRows(Table& t, bool force);
  absl::StatusOr<std::unique_ptr<Reservation>> ReserveRows(const std::shared_ptr<Table>& t,
                                                           uint64_t rows, bool force,
                                                           const char* what);
  // A cut (checkpoints, catch-up): advances the generation, starts copy-on-write in every
  // table and captures the exactly-once table. Returns the cut's generation.
  uint64_t BeginCutLocked(std::vector<std::shared_ptr<Table>>* tables,
                          std::vector<PushDeduplicator::ClientSnapshot>* dedup)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(order_mu_, gate_) ABSL_LOCKS_EXCLUDED(tables_mu_);

  // A sparse request's keys, viewed in place and grouped by vshard.
  struct SparseKeys {
    absl::Span<const uint64_t> keys;
    std::vector<uint64_t> scratch;
    VshardGrouping groups;
  };
  // Checks key type, dtype, dim, key count and bytes, and that this shard owns every key.
  absl::Status CheckSparseRequest(const SparseTable& table, const std::string& name, int key_type,
                                  int dtype, uint32_t dim, uint64_t num_keys,
                                  absl::string_view key_bytes, SparseKeys* out) const;
  // RESOURCE_EXHAUSTED when a response of `bytes` would be over --max_response_bytes.
  absl::Status CheckResponseBytes(const std::string& name, uint64_t bytes) const;
  // Checks a dense range against the request limit, the table size and ownership.
  absl::Status CheckDenseRange(const DenseTable& dense, const std::string& name, uint64_t offset,
                               uint64_t count) const;

  // Checkpoint helpers (server_checkpoint.cc).
  absl::Status WriteTableFile(const Table& table, size_t index, uint64_t id, uint64_t cut_gen,
                              uint64_t parent_gen, storage::v1::TableEntry* entry);
  // Loads table `name` from the chain. Every file is first read whole, in large sequential
  // reads, and checked against the manifest's size and CRC32C (which also brings it into the
  // page cache at disk speed); then its entries are read in place, block checksums verified.
  absl::Status LoadTable(const std::vector<storage::v1::CheckpointManifest>& chain,
                         const std::string& name, Table* table, uint64_t* rows, uint64_t* bytes);
  void MaybeCrash(uint32_t point) const;
  // A restore loaded beside the live tables, waiting for its commit.
  struct StagedRestore {
    uint64_t id = 0;
    absl::flat_hash_map<std::string, std::shared_ptr<Table>> tables;
    std::vector<PushDeduplicator::ClientSnapshot> dedup;
    bool same_layout = false;
    uint64_t rows = 0;
    uint64_t bytes = 0;
    double seconds = 0;
  };
  // `lifecycle`: a v1::RestoreLifecycle.
  absl::StatusOr<std::unique_ptr<StagedRestore>> PrepareRestore(uint64_t id, int lifecycle)
      ABSL_LOCKS_EXCLUDED(ckpt_mu_);
  void CommitRestore(std::unique_ptr<StagedRestore> staged)
      ABSL_LOCKS_EXCLUDED(ckpt_mu_, order_mu_, gate_, tables_mu_);
  void RecordCheckpoint(bool ok, double seconds, double cut_seconds, uint64_t bytes, uint64_t rows)
      ABSL_LOCKS_EXCLUDED(ckpt_mu_);

  // Refuses client requests this server must not serve (routing). While the shard is being
  // restored only calls with allow_restoring (the restore's own) pass: UNAVAILABLE otherwise.
  absl::Status CheckRouting(const v1::RequestHeader& header, bool allow_restoring = false) const;

  // ---- Sequencing (server_changes.cc) ----
  // Where a change comes from: a client (replay == null) or the primary's log entry.
  struct Origin {
    const LogEntry* replay = nullptr;
    std::shared_ptr<const WireBytes> wire;
  };
  struct SparsePush;
  struct DensePush;
  // An accumulate push's part on executor e: adds its gradients to the step sums of the
  // vshards e applies (on e's thread, in LSN order per vshard).
  void AccumulateSparse(SparsePush& work, uint32_t e);
  void AccumulateDense(DensePush& work, uint32_t e);
  // Validates (outside the order lock) and sequences a change; returns the refusal, or OK
  // once `done` has been taken over (it then runs exactly once, maybe inline).
  absl::Status SubmitCreate(std::shared_ptr<const v1::CreateTableRequest> req,
                            v1::CreateTableResponse* resp, const Origin& origin, Done& done);
  absl::Status SubmitDrop(std::shared_ptr<const v1::DropTableRequest> req,
                          v1::DropTableResponse* resp, const Origin& origin, Done& done);
  absl::Status SubmitPushSparse(std::shared_ptr<const v1::PushSparseRequest> req,
                                v1::PushResponse* resp, const Origin& origin, Done& done);
  absl::Status SubmitPushDense(std::shared_ptr<const v1::PushDenseRequest> req,
                               v1::PushResponse* resp, const Origin& origin, Done& done);
  absl::Status SubmitApplyStep(std::shared_ptr<const v1::ApplyStepRequest> req,
                               v1::ApplyStepResponse* resp, const Origin& origin, Done& done);
  absl::Status SubmitRemoveRows(std::shared_ptr<const v1::RemoveRowsRequest> req,
                                v1::RemoveRowsResponse* resp, const Origin& origin, Done& done);
  // Under the order lock, the checks every change shares: the replay's place in the order
  // (or nothing, for a client's change) and that `name` still resolves to `table` (by id);
  // the table it resolves to now is returned in *current (null: none).
  absl::Status CheckSequence(const Origin& origin, const std::string& name, uint64_t table_id,
                             std::shared_ptr<Table>* current)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(order_mu_);
  // Takes the next LSN for `entry` (its time too, on the primary) and logs it.
  void Sequence(const Origin& origin, LogEntry* entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(order_mu_);
  // The exactly-once check of a push, under the order lock: true when it is a duplicate (a
  // client's duplicate is answered; a replayed one is a divergence: *refusal is set).
  bool CheckDuplicate(const Origin& origin, const v1::PushId& id, const std::string& table,
                      v1::PushResponse* resp, absl::Status* refusal)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(order_mu_);
  // Under the order lock, what every push shares: the sequence checks, exactly-once, BSP step
  // checks, then (unless a duplicate, answered in resp: false) its LSN, time, log entry and
  // exactly-once record: true. A client's `done` gets the testing fault, if any.
  absl::StatusOr<bool> SequencePush(const Origin& origin, const std::string& name, Table& t,
                                    const v1::PushId& id, uint64_t step, LogEntry::Op op,
                                    v1::PushResponse* resp, Done* done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(order_mu_);
  // A replay that cannot be applied as on the primary: FAILED from now on.
  absl::Status FailReplica(absl::Status why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(order_mu_);
  // Runs `apply` on every executor in `mask` (bit e: executor e); `done` after the last.
  void Dispatch(uint32_t mask, std::function<void(uint32_t executor)> apply, Done done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(order_mu_);
  // The testing fault of options_.testing_fail_push_after_apply_every, applied to `done`.
  Done MaybeDropResponse(const v1::PushId& id, Done done);
  template <typename Req, typename Resp>
  using SubmitFn = absl::Status (ServerCore::*)(std::shared_ptr<const Req>, Resp*, const Origin&,
                                                Done&);
  template <typename Req, typename Resp>
  void SubmitFromClient(SubmitFn<Req, Resp> submit, std::shared_ptr<const Req> req, Resp* resp,
                        std::shared_ptr<const WireBytes> wire, Done done);
  template <typename Req, typename Resp>
  absl::Status SubmitAndWait(SubmitFn<Req, Resp> submit, const Req& req, Resp* resp);

  // Constant after construction.
  const ServerCoreOptions options_;
  // Written once (constructor or Bind) before bound_ is set; constant afterwards.
  uint32_t shard_index_ = 0;
  uint32_t num_shards_ = 1;
  std::vector<bool> owned_;  // by vshard
  std::atomic<bool> bound_{false};
  const bool coordinated_;  // the map comes from a coordinator (SetRouting)

  std::atomic<uint64_t> epoch_;
  std::atomic<bool> serving_;           // primary (always, without a coordinator)
  std::atomic<bool> restoring_{false};  // the primary of a RESTORING shard: restores only
  // Held shared by a replay (Replay, a snapshot's swap) and exclusively by
  // SetRouting, so that a role change and a replay never interleave (R4).
  mutable absl::Mutex role_mu_ ABSL_ACQUIRED_BEFORE(order_mu_) ABSL_ACQUIRED_AFTER(snap_mu_);
  uint64_t term_ ABSL_GUARDED_BY(role_mu_) = 0;
  // Whether a replay checked in `term` may change this core now.
  absl::Status CheckReplayTerm(uint64_t term) const ABSL_SHARED_LOCKS_REQUIRED(role_mu_);
  UpdateLog* log_ = nullptr;
  std::function<void()> newer_map_;

  // The shard's update order: every change takes its LSN under order_mu_. Acquired before
  // gate_.
  mutable absl::Mutex order_mu_ ABSL_ACQUIRED_BEFORE(gate_);
  uint64_t lsn_ ABSL_GUARDED_BY(order_mu_) = 0;
  int64_t time_ms_ ABSL_GUARDED_BY(order_mu_) = 0;  // of the last entry
  absl::Status failed_ ABSL_GUARDED_BY(order_mu_);  // not OK: this replica is FAILED
  // The exactly-once table: replicated state, changed only when an entry is sequenced.
  PushDeduplicator dedup_ ABSL_GUARDED_BY(order_mu_);
  std::unique_ptr<ApplyExecutors> executors_;
  MemoryBudget budget_;
  // The disk tier, opened by the first table that has one (OpenTier).
  mutable absl::Mutex tier_mu_;
  std::shared_ptr<TierStore> tier_ ABSL_GUARDED_BY(tier_mu_);
  absl::StatusOr<std::shared_ptr<TierStore>> OpenTier() ABSL_LOCKS_EXCLUDED(tier_mu_);

  // A snapshot being installed (backup).
  struct IncomingSnapshot {
    uint64_t id = 0;
    uint64_t next_seq = 0;
    absl::flat_hash_map<std::string, std::shared_ptr<Table>> tables;
  };
  absl::Mutex snap_mu_;
  std::unique_ptr<IncomingSnapshot> incoming_ ABSL_GUARDED_BY(snap_mu_);

  mutable absl::Mutex tables_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Table>> tables_ ABSL_GUARDED_BY(tables_mu_);

  std::atomic<uint64_t> duplicate_pushes_{0};

  // The primary's clock (options_.testing_clock_ms or the system's), Unix milliseconds.
  int64_t NowMs() const;
  // The lifecycle task's thread (options_.lifecycle_interval_ms > 0).
  absl::Mutex lifecycle_mu_;
  bool lifecycle_stop_ ABSL_GUARDED_BY(lifecycle_mu_) = false;
  std::thread lifecycle_thread_;
  void LifecycleLoop() ABSL_LOCKS_EXCLUDED(lifecycle_mu_);
  std::atomic<uint64_t> pushes_applied_{0};  // drives testing_fail_push_after_apply_every

  // Shared by every change to the tables (pushes, row-creating pulls, create, drop);
  // exclusive for a checkpoint's cut and a restore's swap. Acquired before tables_mu_.
  mutable absl::Mutex gate_ ABSL_ACQUIRED_BEFORE(tables_mu_);
  // Stamped on every change; read under gate_ (shared), advanced under gate_ (exclusive).
  std::atomic<uint64_t> generation_{kFirstGeneration};
  std::atomic<uint64_t> next_incarnation_{1};

  std::unique_ptr<storage::CheckpointStore> store_;  // null without checkpoint_dir
  mutable absl::Mutex ckpt_mu_;
  uint64_t running_checkpoint_ ABSL_GUARDED_BY(ckpt_mu_) = 0;
  // Checkpoints taken (or restored) in this life with this layout -> their cut generation.
  absl::flat_hash_map<uint64_t, uint64_t> known_cuts_ ABSL_GUARDED_BY(ckpt_mu_);
  CheckpointStats stats_ ABSL_GUARDED_BY(ckpt_mu_);
  std::unique_ptr<StagedRestore> staged_ ABSL_GUARDED_BY(ckpt_mu_);
};

}  // namespace tessera

#endif  // TESSERA_SERVER_SERVER_CORE_H_
