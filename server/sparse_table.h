#ifndef TESSERA_SERVER_SPARSE_TABLE_H_
#define TESSERA_SERVER_SPARSE_TABLE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/shard_map.h"
#include "common/table_config.h"
#include "optimizer/initializer.h"
#include "optimizer/optimizer.h"
#include "server/admission_counter.h"
#include "server/generation.h"
#include "common/key_index.h"
#include "server/row_arena.h"
#include "server/table_data.h"

namespace tessera {

class TierStore;

// The rows of one vshard as of a checkpoint's cut, sorted by key: row i is
// payload[i * row_bytes, (i + 1) * row_bytes).
struct VshardSnapshot {
  std::vector<uint64_t> keys;
  std::string payload;
  // Keys removed after the parent's cut and before this one, absent at the cut, sorted: an
  // increment's tombstones (always empty without a parent).
  std::vector<uint64_t> removed;
  // Replicated state of the vshard beside its rows, as of the cut (the admission sketch);
  // empty without one.
  std::string state;
  // With a disk tier: demoted[i] tells whether keys[i] is on disk (as of the take); else empty.
  std::vector<bool> demoted;
};

// The rows of one sparse table that this server holds: uint64 key -> `dim` weights plus the
// optimizer's slots (and Adam's step counter) in one contiguous row, partitioned by vshard.
// Rows are created on first touch (pull or push) with the table's initializer.
//
// A table with a lifecycle (docs/embedding_lifecycle.md) keeps 8 more bytes per row, part of
// its payload (checkpoints, snapshots, digests): the second of the last push that named it
// (entry time) and a score (LRU: a count of its updates, wrapping; LFU: its count, halved per
// half-life since the previous update, saturating). Its pulls create no rows: a key without
// one reads the initializer's values.
//
// Every row also records the generation of its last change, for checkpoints
// (docs/checkpoints.md): between BeginCut(g) and the vshard's TakeVshard, the first change to
// a row of generation <= g saves its pre-image, so TakeVshard returns the rows exactly as they
// were at the cut while pushes go on.
//
// Thread-safe: each vshard has its own mutex, held only while its rows are read or updated
// (never across I/O), so requests touching different vshards run in parallel.
class SparseTable final : public TableData {
 public:
  // REQUIRES: config came out of ResolveTableConfig with kind kSparse; owned[v] tells whether
  // this server owns vshard v.
  SparseTable(const TableConfig& config, const std::vector<bool>& owned);
  ~SparseTable() override;  // (drops its rows from the disk tier)

  const TableConfig& config() const { return config_; }
  uint32_t dim() const { return config_.dim; }
  uint32_t num_vshards() const { return static_cast<uint32_t>(partitions_.size()); }
  bool Owns(uint32_t vshard) const { return partitions_[vshard] != nullptr; }
  // Bytes of one row in a checkpoint: weights, slots, then the 8-byte step when there is one,
  // then the 8-byte lifecycle metadata when the table has a lifecycle.
  size_t row_bytes() const { return payload_floats_ * sizeof(float); }
  bool has_lifecycle() const { return has_meta_; }

  // Copies the weights of keys[i] to out[i * dim, (i + 1) * dim), creating missing rows (at
  // generation `gen`); returns how many it created in new memory (not in a removed row's, which
  // the budget still charges: what it charges). REQUIRES: `groups` is
  // GroupByVshard(keys); every run's vshard is owned.
  // (With a lifecycle: missing rows are not created; returns 0.)
  uint32_t Pull(absl::Span<const uint64_t> keys, const VshardGrouping& groups, float* out,
                uint64_t gen);

