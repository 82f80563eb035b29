// Subcommands of the `tessera` CLI. Each parses nothing itself: tessera_main.cc reads the flags
// once and passes them down.
#ifndef TESSERA_TOOLS_COMMANDS_H_
#define TESSERA_TOOLS_COMMANDS_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/admin.h"
#include "common/credentials.h"
#include "common/table_config.h"

namespace tessera {
namespace v1 {
class JobConfig;
}  // namespace v1
class LocalCluster;

struct LocalCommandOptions {
  int num_servers = 2;  // shards; with replicas > 1, each has that many server processes
  int replicas = 1;     // 1: one server per shard; 2-3: replicated shards
  // fmnist | ctr | lr: tessera-worker processes (and a coordinator) run that built-in job;
  // a path: the job config file; planted-lr: the in-process logistic-regression demo.
  std::string job = "fmnist";
  int workers = 2;                           // tessera-worker processes
  std::string mode;                          // bsp | ssp | async; empty: the job's
  int staleness = 2;                         // with mode ssp
  int threads = 4;                           // planted-lr: training threads
  int epochs = 0;                            // 0: the job's default
  int batch_size = 0;                        // 0: the job's default
  uint64_t features = 20000;                 // planted-lr
  uint64_t train_samples = 2000000;          // planted-lr
  std::string device = "auto";               // auto | cpu | gpu
  std::optional<OptimizerConfig> optimizer;  // unset: the job's
  std::string log_dir;                       // empty: a fresh directory under /tmp
  bool prometheus = false;  // start Debian's Prometheus scraping every daemon (worker jobs)
  double linger_s = 0;      // keep the cluster (and Prometheus) up this long after the job
  // Every daemon with --auth_token_file: fresh random tokens for each role in the log
  // directory, the workers and the CLI presenting theirs (docs/security.md).
  bool secure = false;
  // A tessera-serving replica follows the job's checkpoints (docs/online_serving.md); at the
  // end, the test AUC from its lookups is compared with the trainers'.
  bool serve = false;
  // With serve: this process publishes a version every this many seconds (the job's own
  // step-based checkpoints are off); 0: the job's checkpoints are the versions.
  double publish_interval_s = 0;
};
int RunLocal(const LocalCommandOptions& options);

// `tessera local --serve` (tools/cmd_local_serve.cc).
struct LocalServing;
struct LocalServingDeleter {
  void operator()(LocalServing* s) const;
};
absl::StatusOr<std::unique_ptr<LocalServing, LocalServingDeleter>> StartLocalServing(
    const std::string& checkpoint_dir, const std::string& log_dir, const LocalCluster& cluster,
    double publish_interval_s);
// A last version once training stopped, the replica at it, and the job's test AUC from the
// replica's lookups against the trainers' (printed). False when they differ or a step fails.
bool FinishLocalServing(LocalServing& serving, const v1::JobConfig& job,
                        const LocalCluster& cluster);

// `tessera local-cluster`: a testing/ LocalCluster driven over stdin and stdout, for
// python/tessera/testing.py (the protocol: cmd_local_cluster.cc).
int RunLocalClusterControl();

// `tessera status`: client/admin.h FormatClusterStatus, printed.
int RunStatus(const std::string& coordinator, bool json, const Credentials& credentials);

// `tessera serving status|lookup|rollback|resume` (docs/online_serving.md).
struct ServingCommandOptions {
  std::string action;
  std::vector<std::string> replicas;  // --connect
  Credentials credentials;
  bool json = false;
  std::string table;           // lookup
  std::vector<uint64_t> keys;  // lookup
  uint64_t version = 0;        // lookup (0: served), rollback
};
int RunServing(const ServingCommandOptions& options);

struct BenchCommandOptions {
  std::vector<std::string> connect;  // existing servers; empty: start num_servers locally
  int num_servers = 1;
  bool json = false;
  double seconds_per_workload = 3;
  uint64_t dense_bytes = 4 << 20;
  uint64_t sparse_keys = 100000;
  uint32_t sparse_dim = 16;
  int channels = 4;
  bool data_plane = true;    // bulk calls on the servers' data plane (docs/data_plane.md)
  int data_connections = 0;  // data-plane connections per server (0: the client's default)
  uint64_t chunk_bytes = 512 << 10;
  // Data suite: which workloads run, any of "dense", "pull", "push"; empty: all three.
  std::vector<std::string> workloads;
  bool iperf3 = true;          // measure the loopback baseline with iperf3 when it is installed
  std::string suite = "data";  // data | checkpoint | replication | security
  std::string checkpoint_dir;  // checkpoint suite: where to write (default: a new /tmp dir)
  uint64_t table_mb = 2048;    // checkpoint suite: size of the dense table
  int threads = 8;             // replication suite: client threads pushing at once
  int pause_rounds = 3;        // replication suite: primaries killed (and stalled) per figure
  uint64_t lifecycle_keys = 50'000'000;  // lifecycle suite: new keys streamed
  uint64_t lifecycle_budget_mb = 1024;   // lifecycle suite: the server's --max_memory_bytes
  uint64_t lifecycle_tier_mb = 64;       // lifecycle suite: the tier table's RAM (0: no tier part)
  uint64_t serving_rows = 1'000'000;     // serving suite: rows of the served table
  double serving_publish_s = 2;          // serving suite: seconds between versions (lookups)
  double serving_push_keys_per_s = 50000;  // serving suite: the pusher beside the lookups
  double serving_stale_interval_s = 10;    // serving suite: seconds between versions (staleness)
  int serving_training_nice = 19;          // serving suite: the training side's nice (lookups)
  int serving_threads = 4;                 // serving suite: lookup threads (and Redis connections)
  Credentials credentials;  // connected clusters: a token with the admin and worker roles
  bool secure = false;      // the cluster bench starts: mutual TLS and tokens (docs/security.md)
};
int RunBench(const BenchCommandOptions& options);
int RunCheckpointBench(const BenchCommandOptions& options);
int RunReplicationBench(const BenchCommandOptions& options);
int RunLifecycleBench(const BenchCommandOptions& options);
// Online serving (docs/online_serving.md): lookups of 1,000-key batches with and without
// versions applying, against Redis MGET of the same rows; staleness; rollback; bit-exactness.
int RunServingBench(const BenchCommandOptions& options);

// The path of Tessera binary `name` beside this one (or in ../subdir, the build tree).
std::string SiblingBinary(const std::string& name, const std::string& subdir);

struct CheckpointCommandOptions {
  std::string action;  // create | list | inspect | restore | merge | run
  std::string dir;
  std::vector<std::string> connect;
  std::string coordinator;  // restore: through the coordinator (LOST shards recovered too)
  uint64_t shard_map_epoch = 1;
  uint64_t id = 0;  // inspect/restore/merge: 0 is the newest
  bool full = false;
  size_t keep_last = 0;
  double every_s = 0;
  uint64_t full_every = 10;  // run: every N-th round is a full checkpoint (0: only the first)
  bool verify = false;
  int testing_crash_point = 0;
  Credentials credentials;                                // an admin token (docs/security.md)
  RestoreLifecycle lifecycle = RestoreLifecycle::kMatch;  // restore: a live table's lifecycle
};
int RunCheckpoint(const CheckpointCommandOptions& options);

}  // namespace tessera

#endif  // TESSERA_TOOLS_COMMANDS_H_
