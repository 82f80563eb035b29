#include "storage/checkpoint_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "proto/checkpoint.pb.h"
#include "storage/file_util.h"
#include "storage/table_file.h"

namespace tessera::storage {
namespace {

namespace fs = std::filesystem;

constexpr char kManifestMagic[] = "TSRCKPT1";  // 8 bytes, then CRC32C (4 bytes), then payload
constexpr size_t kMagicSize = 8;
constexpr size_t kCrcSize = 4;

}  // namespace

DriverLock::~DriverLock() {
  if (fd_ >= 0) {
    flock(fd_, LOCK_UN);
    close(fd_);
  }
}

absl::StatusOr<std::unique_ptr<CheckpointStore>> CheckpointStore::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("checkpoint directory is empty");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot use checkpoint directory ", dir, ": ", ec.message()));
  }
  return std::unique_ptr<CheckpointStore>(new CheckpointStore(dir));
}

std::string CheckpointStore::CheckpointDir(uint64_t id) const {
  return absl::StrFormat("%s/ckpt-%08u", dir_, id);
}
std::string CheckpointStore::PartDir(uint64_t id, uint32_t shard) const {
  return absl::StrFormat("%s/shard-%u", CheckpointDir(id), shard);
}
std::string CheckpointStore::ManifestPath(uint64_t id) const {
  return CheckpointDir(id) + "/MANIFEST";
}

