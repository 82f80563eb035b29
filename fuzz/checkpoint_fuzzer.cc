// The checkpoint readers (docs/checkpoints.md): the first byte picks what the rest is.
//   0: entries (key length, key, value length, value, ...) written into a well-formed SST with
//      RocksDB's own writer, then opened and scanned by TableFileReader: our decoding of
//      whatever keys and values a file with a valid checksum may hold;
//   1: a manifest payload, framed with its magic and CRC so that the parser and checks run;
//   2: raw file bytes under a CRC they do not have: refused before RocksDB parses anything.
// Raw bytes are never handed to RocksDB's parser with a matching CRC: a restore checks the
// whole file against the manifest's CRC32C first, so a corrupted file never gets that far
// (RocksDB's Debian build asserts on some malformed blocks; fuzzing it is RocksDB's business).
#include <rocksdb/options.h>
#include <rocksdb/sst_file_reader.h>
#include <rocksdb/sst_file_writer.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "fuzz/fuzz_util.h"
#include "proto/checkpoint.pb.h"
#include "storage/checkpoint_store.h"
#include "storage/crc32c.h"
#include "storage/table_file.h"

namespace tessera {
namespace {

const std::string& Dir() {
  static const std::string* dir = [] {
    auto* d = new std::string(std::filesystem::temp_directory_path() /
                              ("tessera_checkpoint_fuzz_" + std::to_string(getpid())));
    std::filesystem::create_directories(*d);
    return d;
  }();
  return *dir;
}

std::vector<std::string> Seeds() {
  std::vector<std::string> seeds;
  // The entries of a real table file (rows and a tombstone), as key/value records.
  const std::string path = Dir() + "/seed.sst";
  {
    auto writer = storage::TableFileWriter::Create(path);
    if (writer.ok()) {
      (void)(*writer)->AddRow(0, 1, std::string(12, 'a'));
      (void)(*writer)->AddRow(0, 7, std::string(12, 'b'));
      (void)(*writer)->AddTombstone(2, 9);
      (void)(*writer)->AddRow(3, 2, std::string(12, 'c'));
      (void)(*writer)->Finish();
      auto reader = rocksdb::SstFileReader(rocksdb::Options());
      std::string records(1, '\0');
      if (reader.Open(path).ok()) {
        std::unique_ptr<rocksdb::Iterator> it(reader.NewIterator(rocksdb::ReadOptions()));
        for (it->SeekToFirst(); it->Valid(); it->Next()) {
          records += static_cast<char>(it->key().size());
          records += it->key().ToString();
          records += static_cast<char>(it->value().size() & 0xff);
          records += static_cast<char>(it->value().size() >> 8);
          records += it->value().ToString();
        }
      }
      seeds.push_back(records);
      std::ifstream in(path, std::ios::binary);
      seeds.push_back(std::string(1, '\2') + std::string(std::istreambuf_iterator<char>(in), {}));
    }
  }
  storage::v1::CheckpointManifest m;
  m.set_id(1);
  m.add_chain(1);
  m.set_num_shards(1);
  m.set_num_vshards(16);
  storage::v1::PartManifest* part = m.add_parts();
  part->set_num_shards(1);
  part->set_num_vshards(16);
  storage::v1::TableEntry* t = part->add_tables();
  t->set_full(true);
  t->add_files()->set_name("t0.sst");
  seeds.push_back(std::string(1, '\1') + m.SerializeAsString());
  return seeds;
}

}  // namespace
}  // namespace tessera

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tessera::fuzz::MaybeWriteSeeds(tessera::Seeds());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;  // NOLINT
  if (size == 0) return 0;
  const int mode = data[0] % 3;
  const std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::string path = Dir() + "/input.sst";
  if (mode == 0) {
    std::map<std::string, std::string> entries;  // (the writer needs increasing keys)
    size_t i = 0;
    while (i < bytes.size()) {
      const size_t klen = static_cast<uint8_t>(bytes[i++]);
      if (klen == 0 || i + klen + 2 > bytes.size()) break;
      std::string key = bytes.substr(i, klen);
      i += klen;
      const size_t vlen = static_cast<uint8_t>(bytes[i]) | static_cast<uint8_t>(bytes[i + 1]) << 8;
      i += 2;
      entries[key] = bytes.substr(i, std::min(vlen, bytes.size() - i));
      i += std::min(vlen, bytes.size() - i);
    }
    if (entries.empty()) return 0;
    rocksdb::Options options;
    rocksdb::SstFileWriter writer(rocksdb::EnvOptions(), options);
    if (!writer.Open(path).ok()) return 0;
    for (const auto& [k, v] : entries) {
      if (!writer.Put(k, v).ok()) return 0;
    }
    if (!writer.Finish().ok()) return 0;
    auto reader = storage::TableFileReader::Open(path);
    if (!reader.ok()) return 0;
    (void)(*reader)->Scan(0, UINT32_MAX, [](const storage::Entry& e) {
      volatile size_t touch = e.bytes.size() > 0 ? static_cast<uint8_t>(e.bytes.back()) : 0;
      (void)touch;
      return absl::OkStatus();
    });
    return 0;
  }
  if (mode == 2) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    const uint32_t crc = storage::Crc32cExtend(0, bytes.data(), bytes.size()) ^ 1;  // not its CRC
    const std::string wrong = {static_cast<char>(crc >> 24), static_cast<char>(crc >> 16),
                               static_cast<char>(crc >> 8), static_cast<char>(crc)};
    if (storage::TableFileReader::Open(path, bytes.size(), wrong).ok()) __builtin_trap();
    return 0;
  }
  auto store = storage::CheckpointStore::Open(Dir() + "/store");
  if (!store.ok()) return 0;
  storage::v1::CheckpointManifest m;
  if (!m.ParseFromString(bytes)) return 0;
  // Published as the store writes manifests (magic, CRC), then read back and chained.
  if (m.id() == 0 || m.id() > 1000) m.set_id(1 + m.id() % 1000);
  if (!(*store)->Publish(m).ok()) return 0;
  storage::v1::CheckpointManifest back;
  (void)(*store)->ReadManifest(m.id(), &back);
  (void)(*store)->ReadChain(m.id());
  (void)(*store)->Remove(m.id());
  return 0;
}
