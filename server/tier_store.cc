#include "server/tier_store.h"

#include <stdlib.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_format.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace tessera {
namespace {

constexpr size_t kKeyBytes = 8 + 4 + 8;

void PutBig(char* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
}

uint64_t GetBig(const char* in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(in[i]);
  return v;
}

struct TierKey {
  char bytes[kKeyBytes];
  TierKey(uint64_t space, uint32_t vshard, uint64_t key) {
    PutBig(bytes, space, 8);
    PutBig(bytes + 8, vshard, 4);
    PutBig(bytes + 12, key, 8);
  }
  rocksdb::Slice slice() const { return rocksdb::Slice(bytes, kKeyBytes); }
};

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("disk tier: %s: %s", what, s.ToString()));
}

rocksdb::WriteOptions NoWal() {
  rocksdb::WriteOptions w;
  w.disableWAL = true;  // (not durable by design: a restarted server starts with an empty tier)
  return w;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TierStore>> TierStore::Open(const std::string& dir,
                                                           uint64_t cache_bytes) {
  std::unique_ptr<TierStore> store(new TierStore());
  if (dir.empty()) {
    const char* tmp = getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/tessera-tier-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::InternalError(absl::StrFormat("disk tier: cannot create a directory %s: %s",
                                                 pattern, std::strerror(errno)));
    }
    store->dir_ = pattern;
    store->remove_dir_ = true;
  } else {
    store->dir_ = dir;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrFormat("disk tier: cannot create --tier_dir %s: %s", dir, ec.message()));
    }
  }
  rocksdb::Options options;
  options.create_if_missing = true;
  options.error_if_exists = false;
  options.write_buffer_size = 16 << 20;
  options.max_write_buffer_number = 2;
  options.max_open_files = 512;
  options.compression = rocksdb::kNoCompression;  // (floats: compression gains little)
  options.IncreaseParallelism(2);
  // Reads from mapped files: a block not in the cache costs no system call (the tier's files
  // are in the page cache while the machine has memory to spare).
  options.allow_mmap_reads = true;
  rocksdb::BlockBasedTableOptions table;
  store->cache_ = rocksdb::NewLRUCache(cache_bytes);
  table.block_cache = store->cache_;
  // A Bloom filter per file answers "not on disk" for keys never demoted without a read.
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  // Index and filter blocks stay with their files (a few bytes a row), not in the block cache
  // where data blocks would evict them: a point read is then one data block.
  table.cache_index_and_filter_blocks = false;
  options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // What the directory held is another incarnation's tier: gone (the rows came back from the
  // checkpoint or a replica, not from here). The LOCK file keeps two servers off one directory.
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, store->dir_, &db);
  if (!s.ok()) return FromRocks(s, absl::StrFormat("opening %s", store->dir_));
  delete db;
  s = rocksdb::DestroyDB(store->dir_, options);
  if (!s.ok()) return FromRocks(s, absl::StrFormat("clearing %s", store->dir_));
  s = rocksdb::DB::Open(options, store->dir_, &db);
  if (!s.ok()) return FromRocks(s, absl::StrFormat("opening %s", store->dir_));
  store->db_.reset(db);
  return store;
}

TierStore::~TierStore() {
  db_.reset();
  if (remove_dir_) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

absl::Status TierStore::Put(uint64_t space, uint32_t vshard, absl::Span<const uint64_t> keys,
                            absl::Span<const absl::string_view> rows) {
  rocksdb::WriteBatch batch;
  for (size_t i = 0; i < keys.size(); ++i) {
    const TierKey k(space, vshard, keys[i]);
    batch.Put(k.slice(), rocksdb::Slice(rows[i].data(), rows[i].size()));
  }
  return FromRocks(db_->Write(NoWal(), &batch), "writing rows");
}

absl::StatusOr<bool> TierStore::Get(uint64_t space, uint32_t vshard, uint64_t key,
                                    std::string* row) {
  const auto start = std::chrono::steady_clock::now();
  const TierKey k(space, vshard, key);
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), k.slice(), row);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  reads_.fetch_add(1, std::memory_order_relaxed);
  read_ns_.fetch_add(static_cast<uint64_t>(seconds * 1e9), std::memory_order_relaxed);
  size_t b = 0;
  while (b < kReadBuckets.size() && seconds > kReadBuckets[b]) ++b;
  read_buckets_[b].fetch_add(1, std::memory_order_relaxed);
  if (s.IsNotFound()) return false;
  if (!s.ok()) return FromRocks(s, "reading a row");
  return true;
}

absl::Status TierStore::Delete(uint64_t space, uint32_t vshard, uint64_t key) {
  const TierKey k(space, vshard, key);
  return FromRocks(db_->Delete(NoWal(), k.slice()), "deleting a row");
}

absl::Status TierStore::Scan(uint64_t space, uint32_t vshard,
                             const std::function<void(uint64_t, absl::string_view)>& fn) const {
  const TierKey first(space, vshard, 0);
  char end[12];
  PutBig(end, space, 8);
  PutBig(end + 8, uint64_t{vshard} + 1, 4);  // (vshard < 2^32 - 1: shard maps hold fewer)
  const rocksdb::Slice upper(end, sizeof(end));
  rocksdb::ReadOptions options;
  options.iterate_upper_bound = &upper;
  options.fill_cache = false;  // (a scan reads each row once: keep the cache for promotions)
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(options));
  for (it->Seek(first.slice()); it->Valid(); it->Next()) {
    const rocksdb::Slice key = it->key();
    if (key.size() != kKeyBytes) return absl::InternalError("disk tier: a key of another form");
    fn(GetBig(key.data() + 12, 8), absl::string_view(it->value().data(), it->value().size()));
  }
  return FromRocks(it->status(), "scanning rows");
}

absl::Status TierStore::DropSpace(uint64_t space) {
  char begin[8], end[8];
  PutBig(begin, space, 8);
  PutBig(end, space + 1, 8);
  return FromRocks(db_->DeleteRange(NoWal(), db_->DefaultColumnFamily(), rocksdb::Slice(begin, 8),
                                    rocksdb::Slice(end, 8)),
                   "dropping a table's rows");
}

TierStore::ReadStats TierStore::read_stats() const {
  ReadStats s;
  s.count = reads_.load(std::memory_order_relaxed);
  s.sum_seconds = static_cast<double>(read_ns_.load(std::memory_order_relaxed)) / 1e9;
  for (size_t b = 0; b < s.buckets.size(); ++b) {
    s.buckets[b] = read_buckets_[b].load(std::memory_order_relaxed);
  }
  return s;
}

uint64_t TierStore::DiskBytes() const {
  uint64_t sst = 0, mem = 0;
  db_->GetIntProperty("rocksdb.total-sst-files-size", &sst);
  db_->GetIntProperty("rocksdb.cur-size-all-mem-tables", &mem);
  return sst + mem;
}

}  // namespace tessera
