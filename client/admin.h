// The admin client: a cluster's primaries and status, checkpoint rounds (docs/checkpoints.md,
// "The round"), restores and merges. Used by the `tessera` CLI, tessera-worker, the Python
// module and the tests; the coordinator will host the checkpoint driver later. Proto-free.
#ifndef TESSERA_CLIENT_ADMIN_H_
#define TESSERA_CLIENT_ADMIN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/credentials.h"

namespace tessera {

// The primary of every shard in the map of the coordinator at `coordinator`, in shard order;
// an error when a shard has none.
// Every function here presents `credentials` (docs/security.md: the admin role; the shard map
// alone needs any role).
absl::StatusOr<std::vector<std::string>> PrimaryAddresses(const std::string& coordinator,
                                                          const Credentials& credentials = {});

// `tessera status`'s report of the cluster of the coordinator at `coordinator`: servers, each
// shard's replicas with their state and lag, the tables; as text or (json) one JSON object.
absl::StatusOr<std::string> FormatClusterStatus(const std::string& coordinator, bool json,
                                                const Credentials& credentials = {});

struct CheckpointDriverOptions {
  std::string dir;                   // the checkpoint directory the servers use
  std::vector<std::string> servers;  // in shard order
  uint64_t shard_map_epoch = 1;
  bool incremental = true;  // incremental on the newest checkpoint when every server can
  size_t keep_last = 0;     // retention after a successful round; 0 keeps everything
  absl::Duration rpc_timeout = absl::Hours(1);
  Credentials credentials;  // an admin token
  // Fault injection for tests: SIGKILL the driver after every part is written but before the
  // manifest (1), or after MANIFEST.tmp is written but before its rename (2).
  int testing_crash_point = 0;
};

struct CheckpointRoundResult {
  uint64_t id = 0;
  uint64_t parent_id = 0;  // 0: full
  double seconds = 0;
  uint64_t rows = 0;
  uint64_t bytes = 0;
  double max_cut_seconds = 0;             // longest update-gate hold of any server's cut
  std::vector<uint64_t> removed_partial;  // partial checkpoints cleaned up first
  std::vector<uint64_t> removed_by_retention;
};

// One round: lock, clean up partial checkpoints, every server writes its part, publish,
// retention. On any failure nothing becomes visible and the partial directory is removed.
absl::StatusOr<CheckpointRoundResult> RunCheckpointRound(const CheckpointDriverOptions& options);

struct RestoreResult {
  uint64_t id = 0;
  uint64_t rows = 0;
  uint64_t bytes = 0;
  double seconds = 0;
};

// Every server replaces its tables with checkpoint `id` (0: the newest), in two phases: all
// load it beside their live tables (checking every block's checksum), then all swap; if any
// load fails, none swaps. Stop training first: each server swaps atomically, but not all at
// the same instant. Needs memory for both copies while it runs.
// A live table whose lifecycle differs from the checkpoint's: refused (kMatch), restored with
// the checkpoint's (kCheckpoint) or with the live one's (kLive; both with or both without a
// lifecycle). docs/embedding_lifecycle.md.
enum class RestoreLifecycle { kMatch, kCheckpoint, kLive };
absl::StatusOr<RestoreLifecycle> ParseRestoreLifecycle(absl::string_view name);
absl::StatusOr<RestoreResult> RestoreCluster(const std::string& dir,
                                             const std::vector<std::string>& servers,
                                             uint64_t shard_map_epoch, uint64_t id,
                                             absl::Duration timeout = absl::Hours(1),
                                             const Credentials& credentials = {},
                                             RestoreLifecycle lifecycle = RestoreLifecycle::kMatch);

// The runbook for a replicated cluster (docs/operations.md, "A shard is lost"): restores
// checkpoint `id` (0: the newest) into the cluster of the coordinator at `coordinator`. Every
// LOST shard first gets a server to restore onto (the coordinator picks an alive server
// without a shard, at any address: start one first), then every shard's primary restores in
// two phases as RestoreCluster does, then the recovered shards serve again and gain backups.
// Safe to run again after an interruption. Updates after the checkpoint are gone.
struct ClusterRestoreResult {
  RestoreResult restore;
  std::vector<uint32_t> recovered_shards;  // were LOST or RESTORING
};
absl::StatusOr<ClusterRestoreResult> RestoreThroughCoordinator(
    const std::string& coordinator, const std::string& dir, uint64_t id,
    absl::Duration timeout = absl::Minutes(10), const Credentials& credentials = {},
    RestoreLifecycle lifecycle = RestoreLifecycle::kMatch);

// Checks every file of checkpoint `id`'s chain against the manifests (size and CRC32C);
// returns the number of files, or DATA_LOSS naming the first bad one.
absl::StatusOr<size_t> VerifyCheckpoint(const std::string& dir, uint64_t id);

// Offline: writes checkpoint `id`'s chain as a new full checkpoint (same shard layout) and
// returns its id.
absl::StatusOr<uint64_t> MergeCheckpointChain(const std::string& dir, uint64_t id);

}  // namespace tessera

#endif  // TESSERA_CLIENT_ADMIN_H_
