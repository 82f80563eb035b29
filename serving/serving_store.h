// A serving replica's tables at versions (docs/online_serving.md, "Applying a version"): two
// full copies of the tables (a double buffer). A version is applied to the copy no lookup
// reads, the copies are swapped by one atomic store, and once the last lookup of the old copy
// has left, the same changes are applied to it: a version costs its changed rows twice, never
// a copy of the tables. Each version's change record (the changed rows before and after) is
// kept for the last K versions: lookups at those versions, rollback (the records undone) and
// relaying (the records as deltas). No protobuf here: the service and the sources translate.
#ifndef TESSERA_SERVING_SERVING_STORE_H_
#define TESSERA_SERVING_SERVING_STORE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/table_config.h"
#include "optimizer/initializer.h"

namespace tessera::serving {

// One vshard's changes in a version. Sparse: keys and their rows' weights; dense: block indexes
// and each block's weights (block_elems floats, the last block zero-padded).
struct VshardDelta {
  uint32_t vshard = 0;
  std::vector<uint64_t> keys;
  std::vector<float> weights;  // keys.size() x RowWidth(config)
  std::vector<uint64_t> tombstones;
};

struct TableDelta {
  TableConfig config;                // resolved
  bool full = false;                 // the table's every row (vshards not listed: empty)
  std::vector<VshardDelta> vshards;  // ascending vshard, each at most once
};

struct TableDigest {
  std::string name;
  uint64_t digest = 0;
  uint64_t rows = 0;
  bool operator==(const TableDigest&) const = default;
};

// A version as it travels: from a checkpoint, or a stream. Every table of the version is
// listed (a table held and not listed is dropped).
struct VersionDelta {
  uint64_t version = 0;
  uint64_t parent = 0;  // 0: every table full
  int64_t created_unix_ms = 0;
  uint32_t num_vshards = 0;
  std::vector<TableDelta> tables;
  std::vector<TableDigest> digests;  // after the version, ascending name (relays send them)
  size_t Bytes() const;
};

// Floats per row: a sparse table's dim, a dense table's block.
uint32_t RowWidth(const TableConfig& config);

// The digest of one row: order-free sums of these make a table's digest.
uint64_t RowDigest(uint64_t key, const float* weights, uint32_t width);

struct LookupResult {
  uint64_t version = 0;
  uint32_t dim = 0;
};

struct ServedTable {
  TableConfig config;
  uint64_t rows = 0;
  uint64_t digest = 0;
};

struct StoreStatus {
  uint64_t version = 0;         // served
  uint64_t newest_version = 0;  // newest applied or, while pinned, received
  std::vector<uint64_t> kept_versions;
  bool pinned = false;
  int64_t created_unix_ms = 0;      // of the served version
  std::vector<ServedTable> tables;  // at the served version, ascending name
};

// The newest version's tables: what a source reads the next version against.
struct HeldTables {
  uint64_t version = 0;
  uint32_t num_vshards = 0;
  absl::flat_hash_map<std::string, TableConfig> tables;
};

struct StoreOptions {
  size_t keep_versions = 3;       // change records kept: lookups at a version, rollback, relays
  uint64_t max_memory_bytes = 0;  // both copies and the records; 0: no limit
  // A lookup whose answer would be larger is refused before anything is allocated.
  uint64_t max_response_bytes = uint64_t{64} << 20;
};

// Thread-safe. Lookups never wait for an apply; an apply waits for the lookups of the copy it
// is about to change (each a few microseconds to milliseconds).
class ServingStore {
 public:
  explicit ServingStore(StoreOptions options);
  ~ServingStore();

  // Applies `delta` on the newest version: its parent must be that version (or 0: full, then
  // compared with the held tables so that only what differs is recorded). `expected`, when not
  // empty, is the digests the version must have (a relay's VersionEnd): a difference refuses
  // it (DATA_LOSS). Refused before anything changes: a gap, a malformed delta, a version over
  // max_memory_bytes (RESOURCE_EXHAUSTED). While pinned, versions are queued and applied by
  // Resume.
  absl::Status Apply(VersionDelta delta, const std::vector<TableDigest>& expected = {});