  // Applies the optimizer to each keys[i] with gradient grads[i * dim, (i + 1) * dim) and
  // stamps the rows with `gen`; with `assign` the values replace the weights instead (slots
  // kept). Only the vshards v with v % parts == part (an executor's share, docs/
  // state_machine.md). REQUIRES: as Pull, and the keys are distinct.
  // Returns how many rows it created in new memory (as Pull). `time_ms`: the entry's time, the
  // rows' last update (with a lifecycle).
  // `step`: the push's training step, the rows' last update with a TTL in steps.
  uint32_t Push(absl::Span<const uint64_t> keys, const VshardGrouping& groups, const float* grads,
                uint64_t gen, bool assign = false, uint32_t part = 0, uint32_t parts = 1,
                int64_t time_ms = 0, uint64_t step = 0);

  // Removes the rows of `keys` (all of owned `vshard`; absent ones are skipped) at generation
  // `gen` (docs/embedding_lifecycle.md): their index entries and rows go (a row's memory is
  // reused by the vshard's next new row, so the budget keeps charging it), a row that a
  // checkpoint in progress must still write
  // keeps its pre-image, and the removal is remembered for the next increment's tombstones.
  // A later touch creates the key anew from the initializer. With `stamps` (one per key, else
  // empty) a row whose Stamp() differs from its key's is kept (updated since the remover looked)
  // and counted in *kept. Returns the rows removed.
  // REQUIRES: as a push's: `gen` is the current generation (above every cut begun), and the
  // caller holds the update gate (shared), so that a cut sees the removal wholly or not at all.
  uint32_t Remove(uint32_t vshard, absl::Span<const uint64_t> keys,
                  absl::Span<const uint64_t> stamps, uint64_t gen, uint32_t* kept = nullptr);

  // ---- Lifecycle (docs/embedding_lifecycle.md) ----
  // A row's lifecycle metadata as one number: last update second (high half), score (low).
  struct Victim {
    uint64_t key;
    uint64_t stamp;
  };
  struct EvictionPlan {
    // By owned vshard, in vshard order: rows past the TTL, and rows chosen to bring the table
    // under its capacity.
    std::vector<std::pair<uint32_t, std::vector<Victim>>> ttl, capacity;
  };
  // Chooses the rows the policy removes at `now_ms` (the primary's; a decision, not a change):
  // with `ttl`, every row not updated for ttl_seconds; when the table holds more than
  // `capacity_rows` (0: no capacity), enough of the others to bring it to 95% of it, the least
  // recently (LRU) or least frequently (LFU, decayed to now) updated first, over the whole
  // table: a first scan samples the rows' order (all of them up to 8,192 rows: then the choice
  // is exact), a second takes the rows below the sample's threshold. Reads each vshard under
  // its lock, one at a time. REQUIRES: has_lifecycle().
  void PlanEvictions(int64_t now_ms, bool ttl, uint64_t capacity_rows, EvictionPlan* out) const;
  // Near the memory limit: released rows serve only their own vshard's new rows, so each vshard
  // keeps a reserve of them (a twentieth of its rows, at least `min_reserve`): chooses, in each
  // vshard short of it, its lowest-ordered rows (as PlanEvictions orders them) to make it up.
  void PlanReserve(int64_t now_ms, uint32_t min_reserve, EvictionPlan* out) const;
  // The rows' capacity in rows: capacity_rows and capacity_bytes (by row_charge()) combined;
  // 0 when neither is set.
  uint64_t CapacityRows() const;
  // A vshard's cap under a capacity: its share of 110% of it, plus a few rows. Released rows
  // serve only their own vshard's new rows, so the memory a table holds follows the most rows
  // each vshard held: the cap bounds that by the capacity whatever the spread of new keys.
  uint32_t VshardCap(uint64_t capacity_rows) const;
  static constexpr uint32_t kVshardSlack = 4;
  // Whether the table is over `capacity_rows`, or a vshard over its cap.
  bool NeedsEviction(uint64_t capacity_rows) const;
  // A TTL in steps (lifecycle.ttl_steps): rows keep their last update as a training step, and
  // the table's step is the highest one applied here (restored rows' included); its decisions
  // (the primary's) use it as their "now".
  bool step_clock() const { return step_clock_; }
  uint64_t max_step() const { return max_step_.load(std::memory_order_relaxed); }
  // What the lifecycle removed here (every replica counts the entries it applies) and what a
  // dry run would have removed (the primary counts its decisions).
  struct LifecycleCounters {
    std::atomic<uint64_t> evicted_ttl{0};
    std::atomic<uint64_t> evicted_capacity{0};
    std::atomic<uint64_t> evicted_memory{0};
    std::atomic<uint64_t> would_evict{0};
    std::atomic<uint64_t> kept{0};          // listed for removal, updated since: kept
    std::atomic<uint64_t> admitted{0};      // rows created by reaching the admission count
    std::atomic<uint64_t> not_admitted{0};  // sightings below it (their gradients dropped)
    std::atomic<uint64_t> demoted{0};       // rows moved to the disk tier
    std::atomic<uint64_t> promoted{0};      // rows brought back to RAM by a push
  };
  // Bytes of the admission sketches held here (0 without admission).
  uint64_t sketch_bytes() const { return sketch_bytes_; }
  LifecycleCounters& lifecycle_counters() const { return counters_; }

