#include "storage/table_file.h"

#include <fcntl.h>
#include <rocksdb/env.h>
#include <rocksdb/file_checksum.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/sst_file_reader.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/table.h>
#include <unistd.h>

#include <filesystem>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "storage/crc32c.h"
#include "storage/file_util.h"

namespace tessera::storage {
namespace {

constexpr size_t kKeySize = 12;

void EncodeKey(uint32_t vshard, uint64_t key, char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(vshard >> (24 - 8 * i));
  for (int i = 0; i < 8; ++i) out[4 + i] = static_cast<char>(key >> (56 - 8 * i));
}

bool DecodeKey(const rocksdb::Slice& s, uint32_t* vshard, uint64_t* key) {
  if (s.size() != kKeySize) return false;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  *vshard = 0;
  *key = 0;
  for (int i = 0; i < 4; ++i) *vshard = (*vshard << 8) | p[i];
  for (int i = 0; i < 8; ++i) *key = (*key << 8) | p[4 + i];
  return true;
}

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what, const std::string& path) {
  if (s.ok()) return absl::OkStatus();
  const std::string message = absl::StrCat(what, " ", path, ": ", s.ToString());
  if (s.IsCorruption()) return absl::DataLossError(message);
  if (s.IsNotFound() || s.IsPathNotFound()) return absl::NotFoundError(message);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

rocksdb::Options SstOptions() {
  rocksdb::Options options;
  options.compression = rocksdb::kNoCompression;
  options.file_checksum_gen_factory = Crc32cChecksumFactory();
  rocksdb::BlockBasedTableOptions table;
  table.block_size = 256 << 10;
  options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return options;
}

// Decodes an iterator's current entry; DATA_LOSS when it is not one of ours.
absl::Status Current(const rocksdb::Iterator& it, const std::string& path, Entry* e) {
  const rocksdb::Slice v = it.value();
  if (!DecodeKey(it.key(), &e->vshard, &e->key) || v.empty() ||
      (v[0] != static_cast<char>(EntryType::kRow) &&
       v[0] != static_cast<char>(EntryType::kTombstone))) {
    return absl::DataLossError(absl::StrCat("malformed entry in checkpoint file ", path));
  }
  e->type = static_cast<EntryType>(v[0]);
  e->bytes = absl::string_view(v.data() + 1, v.size() - 1);
  return absl::OkStatus();
}

}  // namespace

TableFileWriter::TableFileWriter(std::string path, std::unique_ptr<rocksdb::SstFileWriter> writer)
    : path_(std::move(path)), writer_(std::move(writer)) {}

TableFileWriter::~TableFileWriter() = default;

absl::StatusOr<std::unique_ptr<TableFileWriter>> TableFileWriter::Create(const std::string& path) {
  // Direct I/O in large requests: the file goes to disk without a copy into the page cache
  // (which cost as much CPU as everything else together), like dd oflag=direct.
  rocksdb::EnvOptions env;
  env.use_direct_writes = true;
  env.writable_file_max_buffer_size = 8 << 20;
  auto writer = std::make_unique<rocksdb::SstFileWriter>(
      env, SstOptions(), /*column_family=*/nullptr,
      /*invalidate_page_cache=*/false, rocksdb::Env::IOPriority::IO_TOTAL, /*skip_filters=*/true);
  if (absl::Status s = FromRocks(writer->Open(path), "cannot create checkpoint file", path);
      !s.ok()) {
    return s;
  }
  return std::unique_ptr<TableFileWriter>(new TableFileWriter(path, std::move(writer)));
}

absl::Status TableFileWriter::Add(uint32_t vshard, uint64_t key, EntryType type,
                                  absl::string_view bytes) {
  char k[kKeySize];
  EncodeKey(vshard, key, k);
  value_.resize(1 + bytes.size());
  value_[0] = static_cast<char>(type);
  if (!bytes.empty()) std::memcpy(value_.data() + 1, bytes.data(), bytes.size());
  return FromRocks(writer_->Put(rocksdb::Slice(k, kKeySize), value_),
                   "cannot write checkpoint file", path_);
}

absl::Status TableFileWriter::AddRow(uint32_t vshard, uint64_t key, absl::string_view bytes) {
  ++info_.rows;
  return Add(vshard, key, EntryType::kRow, bytes);
}

absl::Status TableFileWriter::AddEncodedRow(uint32_t vshard, uint64_t key,
                                            absl::string_view value) {
  if (value.empty() || value[0] != static_cast<char>(EntryType::kRow)) {
    return absl::InvalidArgumentError("AddEncodedRow: value must start with EntryType::kRow");
  }
  ++info_.rows;
  char k[kKeySize];
  EncodeKey(vshard, key, k);
  return FromRocks(
      writer_->Put(rocksdb::Slice(k, kKeySize), rocksdb::Slice(value.data(), value.size())),
      "cannot write checkpoint file", path_);
}

absl::Status TableFileWriter::AddTombstone(uint32_t vshard, uint64_t key) {
  ++info_.tombstones;
  return Add(vshard, key, EntryType::kTombstone, {});
}

absl::StatusOr<FileInfo> TableFileWriter::Finish() {
  rocksdb::ExternalSstFileInfo info;
  // An SST cannot be empty: a table without entries gets a marker file of zero length.
  if (info_.rows == 0 && info_.tombstones == 0) {
    writer_.reset();
    if (absl::Status s = WriteFileAtomically(path_, ""); !s.ok()) return s;
    info_.crc32c = Crc32c("");
    return info_;
  }
  if (absl::Status s = FromRocks(writer_->Finish(&info), "cannot finish checkpoint file", path_);
      !s.ok()) {
    return s;
  }
  // Make sure the data is on disk whatever RocksDB's Finish did.
  const int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) != 0) {
    if (fd >= 0) close(fd);
    return absl::InternalError(absl::StrCat("cannot fsync checkpoint file ", path_));
  }
  close(fd);
  info_.size_bytes = info.file_size;
  info_.crc32c = info.file_checksum;
  return info_;
}

