// The checkpoint directory: layout, manifests, listing, retention and the driver lock. See
// docs/checkpoints.md for the format and its invariants.
#ifndef TESSERA_STORAGE_CHECKPOINT_STORE_H_
#define TESSERA_STORAGE_CHECKPOINT_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::storage {

namespace v1 {
class CheckpointManifest;
}  // namespace v1

class TableFileReader;

// Holds the exclusive driver lock of a checkpoint directory until destroyed.
class DriverLock {
 public:
  explicit DriverLock(int fd) : fd_(fd) {}
  ~DriverLock();
  DriverLock(const DriverLock&) = delete;
  DriverLock& operator=(const DriverLock&) = delete;

 private:
  int fd_;
};

// Thread-safe (stateless apart from the directory path).
class CheckpointStore {
 public:
  // Opens (creating if needed) the checkpoint directory `dir`.
  static absl::StatusOr<std::unique_ptr<CheckpointStore>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::string CheckpointDir(uint64_t id) const;
  std::string PartDir(uint64_t id, uint32_t shard) const;
  std::string ManifestPath(uint64_t id) const;

  // Complete checkpoints (a manifest that verifies), ascending. Directories without one are
  // appended to *partial when given.
  absl::StatusOr<std::vector<uint64_t>> List(std::vector<uint64_t>* partial = nullptr) const;
  uint64_t NewestOrZero() const;

  // NOT_FOUND when the checkpoint has no manifest; DATA_LOSS naming the file when it does not
  // verify.
  absl::Status ReadManifest(uint64_t id, v1::CheckpointManifest* out) const;
  // The manifests of `id`'s chain, the full base first. Errors as ReadManifest.
  absl::StatusOr<std::vector<v1::CheckpointManifest>> ReadChain(uint64_t id) const;

  // The files of table `name` written by `shard` along `chain` (from ReadChain), from the
  // newest full one to the end, oldest first, each verified against the manifest's size and
  // CRC32C. DATA_LOSS naming the file when one is missing or corrupt.
  // With verify_crc false, only the sizes are checked. `threads` files are checked at once.
  absl::StatusOr<std::vector<std::unique_ptr<TableFileReader>>> OpenTableFiles(
      const std::vector<v1::CheckpointManifest>& chain, uint32_t shard, const std::string& name,
      bool verify_crc = true, uint32_t threads = 1) const;

  // Makes the checkpoint visible: writes its MANIFEST last, atomically and durably.
  absl::Status Publish(const v1::CheckpointManifest& manifest) const;

  // Creates the (empty) part directory of `shard` in checkpoint `id`, replacing leftovers.
  absl::Status CreatePartDir(uint64_t id, uint32_t shard) const;
  // Removes a checkpoint directory, complete or not.
  absl::Status Remove(uint64_t id) const;
  // Checkpoints to remove so that the newest `keep` complete ones (0: all) stay restorable:
  // never the base or an increment that a kept checkpoint's chain needs.
  absl::StatusOr<std::vector<uint64_t>> RetentionVictims(size_t keep) const;

  // The exclusive lock of a checkpoint round (flock on <dir>/LOCK). UNAVAILABLE when another
  // driver holds it.
  absl::StatusOr<std::unique_ptr<DriverLock>> LockForDriver() const;

 private:
  explicit CheckpointStore(std::string dir) : dir_(std::move(dir)) {}
  const std::string dir_;
};

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_CHECKPOINT_STORE_H_