  // ---- The disk tier (docs/embedding_lifecycle.md, "The disk tier") ----
  // Gives the table a space of the server's tier. REQUIRES: config().lifecycle.tier(); the
  // table holds no row yet.
  void AttachTier(std::shared_ptr<TierStore> tier);
  bool has_tier() const { return tier_ != nullptr; }
  // Moves the rows of `keys` (all of owned `vshard`) to the disk tier, bit-exact (weights,
  // slots, step, metadata, generation); keys without a row in RAM are skipped, and with
  // `stamps` (as Remove) a row updated since is kept (counted in *kept). The row's memory is
  // reused by the vshard's next new row. Returns the rows moved. A push that names a demoted
  // key brings its row back first (promotion); a pull reads it on disk. A tier that fails ends
  // the process (crash-only: a replica takes over). REQUIRES: has_tier(), and as Remove.
  uint32_t Demote(uint32_t vshard, absl::Span<const uint64_t> keys,
                  absl::Span<const uint64_t> stamps, uint32_t* kept = nullptr);
  // Rows on disk (over the owned vshards), and whether `key` has one (tests).
  uint64_t disk_rows() const;
  bool HasDemotedRow(uint64_t key) const;
  // Bytes of one row on disk (the row and its generation).
  size_t stored_bytes() const { return (payload_floats_ + 2) * sizeof(float); }
  // The rows kept in RAM: tier_ram_rows and tier_ram_bytes (by row_charge()) combined; 0:
  // no RAM capacity.
  uint64_t TierRamRows() const;
  // The rows to demote at `now_ms`: with `idle`, every RAM row not updated for
  // tier_idle_seconds (in out->ttl); above TierRamRows(), the lowest-ordered others down to
  // 95% of it (in out->capacity), chosen as PlanEvictions chooses.
  void PlanDemotions(int64_t now_ms, bool idle, EvictionPlan* out) const;
  // The rows on disk past ttl_seconds at `now_ms`, appended to out->ttl (a TTL removes rows
  // from both tiers). Reads each vshard's range under its lock.
  void PlanDiskTtl(int64_t now_ms, EvictionPlan* out) const;

