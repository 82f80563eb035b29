// One table's rows in one checkpoint part: a RocksDB SST file whose keys are
// vshard (big-endian u32) || key (big-endian u64) and whose values are a type byte followed by
// the row's bytes. See docs/checkpoints.md.
#ifndef TESSERA_STORAGE_TABLE_FILE_H_
#define TESSERA_STORAGE_TABLE_FILE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rocksdb {
class SstFileWriter;
class SstFileReader;
}  // namespace rocksdb

namespace tessera::storage {

enum class EntryType : uint8_t { kRow = 1, kTombstone = 2 };

struct Entry {
  uint32_t vshard;
  uint64_t key;
  EntryType type;
  absl::string_view bytes;  // the row; empty for a tombstone. Valid during the callback only.
};

struct FileInfo {
  uint64_t size_bytes = 0;
  std::string crc32c;
  uint64_t rows = 0;
  uint64_t tombstones = 0;
};

// Writes entries in strictly increasing (vshard, key) order. Not thread-safe.
class TableFileWriter {
 public:
  static absl::StatusOr<std::unique_ptr<TableFileWriter>> Create(const std::string& path);
  ~TableFileWriter();

  absl::Status AddRow(uint32_t vshard, uint64_t key, absl::string_view bytes);
  // As AddRow, for callers that build the stored value themselves to save a copy: `value` is
  // the byte EntryType::kRow followed by the row.
  absl::Status AddEncodedRow(uint32_t vshard, uint64_t key, absl::string_view value);
  absl::Status AddTombstone(uint32_t vshard, uint64_t key);
  // Completes the file and makes it durable (fsync). Call once.
  absl::StatusOr<FileInfo> Finish();

 private:
  TableFileWriter(std::string path, std::unique_ptr<rocksdb::SstFileWriter> writer);
  absl::Status Add(uint32_t vshard, uint64_t key, EntryType type, absl::string_view bytes);

  const std::string path_;
  std::unique_ptr<rocksdb::SstFileWriter> writer_;
  std::string value_;  // scratch
  FileInfo info_;
};

// Reads a table file with block checksums verified. Not thread-safe.
class TableFileReader {
 public:
  // When expected_crc32c is not empty, first checks the whole file against it; when
  // expected_size is not 0, checks the size: DATA_LOSS naming the file on any difference.
  static absl::StatusOr<std::unique_ptr<TableFileReader>> Open(
      const std::string& path, uint64_t expected_size = 0, const std::string& expected_crc32c = "");
  ~TableFileReader();

  const std::string& path() const { return path_; }

  // Calls fn for every entry whose vshard is in [first, last], in order; stops at fn's first
  // error and returns it.
  absl::Status Scan(uint32_t first, uint32_t last,
                    const std::function<absl::Status(const Entry&)>& fn);

 private:
  TableFileReader(std::string path, std::unique_ptr<rocksdb::SstFileReader> reader);

  friend absl::Status MergeEntries(const std::vector<TableFileReader*>&, uint32_t, uint32_t, bool,
                                   const std::function<absl::Status(const Entry&)>&);

  const std::string path_;
  std::unique_ptr<rocksdb::SstFileReader> reader_;
};

// The files of one table on one shard along a chain, oldest (the full base) first: calls fn
// for the newest entry of every key in vshards [first, last] that is a row (a key whose newest
// entry is a tombstone is skipped), in key order.
absl::Status MergeChain(const std::vector<TableFileReader*>& oldest_first, uint32_t first,
                        uint32_t last, const std::function<absl::Status(const Entry&)>& fn);
// As MergeChain, with tombstones too when `with_tombstones` (the newest entry of every key,
// whatever its type): an increment's changes, as online serving reads them.
absl::Status MergeEntries(const std::vector<TableFileReader*>& oldest_first, uint32_t first,
                          uint32_t last, bool with_tombstones,
                          const std::function<absl::Status(const Entry&)>& fn);

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_TABLE_FILE_H_
