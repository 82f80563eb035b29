// Where a serving replica's versions come from (docs/online_serving.md, "Roles"): complete
// checkpoints in a checkpoint directory, or another serving replica's stream.
#ifndef TESSERA_SERVING_SOURCES_H_
#define TESSERA_SERVING_SOURCES_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/credentials.h"
#include "serving/serving_store.h"

namespace tessera::storage {
class CheckpointStore;
}  // namespace tessera::storage

namespace tessera::serving {

// Complete checkpoint `id` as a version for a replica whose newest version is `held`: per
// table, the increment's rows and tombstones when the checkpoint's parent is the version held
// and every shard wrote the table incrementally, else the table's chain merged in full (the
// store keeps only what differs). Weights only. Errors name the checkpoint, table and file.
absl::StatusOr<VersionDelta> ReadCheckpointVersion(const storage::CheckpointStore& store,
                                                   uint64_t id, const HeldTables& held);

// A thread that feeds a store: by polling a checkpoint directory, or by subscribing to
// upstream serving replicas. Its failures are kept for the status (and logged), never fatal.
class Source {
 public:
  virtual ~Source() = default;
  virtual std::string Describe() const = 0;
  std::string last_error() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t errors_total() const { return errors_.load(); }

 protected:
  void SetError(const std::string& error) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> errors_{0};
};

struct DirectorySourceOptions {
  std::string checkpoint_dir;
  int poll_ms = 1000;
  int apply_nice = 0;  // the applying thread's nice value (lookups go first)
};

struct UpstreamSourceOptions {
  std::vector<std::string> addresses;  // tried in turn
  Credentials credentials;
  int timeout_ms = 5000;  // a stream silent this long is given up
  int retry_ms = 200;     // between attempts
  int apply_nice = 0;
};

absl::StatusOr<std::unique_ptr<Source>> StartDirectorySource(const DirectorySourceOptions& options,
                                                             ServingStore* store);
absl::StatusOr<std::unique_ptr<Source>> StartUpstreamSource(const UpstreamSourceOptions& options,
                                                            ServingStore* store);

}  // namespace tessera::serving

#endif  // TESSERA_SERVING_SOURCES_H_