absl::StatusOr<std::vector<uint64_t>> CheckpointStore::List(std::vector<uint64_t>* partial) const {
  std::vector<uint64_t> ids;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir_, ec)) {
    absl::string_view name = e.path().filename().native();
    uint64_t id = 0;
    if (!absl::ConsumePrefix(&name, "ckpt-") || !absl::SimpleAtoi(name, &id) || id == 0) continue;
    v1::CheckpointManifest m;
    if (ReadManifest(id, &m).ok()) {
      ids.push_back(id);
    } else if (partial != nullptr) {
      partial->push_back(id);
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", dir_, ": ", ec.message()));
  std::sort(ids.begin(), ids.end());
  if (partial != nullptr) std::sort(partial->begin(), partial->end());
  return ids;
}

uint64_t CheckpointStore::NewestOrZero() const {
  absl::StatusOr<std::vector<uint64_t>> ids = List();
  return ids.ok() && !ids->empty() ? ids->back() : 0;
}

absl::Status CheckpointStore::ReadManifest(uint64_t id, v1::CheckpointManifest* out) const {
  const std::string path = ManifestPath(id);
  absl::StatusOr<std::string> bytes = ReadFile(path);
  if (!bytes.ok()) {
    if (absl::IsNotFound(bytes.status())) {
      return absl::NotFoundError(
          absl::StrCat("checkpoint ", id, " does not exist (no ", path, ")"));
    }
    return bytes.status();
  }
  if (bytes->size() < kMagicSize + kCrcSize || bytes->compare(0, kMagicSize, kManifestMagic) != 0) {
    return absl::DataLossError(
        absl::StrCat("checkpoint manifest ", path, " is corrupt: bad header"));
  }
  const absl::string_view payload = absl::string_view(*bytes).substr(kMagicSize + kCrcSize);
  if (Crc32c(payload) != bytes->substr(kMagicSize, kCrcSize)) {
    return absl::DataLossError(
        absl::StrCat("checkpoint manifest ", path, " is corrupt: checksum mismatch"));
  }
  if (!out->ParseFromArray(payload.data(), static_cast<int>(payload.size())) || out->id() != id) {
    return absl::DataLossError(
        absl::StrCat("checkpoint manifest ", path, " is corrupt: unreadable contents"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::CheckpointManifest>> CheckpointStore::ReadChain(uint64_t id) const {
  v1::CheckpointManifest last;
  if (absl::Status s = ReadManifest(id, &last); !s.ok()) return s;
  std::vector<v1::CheckpointManifest> chain;
  for (uint64_t link : last.chain()) {
    if (link == id) break;
    v1::CheckpointManifest m;
    if (absl::Status s = ReadManifest(link, &m); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("checkpoint ", id, " needs ", link,
                                                 " of its chain: ", s.message()));
    }
    chain.push_back(std::move(m));
  }
  chain.push_back(std::move(last));
  return chain;
}

absl::StatusOr<std::vector<std::unique_ptr<TableFileReader>>> CheckpointStore::OpenTableFiles(
    const std::vector<v1::CheckpointManifest>& chain, uint32_t shard, const std::string& name,
    bool verify_crc, uint32_t threads) const {
  // The files, newest checkpoint first (reversed at the end). A checkpoint's files do not
  // overlap, so their order among themselves does not matter.
  std::vector<std::pair<std::string, const v1::FileEntry*>> files;
  for (size_t k = chain.size(); k-- > 0;) {
    const v1::TableEntry* entry = nullptr;
    for (const v1::PartManifest& part : chain[k].parts()) {
      if (part.shard_index() != shard) continue;
      for (const v1::TableEntry& e : part.tables()) {
        if (e.spec().name() == name) entry = &e;
      }
    }
    if (entry == nullptr) {
      return absl::DataLossError(
          absl::StrFormat("checkpoint %u has no full copy of table '%s' from shard %u in its chain",
                          chain.back().id(), name, shard));
    }
    for (const v1::FileEntry& file : entry->files()) {
      files.emplace_back(absl::StrCat(PartDir(chain[k].id(), shard), "/", file.name()), &file);
    }
    if (entry->full()) break;
  }
  std::vector<absl::StatusOr<std::unique_ptr<TableFileReader>>> opened(files.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next.fetch_add(1); i < files.size(); i = next.fetch_add(1)) {
      const v1::FileEntry& f = *files[i].second;
      opened[i] = TableFileReader::Open(files[i].first, f.size_bytes(),
                                        verify_crc ? f.crc32c() : std::string());
    }
  };
  std::vector<std::thread> workers;
  for (uint32_t t = 1; t < std::min<size_t>(std::max<uint32_t>(threads, 1), files.size()); ++t) {
    workers.emplace_back(work);
  }
  work();
  for (auto& w : workers) w.join();
  std::vector<std::unique_ptr<TableFileReader>> readers;
  for (auto& r : opened) {
    if (!r.ok()) return r.status();
    readers.push_back(std::move(*r));
  }
  std::reverse(readers.begin(), readers.end());
  return readers;
}

absl::Status CheckpointStore::Publish(const v1::CheckpointManifest& manifest) const {
  std::string payload;
  manifest.SerializeToString(&payload);
  const std::string contents =
      absl::StrCat(absl::string_view(kManifestMagic, kMagicSize), Crc32c(payload), payload);
  std::error_code ec;
  fs::create_directories(CheckpointDir(manifest.id()), ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", CheckpointDir(manifest.id()), ": ", ec.message()));
  }
  if (absl::Status s = WriteFileAtomically(ManifestPath(manifest.id()), contents); !s.ok()) {
    return s;
  }
  return SyncDir(dir_);
}

absl::Status CheckpointStore::CreatePartDir(uint64_t id, uint32_t shard) const {
  const std::string part = PartDir(id, shard);
  std::error_code ec;
  fs::remove_all(part, ec);
  fs::create_directories(part, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", part, ": ", ec.message()));
  if (absl::Status s = SyncDir(CheckpointDir(id)); !s.ok()) return s;
  return SyncDir(dir_);
}

absl::Status CheckpointStore::Remove(uint64_t id) const {
  std::error_code ec;
  // The manifest goes first, so that a crash half-way leaves a partial checkpoint, never a
  // complete-looking one with files missing.
  fs::remove(ManifestPath(id), ec);
  if (!ec) (void)SyncDir(CheckpointDir(id));
  fs::remove_all(CheckpointDir(id), ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot remove checkpoint ", id, ": ", ec.message()));
  return SyncDir(dir_);
}

absl::StatusOr<std::vector<uint64_t>> CheckpointStore::RetentionVictims(size_t keep) const {
  absl::StatusOr<std::vector<uint64_t>> ids = List();
  if (!ids.ok()) return ids.status();
  if (keep == 0 || ids->size() <= keep) return std::vector<uint64_t>{};
  std::set<uint64_t> needed;
  for (size_t i = ids->size() - keep; i < ids->size(); ++i) {
    v1::CheckpointManifest m;
    if (absl::Status s = ReadManifest((*ids)[i], &m); !s.ok()) return s;
    needed.insert(m.chain().begin(), m.chain().end());
  }
  std::vector<uint64_t> victims;
  for (uint64_t id : *ids) {
    if (!needed.contains(id)) victims.push_back(id);
  }
  return victims;
}

absl::StatusOr<std::unique_ptr<DriverLock>> CheckpointStore::LockForDriver() const {
  const std::string path = dir_ + "/LOCK";
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open ", path));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("another checkpoint round holds ", path, "; try again when it is done"));
  }
  return std::make_unique<DriverLock>(fd);
}

}  // namespace tessera::storage