TableFileReader::TableFileReader(std::string path, std::unique_ptr<rocksdb::SstFileReader> reader)
    : path_(std::move(path)), reader_(std::move(reader)) {}

TableFileReader::~TableFileReader() = default;

absl::StatusOr<std::unique_ptr<TableFileReader>> TableFileReader::Open(
    const std::string& path, uint64_t expected_size, const std::string& expected_crc32c) {
  if (!expected_crc32c.empty()) {
    absl::StatusOr<std::string> crc = FileCrc32c(path);
    if (!crc.ok()) {
      return absl::DataLossError(
          absl::StrCat("checkpoint file missing or unreadable: ", crc.status().message()));
    }
    if (*crc != expected_crc32c) {
      return absl::DataLossError(
          absl::StrFormat("checkpoint file %s is corrupt: CRC32C %s, manifest says %s", path,
                          Hex(*crc), Hex(expected_crc32c)));
    }
  }
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::DataLossError(absl::StrCat("cannot stat checkpoint file ", path));
  if (expected_size > 0 && size != expected_size) {
    return absl::DataLossError(absl::StrFormat(
        "checkpoint file %s is corrupt: %u bytes, manifest says %u", path, size, expected_size));
  }
  if (size == 0) {  // the marker of a table without entries
    return std::unique_ptr<TableFileReader>(new TableFileReader(path, nullptr));
  }
  // Memory-mapped reads: values are read in place from the page cache (buffered reads copied
  // every block once more, and RocksDB's readahead re-read them several times). On a file not
  // in the page cache, faulting it in page by page is slow: callers that scan whole files
  // verify the CRC first, which reads the file sequentially.
  rocksdb::Options read_options = SstOptions();
  read_options.allow_mmap_reads = true;
  auto reader = std::make_unique<rocksdb::SstFileReader>(read_options);
  if (absl::Status s = FromRocks(reader->Open(path), "cannot open checkpoint file", path);
      !s.ok()) {
    return s;
  }
  return std::unique_ptr<TableFileReader>(new TableFileReader(path, std::move(reader)));
}

absl::Status TableFileReader::Scan(uint32_t first, uint32_t last,
                                   const std::function<absl::Status(const Entry&)>& fn) {
  return MergeChain({this}, first, last, fn);
}

absl::Status MergeChain(const std::vector<TableFileReader*>& oldest_first, uint32_t first,
                        uint32_t last, const std::function<absl::Status(const Entry&)>& fn) {
  return MergeEntries(oldest_first, first, last, false, fn);
}

absl::Status MergeEntries(const std::vector<TableFileReader*>& oldest_first, uint32_t first,
                          uint32_t last, bool with_tombstones,
                          const std::function<absl::Status(const Entry&)>& fn) {
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  ro.fill_cache = false;
  ro.readahead_size = 0;
  std::vector<std::unique_ptr<rocksdb::Iterator>> its(oldest_first.size());
  char start[kKeySize];
  EncodeKey(first, 0, start);
  // Min-heap on (vshard, key); among equal keys the newest file (highest index) comes first.
  struct Head {
    uint32_t vshard;
    uint64_t key;
    size_t file;
  };
  auto later = [](const Head& a, const Head& b) {
    if (a.vshard != b.vshard) return a.vshard > b.vshard;
    if (a.key != b.key) return a.key > b.key;
    return a.file < b.file;
  };
  std::priority_queue<Head, std::vector<Head>, decltype(later)> heap(later);
  auto push_head = [&](size_t i) -> absl::Status {
    rocksdb::Iterator& it = *its[i];
    if (!it.Valid()) {
      return FromRocks(it.status(), "cannot read checkpoint file", oldest_first[i]->path());
    }
    Entry e;
    if (absl::Status s = Current(it, oldest_first[i]->path(), &e); !s.ok()) return s;
    if (e.vshard <= last) heap.push({e.vshard, e.key, i});
    return absl::OkStatus();
  };
  for (size_t i = 0; i < its.size(); ++i) {
    if (oldest_first[i]->reader_ == nullptr) continue;  // empty table file
    its[i].reset(oldest_first[i]->reader_->NewIterator(ro));
    its[i]->Seek(rocksdb::Slice(start, kKeySize));
    if (absl::Status s = push_head(i); !s.ok()) return s;
  }
  while (!heap.empty()) {
    const Head top = heap.top();
    heap.pop();
    Entry e;
    if (absl::Status s = Current(*its[top.file], oldest_first[top.file]->path(), &e); !s.ok()) {
      return s;
    }
    if (e.type == EntryType::kRow || with_tombstones) {
      if (absl::Status s = fn(e); !s.ok()) return s;
    }
    // Advance this file and every older file positioned on the same key.
    std::vector<size_t> advance = {top.file};
    while (!heap.empty() && heap.top().vshard == top.vshard && heap.top().key == top.key) {
      advance.push_back(heap.top().file);
      heap.pop();
    }
    for (size_t i : advance) {
      its[i]->Next();
      if (absl::Status s = push_head(i); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::storage
