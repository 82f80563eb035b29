// A serving replica's tables at versions (docs/online_serving.md): immutable roots of
// per-vshard row maps, built off the lookup path and published by one atomic swap, the last
// few kept for lookups at a version and rollback, and the deltas that built them kept for
// relaying. No protobuf here: the service and the sources translate.
#ifndef TESSERA_SERVING_SERVING_STORE_H_
#define TESSERA_SERVING_SERVING_STORE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
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
  bool full = false;                 // replaces the table (vshards not listed: empty)
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
  // Set by the store once applied (what VersionEnd carries); ascending name.
  std::vector<TableDigest> digests;
  size_t Bytes() const;
};

// Floats per row: a sparse table's dim, a dense table's block.
uint32_t RowWidth(const TableConfig& config);

// One vshard of one table at one version. Immutable once built.
struct VshardRows {
  absl::flat_hash_map<uint64_t, uint32_t> index;  // key -> row
  std::vector<float> weights;                     // row r at [r * width, (r + 1) * width)
  uint64_t digest = 0;                            // sum over rows of RowDigest
  size_t bytes = 0;                               // charged to the store while this exists
  std::atomic<int64_t>* charged = nullptr;
  ~VshardRows();
};

struct TableVersion {
  TableConfig config;
  uint32_t width = 0;
  Initializer initializer;
  std::vector<std::shared_ptr<const VshardRows>> vshards;  // num_vshards; null: empty
  uint64_t digest = 0;
  uint64_t rows = 0;

  explicit TableVersion(const TableConfig& c);
};

struct Root {
  uint64_t version = 0;
  uint64_t parent = 0;
  int64_t created_unix_ms = 0;
  uint32_t num_vshards = 0;
  absl::flat_hash_map<std::string, std::shared_ptr<const TableVersion>> tables;
  std::vector<TableDigest> Digests() const;  // ascending name
};

// The digest of one row: order-free sums of these make a table's digest.
uint64_t RowDigest(uint64_t key, const float* weights, uint32_t width);

struct LookupResult {
  uint64_t version = 0;
  uint32_t dim = 0;
};

struct StoreOptions {
  size_t keep_versions = 10;  // roots (and deltas) kept for lookups at a version, rollback, relays
  uint64_t max_memory_bytes = 0;  // rows of every kept root and kept deltas; 0: no limit
};

// Thread-safe. Lookups never wait for an apply: they load the served root once.
class ServingStore {
 public:
  explicit ServingStore(StoreOptions options);

  // Applies `delta` on the newest applied version: its parent must be that version (or 0:
  // full). `expected`, when not empty, is the digests the version must have (a relay's
  // VersionEnd): a difference refuses the version (DATA_LOSS). A version that would not fit
  // in max_memory_bytes is refused (RESOURCE_EXHAUSTED) before anything is built. A refused
  // version changes nothing. Unless pinned, the new version is served at once.
  absl::Status Apply(VersionDelta delta, const std::vector<TableDigest>& expected = {});

  // The served root (null before the first version), or a kept one by version (null when not
  // kept).
  std::shared_ptr<const Root> Served() const;
  std::shared_ptr<const Root> Kept(uint64_t version) const;
  std::shared_ptr<const Root> Newest() const;

  // Rows of `keys` of sparse table `table` into values[keys.size() x dim]; found bit i set for
  // keys with a row. version 0: the served one.
  absl::StatusOr<LookupResult> Lookup(const std::string& table, const uint64_t* keys, size_t n,
                                      uint64_t version, std::string* values,
                                      std::string* found) const;
  absl::StatusOr<LookupResult> LookupDense(const std::string& table, uint64_t version,
                                           std::string* values) const;

  // Serves kept `version`; new versions are still applied and kept, and served after Resume.
  absl::Status Rollback(uint64_t version);
  // Serves the newest applied version again.
  uint64_t Resume();

  // For relays: the deltas from `from` (exclusive) to the newest applied version, in order,
  // when every one is kept and chained; else empty with *full set to the newest root (null
  // when nothing is held or from is the newest).
  std::vector<std::shared_ptr<const VersionDelta>> DeltasAfter(
      uint64_t from, std::shared_ptr<const Root>* full) const;
  // Waits until a version newer than `version` is applied or `timeout` passes.
  void WaitNewer(uint64_t version, absl::Duration timeout) const;

  uint64_t newest_version() const;
  bool pinned() const;
  std::vector<uint64_t> kept_versions() const;
  int64_t bytes() const { return charged_.load(std::memory_order_relaxed); }
  uint64_t max_memory_bytes() const { return options_.max_memory_bytes; }
  uint64_t applied_total() const { return applied_total_.load(std::memory_order_relaxed); }
  uint64_t refused_total() const { return refused_total_.load(std::memory_order_relaxed); }

 private:
  // Drops the oldest kept versions beyond keep_versions, never the served one.
  void DropBeyondKeep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::shared_ptr<const TableVersion>> BuildTable(
      const TableDelta& delta, const std::shared_ptr<const TableVersion>& base,
      uint32_t num_vshards);

  StoreOptions options_;
  std::atomic<int64_t> charged_{0};
  std::atomic<uint64_t> applied_total_{0};
  std::atomic<uint64_t> refused_total_{0};
  std::atomic<std::shared_ptr<const Root>> served_;
  absl::Mutex apply_mu_;  // one Apply at a time
  mutable absl::Mutex mu_;
  mutable absl::CondVar newer_;
  std::deque<std::shared_ptr<const Root>> kept_ ABSL_GUARDED_BY(mu_);  // ascending version
  // The delta that built each kept root (null for one built from a full version).
  std::deque<std::shared_ptr<const VersionDelta>> deltas_ ABSL_GUARDED_BY(mu_);
  bool pinned_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tessera::serving

#endif  // TESSERA_SERVING_SERVING_STORE_H_