  // Rows of `keys` of sparse table `table` into values[keys.size() x dim]; found bit i set for
  // keys with a row. version 0: the served one; another kept version is read through the
  // change records.
  absl::StatusOr<LookupResult> Lookup(const std::string& table, const uint64_t* keys, size_t n,
                                      uint64_t version, std::string* values,
                                      std::string* found) const;
  absl::StatusOr<LookupResult> LookupDense(const std::string& table, uint64_t version,
                                           std::string* values) const;

  // Serves kept `version` (its records undone or redone on both copies) and queues new
  // versions until Resume.
  absl::Status Rollback(uint64_t version);
  // Applies what was queued (up to a version refused) and serves the newest version again;
  // returns it.
  absl::StatusOr<uint64_t> Resume();

  // For relays: the deltas from `from` (exclusive) to the newest recorded version when every
  // one is kept; else empty with *full set to the served tables as one full version (null when
  // there is nothing newer than `from` to send).
  std::vector<std::shared_ptr<const VersionDelta>> DeltasAfter(
      uint64_t from, std::shared_ptr<const VersionDelta>* full) const;
  // The newest version recorded: what relays can send (versions queued while pinned are not).
  uint64_t RecordedVersion() const;
  // Waits until a version newer than `version` is recorded or `timeout` passes.
  void WaitNewer(uint64_t version, absl::Duration timeout) const;

  StoreStatus Status() const;
  // Recomputes every table's digest and rows from its rows, in both copies, and compares them
  // with those kept and the copies with each other: INTERNAL naming the table on a difference.
  absl::Status Verify() const;
  HeldTables Held() const;
  uint64_t newest_version() const;
  bool pinned() const;
  int64_t bytes() const;
  uint64_t max_memory_bytes() const { return options_.max_memory_bytes; }
  uint64_t applied_total() const { return applied_total_.load(std::memory_order_relaxed); }
  uint64_t refused_total() const { return refused_total_.load(std::memory_order_relaxed); }

  struct State;
  struct Record;

 private:
  // The served copy, counted as read until Release.
  State* Acquire() const;
  struct ReadGuard {
    explicit ReadGuard(const ServingStore* s) : store(s), state(s->Acquire()) {}
    ~ReadGuard() { store->Release(state); }
    ReadGuard(const ReadGuard&) = delete;
    ReadGuard& operator=(const ReadGuard&) = delete;
    const ServingStore* store;
    State* state;
  };
  int64_t BytesLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t RecordedVersionLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Release(State* s) const;
  absl::Status ApplyLocked(VersionDelta delta, const std::vector<TableDigest>& expected)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(apply_mu_);
  // Applies `records` (forward or undone) to the back copy, swaps, waits, then the other copy.
  void Switch(const std::vector<std::shared_ptr<const Record>>& records, bool undo)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(apply_mu_);

  StoreOptions options_;
  std::atomic<uint64_t> applied_total_{0};
  std::atomic<uint64_t> refused_total_{0};
  std::unique_ptr<State> states_[2];
  std::atomic<State*> served_;
  mutable absl::Mutex apply_mu_;  // one writer: Apply, Rollback, Resume
  mutable absl::Mutex mu_;        // the records and the queue
  mutable absl::CondVar newer_;
  std::deque<std::shared_ptr<const Record>> records_ ABSL_GUARDED_BY(mu_);  // ascending
  // Received while pinned, with the digests they must have.
  std::deque<std::pair<VersionDelta, std::vector<TableDigest>>> queued_ ABSL_GUARDED_BY(mu_);
  bool pinned_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tessera::serving

#endif  // TESSERA_SERVING_SERVING_STORE_H_