  // Checkpoints. BeginCut starts copy-on-write for a cut at generation cut_gen (REQUIRES: no
  // change runs concurrently: the caller holds its update gate). TakeVshard then returns the
  // vshard's rows as of the cut that changed after parent_gen (0: all rows), and the keys
  // removed since parent_gen, and ends its copy-on-write; EndCut ends it everywhere (after an
  // error).
  // (Rows on disk are taken as they are there: a row demoted after the cut that changed since
  // keeps its pre-image as a removed one does; a promoted one is a RAM row.) Errors: the disk
  // tier's.
  void BeginCut(uint64_t cut_gen) override;
  absl::Status TakeVshard(uint32_t vshard, uint64_t cut_gen, uint64_t parent_gen,
                          VshardSnapshot* out);
  void EndCut() override;
  bool CanIncrement(uint64_t parent_gen) const override {
    return parent_gen >= removal_horizon_.load(std::memory_order_relaxed);
  }
  void ForgetRemovals(uint64_t gen) override;
  // Removal records (16 bytes each) are forgotten when a checkpoint covers them; a table that
  // removes rows faster than checkpoints are taken (or without checkpoints) would keep them
  // without bound. Above `limit` records, and when no checkpoint is being written, forgets
  // them all at `gen` (the current generation): the next checkpoint of this table is then a
  // full one (CanIncrement). Returns whether it forgot. REQUIRES: the update gate (shared:
  // no cut begins meanwhile).
  bool BoundRemovals(uint64_t gen, uint64_t limit);
  uint64_t removal_records() const { return removal_records_.load(std::memory_order_relaxed); }

  // Restore: sets the row of `key` (in owned `vshard`) to `payload` (row_bytes() bytes) at
  // kBaseGeneration, creating it when missing. With a tier, kByCapacity puts a row beyond the
  // vshard's share of the RAM capacity on disk (a restore); kDisk puts it there. REQUIRES: the
  // table is not yet serving; the key is loaded once.
  enum class Placement { kByCapacity, kRam, kDisk };
  void LoadRow(uint32_t vshard, uint64_t key, absl::string_view payload,
               Placement placement = Placement::kByCapacity);
  // TableData's entries are rows; a group is an owned vshard.
  std::vector<EntryGroup> HeldGroups() const override;
  absl::Status TakeGroup(const EntryGroup& group, uint64_t cut_gen, uint64_t parent_gen,
                         EntrySink& sink) override;
  size_t EntryBytes(uint32_t vshard, uint64_t key) const override;
  void LoadEntry(uint32_t vshard, uint64_t key, absl::string_view payload) override {
    LoadRow(vshard, key, payload);
  }
  void LoadPlacedEntry(uint32_t vshard, uint64_t key, absl::string_view payload,
                       bool on_disk) override {
    LoadRow(vshard, key, payload, on_disk ? Placement::kDisk : Placement::kRam);
  }
  absl::Status LoadState(uint32_t vshard, absl::string_view state) override;
  void FinishLoad() override {}
  size_t SumFloats(uint64_t) const override { return config_.dim; }
  uint32_t VshardOfEntry(uint64_t key) const override { return VshardOfKey(key, num_vshards()); }
  uint64_t ApplySums(const EntrySums& sums, float scale, uint64_t gen, int64_t time_ms,
                     uint64_t step) override;

  // A stable hash of the vshard's rows (key, weights, slots, step), in key order; rows still at
  // their initial values count as absent (a pull creates them on one replica only).
  uint64_t Digest(uint32_t vshard) const;
  uint64_t Digest() const override;  // every owned vshard's, in order
  uint64_t Entries() const override { return num_rows(); }
  uint64_t Bytes() const override { return bytes(); }

