// Subcommands of the `tessera` CLI. Each parses nothing itself: tessera_main.cc reads the flags
// once and passes them down.
#ifndef TESSERA_TOOLS_COMMANDS_H_
#define TESSERA_TOOLS_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/table_config.h"

namespace tessera {

struct LocalCommandOptions {
  int num_servers = 2;  // shards; with replicas > 1, each has that many server processes
  int replicas = 1;     // 1: static shards; 2-3: a coordinator and replicated shards
  int threads = 4;
  int epochs = 2;
  int batch_size = 512;
  uint64_t features = 20000;
  uint64_t train_samples = 2000000;
  std::string device = "auto";  // auto | cpu | gpu
  OptimizerConfig optimizer = {.kind = OptimizerKind::kAdagrad, .learning_rate = 0.1f};
  std::string log_dir;  // empty: a fresh directory under /tmp
};
int RunLocal(const LocalCommandOptions& options);

// `tessera status`: the coordinator's view of the cluster, as text or one JSON object.
absl::StatusOr<std::string> FormatClusterStatus(const std::string& coordinator, bool json);
int RunStatus(const std::string& coordinator, bool json);

struct BenchCommandOptions {
  std::vector<std::string> connect;  // existing servers; empty: start num_servers locally
  int num_servers = 1;
  bool json = false;
  double seconds_per_workload = 3;
  uint64_t dense_bytes = 4 << 20;
  uint64_t sparse_keys = 100000;
  uint32_t sparse_dim = 16;
  int channels = 4;
  uint64_t chunk_bytes = 512 << 10;
  bool iperf3 = true;          // measure the loopback baseline with iperf3 when it is installed
  std::string suite = "data";  // data | checkpoint | replication
  std::string checkpoint_dir;  // checkpoint suite: where to write (default: a new /tmp dir)
  uint64_t table_mb = 2048;    // checkpoint suite: size of the dense table
  int threads = 8;             // replication suite: client threads pushing at once
};
int RunBench(const BenchCommandOptions& options);
int RunCheckpointBench(const BenchCommandOptions& options);
int RunReplicationBench(const BenchCommandOptions& options);

struct CheckpointCommandOptions {
  std::string action;  // create | list | inspect | restore | merge | run
  std::string dir;
  std::vector<std::string> connect;
  uint64_t shard_map_epoch = 1;
  uint64_t id = 0;  // inspect/restore/merge: 0 is the newest
  bool full = false;
  size_t keep_last = 0;
  double every_s = 0;
  uint64_t full_every = 10;  // run: every N-th round is a full checkpoint (0: only the first)
  bool verify = false;
  int testing_crash_point = 0;
};
int RunCheckpoint(const CheckpointCommandOptions& options);

}  // namespace tessera

#endif  // TESSERA_TOOLS_COMMANDS_H_
