// The disk tier of a server (docs/embedding_lifecycle.md, "The disk tier"): one RocksDB
// database holding the demoted rows of every sparse table with a tier. Not a durability
// mechanism (checkpoints and replicas are): it is created empty when the server starts, writes
// skip the WAL, and its directory is destroyed when opened.
//
// Keys: space (8) | vshard (4) | row key (8), big-endian, so that a vshard's rows are one range
// in key order. A space is one table's (a table instance: a table restored or created again
// gets a new one, and a dropped table's range goes with it).
#ifndef TESSERA_SERVER_TIER_STORE_H_
#define TESSERA_SERVER_TIER_STORE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace rocksdb {
class DB;
class Cache;
}  // namespace rocksdb

namespace tessera {

class TierStore {
 public:
  // Opens a store in `dir`, destroying what it held; an empty `dir`: a new private directory
  // under $TMPDIR (or /tmp), removed by the destructor. `cache_bytes`: RocksDB's block cache.
  static absl::StatusOr<std::unique_ptr<TierStore>> Open(const std::string& dir,
                                                         uint64_t cache_bytes);
  ~TierStore();
  TierStore(const TierStore&) = delete;
  TierStore& operator=(const TierStore&) = delete;

  const std::string& dir() const { return dir_; }
  // A space for a new table instance (never reused in this process).
  uint64_t NewSpace() { return next_space_.fetch_add(1, std::memory_order_relaxed); }

  // Writes rows[i] under keys[i] (one atomic batch).
  absl::Status Put(uint64_t space, uint32_t vshard, absl::Span<const uint64_t> keys,
                   absl::Span<const absl::string_view> rows);
  // The row of `key` into *row: false when the store holds none.
  absl::StatusOr<bool> Get(uint64_t space, uint32_t vshard, uint64_t key, std::string* row);
  absl::Status Delete(uint64_t space, uint32_t vshard, uint64_t key);
  // Calls fn(key, row) for every row of the vshard, in key order.
  absl::Status Scan(uint64_t space, uint32_t vshard,
                    const std::function<void(uint64_t, absl::string_view)>& fn) const;
  // Deletes a space's rows (a table dropped or replaced).
  absl::Status DropSpace(uint64_t space);

  // Figures for metrics: reads (Get) and how long they took, by bucket of kReadBuckets
  // (seconds; the last bucket is +Inf).
  static constexpr std::array<double, 8> kReadBuckets = {1e-5, 3e-5, 1e-4, 3e-4,
                                                         1e-3, 3e-3, 1e-2, 1e-1};
  struct ReadStats {
    uint64_t count = 0;
    double sum_seconds = 0;
    std::array<uint64_t, kReadBuckets.size() + 1> buckets{};  // not cumulative
  };
  ReadStats read_stats() const;
  // The bytes of the store's files (SSTs and memtables, RocksDB's estimate).
  uint64_t DiskBytes() const;

 private:
  TierStore() = default;

  std::string dir_;
  bool remove_dir_ = false;  // a private directory: removed with the store
  std::shared_ptr<rocksdb::Cache> cache_;
  std::unique_ptr<rocksdb::DB> db_;
  std::atomic<uint64_t> next_space_{1};
  std::atomic<uint64_t> reads_{0};
  std::atomic<uint64_t> read_ns_{0};
  std::array<std::atomic<uint64_t>, kReadBuckets.size() + 1> read_buckets_{};
};

}  // namespace tessera

#endif  // TESSERA_SERVER_TIER_STORE_H_