  uint64_t num_rows() const { return num_rows_.load(std::memory_order_relaxed); }
  // Released rows held for reuse by new rows (their vshard's), over the owned vshards.
  uint64_t FreeRows() const;
  // Whether `key` has a row in RAM here (tests, benchmarks). REQUIRES: its vshard is owned.
  bool HasRow(uint64_t key) const;
  // Seconds since the last update of up to `max_rows` rows (a share of each owned vshard's, in
  // slot order: keys are hashed), at `now_ms`, sorted. REQUIRES: has_lifecycle().
  std::vector<uint32_t> SampleUpdateAges(int64_t now_ms, size_t max_rows) const;
  // How many of the keys of `groups`' runs could at most need new memory: each run's keys less
  // the released rows its vshard holds now (an estimate: concurrent changes may take them).
  uint64_t RowsNeedingMemory(const VshardGrouping& groups) const;
  // The same counting only the keys without a row (a lookup of each, under its vshard's lock):
  // for a push near the memory limit, whose keys are mostly resident.
  uint64_t MissingRowsNeedingMemory(absl::Span<const uint64_t> keys,
                                    const VshardGrouping& groups) const;
  // Memory held for rows (weights, slots, steps) and their index: what is resident.
  uint64_t bytes() const;
  // What the budget charges for one row, an upper bound of its share of bytes(): the row, its
  // generation, its index entry at the lowest load factor and its share of its arena block's
  // page rounding and allocator header page.
  uint64_t row_charge() const {
    return (payload_floats_ + 2) * sizeof(float) + kIndexBytesPerRow + kBlockBytesPerRow;
  }
  // The payload's bytes of lifecycle metadata, when the table has a lifecycle.
  static constexpr size_t kMetaBytes = 8;
  // The table's memory before it holds any row (its partitions).
  static uint64_t FixedBytes(const TableConfig& config, const std::vector<bool>& owned);
  static constexpr uint64_t kIndexBytesPerRow = 43;  // KeyIndex: 16 bytes a slot, > 3/8 full
  // Two pages over a full block of RowArena::kRowsPerBlock rows (measured: a stream of new
  // keys held 139 bytes a row of dim 8 with Adagrad where the row and its index entry took 123).
  static constexpr uint64_t kBlockBytesPerRow = 2 * 4096 / RowArena::kRowsPerBlock;

 private:
  struct Partition {
    Partition(size_t stride, uint64_t seed) : index(seed), rows(stride) {}
    mutable absl::Mutex mu;
    KeyIndex index ABSL_GUARDED_BY(mu);  // key -> row id
    RowArena rows ABSL_GUARDED_BY(mu);
    // Copy-on-write of a checkpoint in progress: when cow_gen != 0, rows of generation
    // <= cow_gen keep their pre-image (payload and generation) in cow before they change.
    uint64_t cow_gen ABSL_GUARDED_BY(mu) = 0;
    absl::flat_hash_map<uint32_t, std::string> cow ABSL_GUARDED_BY(mu);
    // Rows removed during that copy-on-write that existed at its cut: key and pre-image (by
    // key, not row id: the id is reused by the next new row).
    std::vector<std::pair<uint64_t, std::string>> removed_cow ABSL_GUARDED_BY(mu);
    // (key, generation) of each removal not yet covered by a checkpoint: the tombstones.
    std::vector<std::pair<uint64_t, uint64_t>> removals ABSL_GUARDED_BY(mu);
    // rows.free(), readable without the lock (a reservation's estimate).
    std::atomic<uint32_t> free_rows{0};
    std::atomic<uint32_t> live_rows{0};  // rows.live(), likewise
    // Admission (when the table has it): the vshard's sketch, and its state at the cut of a
    // checkpoint or snapshot in progress once it changed after it.
    std::unique_ptr<AdmissionCounter> sketch ABSL_GUARDED_BY(mu);
    std::string sketch_at_cut ABSL_GUARDED_BY(mu);
    bool sketch_saved ABSL_GUARDED_BY(mu) = false;
    // Rows of the vshard on disk (changed under mu; read without it for figures).
    std::atomic<uint32_t> demoted{0};
  };

  // Returns the row id of `key`, creating and initializing the row (at `gen`) when missing;
  // counts creations in new memory in *created.
  uint32_t FindOrCreate(Partition& p, uint64_t key, uint64_t gen, uint32_t* created)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(p.mu);
  // A capacity in rows and one in bytes (by row_charge()) combined (0: none).
  uint64_t RowsWithin(uint64_t rows, uint64_t bytes) const;
  // A per-vshard figure summed over the owned vshards.
  uint64_t SumOverVshards(std::atomic<uint32_t> Partition::*field) const;
  // Brings `key`'s row back from the disk tier into RAM (the row's bytes as they were there):
  // its id, or KeyIndex::kNone when the tier holds none. Counts new memory in *created.
  uint32_t Promote(Partition& p, uint32_t vshard, uint64_t key, uint32_t* created)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(p.mu);
  // The row of `key` on disk into *bytes (stored_bytes()): false when there is none.
  bool ReadDemoted(const Partition& p, uint32_t vshard, uint64_t key, std::string* bytes) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(p.mu);
  // PlanEvictions and PlanDemotions: rows past `ttl_s` (0: none) and above `capacity_rows`.
  void PlanChoices(int64_t now_ms, uint64_t ttl_s, uint64_t capacity_rows, EvictionPlan* out) const;
  // Calls use(partition, i, row id) for each keys[i] of the runs of vshards v with
  // v % parts == part, run by run under the vshard's lock, creating missing rows. `write`:
  // use() changes the whole row and reads side[i * dim, (i + 1) * dim) (else it reads the
  // weights and writes that side range); both are prefetched.
  // With created == null, missing rows are not created: use() gets KeyIndex::kNone.
  // With `admit`, a missing key gets a row only when the admission sketch admits it (else
  // use() gets KeyIndex::kNone).
  template <typename UseRow>
  void ForEachRow(absl::Span<const uint64_t> keys, const VshardGrouping& groups, uint64_t gen,
                  bool write, const float* side, uint32_t part, uint32_t parts, uint32_t* created,
                  bool admit, UseRow&& use);
  // One sighting of `key` (without a row) in p's sketch: whether it reaches the admission count.
  bool Admit(Partition& p, uint64_t key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p.mu);
  uint64_t Gen(const float* row) const;
  void SetGen(float* row, uint64_t gen) const;
  // Lifecycle metadata (REQUIRES: has_meta_).
  uint64_t Stamp(const float* row) const;
  // Calls fn(key, stamp) for each row of `p` (rows: scratch).
  template <typename Fn>
  void ScanStamps(const Partition& p, std::vector<std::pair<uint64_t, uint32_t>>* rows,
                  Fn&& fn) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(p.mu);
  void Touch(float* row, int64_t time_ms, uint64_t step) const;
  // "Now" in the rows' metadata clock: the second of now_ms, or the table's step.
  uint32_t MetaNow(int64_t now_ms) const;
  // The TTL in that clock (ttl_seconds or ttl_steps).
  uint64_t TtlUnits() const;
  void NoteStep(uint64_t step);

  // Constant after construction.
  const TableConfig config_;
  const OptimizerParams params_;
  const Initializer initializer_;
  const size_t payload_floats_;  // weights, slots and the step: what a checkpoint stores
  const size_t step_offset_;     // float offset of the 8-byte step counter in a row
  const bool has_meta_;          // the table has a lifecycle: rows carry its metadata
  const bool step_clock_;        // its TTL counts steps: the metadata's last update is a step
  const size_t meta_offset_;     // float offset of the 8-byte metadata (when has_meta_)
  const size_t gen_offset_;      // float offset of the 8-byte generation in a row
  std::vector<std::unique_ptr<Partition>> partitions_;  // by vshard; null when not owned

  std::atomic<uint64_t> num_rows_{0};
  std::atomic<uint64_t> max_step_{0};  // with step_clock_: the highest step applied here
  // Removals at or below this generation are forgotten (CanIncrement).
  std::atomic<uint64_t> removal_horizon_{0};
  std::atomic<uint64_t> removal_records_{0};  // (key, generation) pairs kept in removals
  uint64_t sketch_bytes_ = 0;                 // constant after construction
  mutable LifecycleCounters counters_;
  std::shared_ptr<TierStore> tier_;  // set before serving (AttachTier); null without a tier
  uint64_t tier_space_ = 0;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_SPARSE_TABLE_H_
