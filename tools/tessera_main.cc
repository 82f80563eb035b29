// tessera: the command-line tool. `tessera local` runs a whole cluster and a training demo on
// this machine; `tessera bench` measures a cluster.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "client/admin.h"
#include "common/auth.h"
#include "common/grpc_channel.h"
#include "common/process_setup.h"
#include "testing/local_cluster.h"
#include "tools/commands.h"

// tessera local
ABSL_FLAG(int, servers, 2,
          "local: number of shards, each a tessera-server process (times --replicas).");
ABSL_FLAG(int, replicas, 1,
          "local: replicas per shard; 2 or 3 also starts tessera-coordinator and replicates "
          "every push (docs/replication.md).");
ABSL_FLAG(std::string, job, "fmnist",
          "local: fmnist (the Fashion-MNIST MLP), ctr (the embedding + MLP model on synthetic "
          "CTR data), lr (logistic regression on the same data), a job config file "
          "(*.textproto, docs/worker.md), or planted-lr (the in-process demo).");
ABSL_FLAG(int, workers, 2, "local: tessera-worker processes.");
ABSL_FLAG(std::string, mode, "", "local: bsp, ssp or async (default: the job's, bsp).");
ABSL_FLAG(int, staleness, 2, "local: the SSP bound with --mode=ssp.");
ABSL_FLAG(int, threads, 4, "local, planted-lr: training threads.");
ABSL_FLAG(int, epochs, 0, "local: passes over the training data (0: the job's default).");
ABSL_FLAG(int, batch_size, 0, "local: examples per step and worker (0: the job's default).");
ABSL_FLAG(uint64_t, features, 20000, "local, planted-lr: features of the synthetic problem.");
ABSL_FLAG(uint64_t, train_samples, 2000000, "local, planted-lr: training samples.");
ABSL_FLAG(std::string, device, "auto",
          "local: forward/backward on 'cpu', 'gpu' or 'auto' (GPU paths: lr, planted-lr).");
ABSL_FLAG(std::string, optimizer, "",
          "local: sgd, momentum, adagrad, adam or ftrl (default: the job's).");
ABSL_FLAG(float, learning_rate, 0.1f, "local: the optimizer's learning rate, with --optimizer.");
ABSL_FLAG(bool, secure, false,
          "local: every daemon checks tokens (fresh random ones per role, in the log directory; "
          "docs/security.md).");
ABSL_FLAG(bool, prometheus, false,
          "local: also start Debian's Prometheus, scraping every daemon (and the alert rules "
          "of deploy/ when run from a build tree); its URL is printed.");
ABSL_FLAG(double, linger_s, 0,
          "local: keep the cluster (and Prometheus) running this long after the job.");
ABSL_FLAG(std::string, log_dir, "", "local: where server logs go (default: a new /tmp dir).");
// tessera bench
ABSL_FLAG(std::string, connect, "",
          "bench: comma-separated host:port of running servers, in shard order; empty starts "
          "--bench_servers local servers.");
ABSL_FLAG(int, bench_servers, 1, "bench: servers to start when --connect is empty.");
ABSL_FLAG(bool, json, false, "bench, status: print JSON.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "status, checkpoint, bench (--connect): TLS, verifying the daemons with this CA "
          "(docs/security.md); empty: plaintext.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "with --tls_ca_file: this client's certificate, for daemons that require mutual TLS.");
ABSL_FLAG(std::string, tls_key_file, "", "with --tls_cert_file: its key.");
ABSL_FLAG(std::string, address, "", "health: host:port of the daemon.");
ABSL_FLAG(std::string, service, "", "health: the service to ask about (empty: the daemon).");
ABSL_FLAG(bool, metrics_tls, false,
          "status: read the daemons' /metrics over HTTPS, verified with --tls_ca_file.");
ABSL_FLAG(std::string, metrics_basic_auth_file, "",
          "status: the daemons' /metrics basic authentication file ('USER PASSWORD' lines: the "
          "first is used).");
ABSL_FLAG(std::string, auth_token_file, "",
          "status, checkpoint, bench (--connect): the token to present (docs/security.md): a "
          "file with the token alone, or the daemons' 'ROLE TOKEN' file (the first token with "
          "the roles the command needs: admin; bench: admin and worker).");
ABSL_FLAG(double, seconds, 3.0, "bench: measuring time per workload.");
ABSL_FLAG(uint64_t, dense_bytes, 4 << 20, "bench: size of the dense tensor.");
ABSL_FLAG(uint64_t, sparse_keys, 100000, "bench: keys per sparse pull/push.");
ABSL_FLAG(uint32_t, sparse_dim, 16, "bench: floats per sparse row.");
ABSL_FLAG(int, channels, 4, "bench: client channels (TCP connections) per server.");
ABSL_FLAG(std::string, transport, "data",
          "bench: how bulk calls travel: data (the servers' data plane, docs/data_plane.md, "
          "falling back to gRPC) or grpc (gRPC only).");
ABSL_FLAG(uint64_t, chunk_bytes, 512 << 10, "bench: client chunk size.");
ABSL_FLAG(int, data_connections, 0,
          "bench: data-plane connections per server (0: the client's default, 16 / servers, "
          "1 to 8).");
ABSL_FLAG(std::string, workloads, "dense,pull,push",
          "bench (data suite): the workloads to run, comma-separated: dense (4 MiB push+pull), "
          "pull (sparse), push (sparse Adagrad).");
ABSL_FLAG(bool, iperf3, true, "bench: also measure loopback with iperf3 as a baseline.");
ABSL_FLAG(std::string, suite, "data",
          "bench: 'data' (pull/push throughput), 'checkpoint' (checkpoint write/restore "
          "against dd, 1% incremental, push pauses), 'replication' (push throughput R=2 vs "
          "R=1, failover pauses), 'security' (the data workloads with mutual TLS and tokens "
          "over plaintext, same run) or 'lifecycle' (a stream of new keys into a table with a "
          "capacity under a memory budget, RSS sampled; resident push throughput against a "
          "table without a policy).");
ABSL_FLAG(int, push_threads, 8, "bench --suite=replication: client threads pushing at once.");
ABSL_FLAG(int, pause_rounds, 3,
          "bench --suite=replication: primaries killed (and stalled) for the pause figures.");
ABSL_FLAG(uint64_t, table_mb, 2048, "bench --suite=checkpoint: size of the dense table in MiB.");
ABSL_FLAG(uint64_t, lifecycle_keys, 50'000'000, "bench --suite=lifecycle: new keys streamed.");
ABSL_FLAG(uint64_t, lifecycle_budget_mb, 1024,
          "bench --suite=lifecycle: the server's --max_memory_bytes, in MiB (with "
          "--lifecycle_keys=0: no stream).");
ABSL_FLAG(uint64_t, lifecycle_tier_mb, 64,
          "bench --suite=lifecycle: the disk-tier table's RAM (tier_ram_bytes) in MiB; its "
          "working set is 5 times that (0: no tier part).");
ABSL_FLAG(uint64_t, serving_rows, 1'000'000, "bench --suite=serving: rows of the served table.");
ABSL_FLAG(double, serving_publish_s, 2,
          "bench --suite=serving: seconds between versions while lookups are measured.");
ABSL_FLAG(double, serving_push_keys_per_s, 50000,
          "bench --suite=serving: keys pushed per second while lookups are measured.");
ABSL_FLAG(int, serving_training_nice, 19,
          "bench --suite=serving: nice value of the training side (servers, pusher, checkpoint "
          "rounds) while lookups are measured with versions applying (0: as they are).");
ABSL_FLAG(double, serving_stale_interval_s, 10,
          "bench --suite=serving: seconds between versions while pushes run at full speed "
          "(the staleness figure).");
ABSL_FLAG(int, serving_threads, 4,
          "bench --suite=serving: lookup threads (and Redis connections).");
// tessera status
ABSL_FLAG(std::string, coordinator, "",
          "status, checkpoint: host:port of tessera-coordinator (checkpoint: instead of "
          "--connect, the shards' primaries).");
ABSL_FLAG(bool, serve, false,
          "local: a tessera-serving replica follows the job's checkpoints (versions); at the "
          "end, the CTR job's test AUC from its lookups against the trainers' "
          "(docs/online_serving.md).");
ABSL_FLAG(double, publish_interval_s, 0,
          "local --serve: publish a version every this many seconds from this process (the "
          "job's step checkpoints off); 0: the job's checkpoints are the versions.");
// tessera serving
ABSL_FLAG(std::string, table, "", "serving lookup: the table.");
ABSL_FLAG(std::string, keys, "", "serving lookup: keys, comma-separated.");
ABSL_FLAG(uint64_t, version, 0,
          "serving lookup: the version to read (0: the served one); serving rollback: the "
          "version to serve.");
// tessera checkpoint
ABSL_FLAG(std::string, checkpoint_dir, "", "checkpoint: the servers' --checkpoint_dir.");
ABSL_FLAG(uint64_t, id, 0, "checkpoint inspect/restore/merge: checkpoint id; 0 = newest.");
ABSL_FLAG(bool, full, false, "checkpoint create/run: always write full checkpoints.");
ABSL_FLAG(uint64_t, keep, 0, "checkpoint create/run: keep the newest N checkpoints; 0 = all.");
ABSL_FLAG(double, every_s, 0, "checkpoint run: seconds between rounds.");
ABSL_FLAG(std::string, lifecycle, "match",
          "checkpoint restore: when a live table's lifecycle differs from the checkpoint's: "
          "match (refuse), checkpoint (take the checkpoint's) or live (keep the live one's).");
ABSL_FLAG(uint64_t, full_every, 10,
          "checkpoint run: every N-th round is full (0: only the first), so that --keep can "
          "drop old chains.");
ABSL_FLAG(bool, verify, false, "checkpoint inspect: verify every file's size and CRC32C.");
ABSL_FLAG(uint64_t, shard_map_epoch, 1, "checkpoint: the cluster's shard-map epoch.");
ABSL_FLAG(int, testing_driver_crash_point, 0,
          "TESTING ONLY: SIGKILL the checkpoint driver before (1) or during (2) the manifest.");

namespace {

constexpr char kUsage[] = R"(tessera <command> [flags]

Commands:
  local   start a local cluster (coordinator and servers) and tessera-worker processes that
          train a model (default: an MLP on Fashion-MNIST; --job), print progress, the
          evaluation, server metrics and the cluster's status, then shut down
  bench   measure dense push+pull and sparse pull/push throughput (--json for machines)
  status  the cluster as its coordinator sees it: shards, replicas, lag, tables (--json)
  health  asks a daemon's gRPC health service (--address, --service; the TLS flags): exit 0
          when SERVING (a Kubernetes exec probe for daemons that run TLS)
  checkpoint create|list|inspect|restore|merge|run
          consistent, incremental checkpoints of a running cluster (docs/checkpoints.md)
  serving status|lookup|rollback|resume
          serving replicas (--connect=host:port,...): versions, staleness, tables and
          digests; rows of --table for --keys; roll back to --version (pinned) or resume
          (docs/online_serving.md)
  local-cluster
          servers (and a coordinator) driven over stdin/stdout, for tessera.testing in
          Python (the protocol: tools/cmd_local_cluster.cc)

Run 'tessera --helpfull' for every flag.)";

}  // namespace

// The credentials of the TLS flags and --auth_token_file with `roles`; exits on an error.
tessera::Credentials CredentialsOrExit(tessera::RoleSet roles) {
  tessera::Credentials c;
  c.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  c.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  c.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  c.metrics_tls = absl::GetFlag(FLAGS_metrics_tls);
  absl::Status s = tessera::CheckCredentials(c);
  if (const std::string path = absl::GetFlag(FLAGS_metrics_basic_auth_file);
      s.ok() && !path.empty()) {
    absl::StatusOr<std::string> user = tessera::ReadBasicAuthUser(path);
    if (user.ok()) c.metrics_basic_auth = *user;
    s = user.status();
  }
  if (const std::string path = absl::GetFlag(FLAGS_auth_token_file); s.ok() && !path.empty()) {
    absl::StatusOr<std::string> token = tessera::ReadClientToken(path, roles);
    if (token.ok()) c.auth_token = *token;
    s = token.status();
  }
  if (!s.ok()) {
    std::fprintf(stderr, "tessera: %s\n", s.ToString().c_str());
    std::exit(2);
  }
  return c;
}

int main(int argc, char** argv) {
  tessera::SetUpProcess();
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  const std::string command = args.size() >= 2 ? args[1] : "";
  if (command == "checkpoint" && args.size() == 3) {
    tessera::CheckpointCommandOptions o;
    o.action = args[2];
    o.credentials = CredentialsOrExit(tessera::kRoleAdmin);
    o.dir = absl::GetFlag(FLAGS_checkpoint_dir);
    const std::string connect = absl::GetFlag(FLAGS_connect);
    if (!connect.empty()) o.connect = absl::StrSplit(connect, ',', absl::SkipEmpty());
    if (const std::string c = absl::GetFlag(FLAGS_coordinator);
        !c.empty() && o.action == "restore") {
      o.coordinator = c;  // the runbook: LOST shards get servers, then every shard restores
    } else if (!c.empty()) {
      // A replicated cluster: checkpoints are written by the primaries.
      absl::StatusOr<std::vector<std::string>> primaries =
          tessera::PrimaryAddresses(c, o.credentials);
      if (!primaries.ok()) {
        std::fprintf(stderr, "tessera checkpoint: %s\n", primaries.status().ToString().c_str());
        return 1;
      }
      o.connect = *primaries;
    }
    o.shard_map_epoch = absl::GetFlag(FLAGS_shard_map_epoch);
    o.id = absl::GetFlag(FLAGS_id);
    o.full = absl::GetFlag(FLAGS_full);
    o.keep_last = absl::GetFlag(FLAGS_keep);
    o.every_s = absl::GetFlag(FLAGS_every_s);
    o.full_every = absl::GetFlag(FLAGS_full_every);
    absl::StatusOr<tessera::RestoreLifecycle> lifecycle =
        tessera::ParseRestoreLifecycle(absl::GetFlag(FLAGS_lifecycle));
    if (!lifecycle.ok()) {
      std::fprintf(stderr, "tessera checkpoint: %s\n",
                   std::string(lifecycle.status().message()).c_str());
      return 2;
    }
    o.lifecycle = *lifecycle;
    o.verify = absl::GetFlag(FLAGS_verify);
    o.testing_crash_point = absl::GetFlag(FLAGS_testing_driver_crash_point);
    return tessera::RunCheckpoint(o);
  }
  if (command == "serving" && args.size() == 3) {
    tessera::ServingCommandOptions o;
    o.action = args[2];
    o.credentials =
        CredentialsOrExit(o.action == "rollback" || o.action == "resume"
                              ? tessera::kRoleAdmin
                              : tessera::kRoleReader | tessera::kRoleWorker | tessera::kRoleAdmin);
    o.replicas = absl::StrSplit(absl::GetFlag(FLAGS_connect), ',', absl::SkipEmpty());
    o.json = absl::GetFlag(FLAGS_json);
    o.table = absl::GetFlag(FLAGS_table);
    for (absl::string_view k : absl::StrSplit(absl::GetFlag(FLAGS_keys), ',', absl::SkipEmpty())) {
      uint64_t key;
      if (!absl::SimpleAtoi(k, &key)) {
        std::fprintf(stderr, "tessera serving: --keys: '%s' is not a uint64\n",
                     std::string(k).c_str());
        return 2;
      }
      o.keys.push_back(key);
    }
    o.version = absl::GetFlag(FLAGS_version);
    return tessera::RunServing(o);
  }
  if (args.size() != 2) {
    std::fprintf(stderr, "%s\n", kUsage);
    return 2;
  }
  if (command == "local") {
    tessera::LocalCommandOptions o;
    o.num_servers = absl::GetFlag(FLAGS_servers);
    o.replicas = absl::GetFlag(FLAGS_replicas);
    o.job = absl::GetFlag(FLAGS_job);
    o.workers = absl::GetFlag(FLAGS_workers);
    o.mode = absl::GetFlag(FLAGS_mode);
    o.staleness = absl::GetFlag(FLAGS_staleness);
    o.threads = absl::GetFlag(FLAGS_threads);
    o.epochs = absl::GetFlag(FLAGS_epochs);
    o.batch_size = absl::GetFlag(FLAGS_batch_size);
    o.features = absl::GetFlag(FLAGS_features);
    o.train_samples = absl::GetFlag(FLAGS_train_samples);
    o.device = absl::GetFlag(FLAGS_device);
    if (const std::string name = absl::GetFlag(FLAGS_optimizer); !name.empty()) {
      absl::StatusOr<tessera::OptimizerKind> kind = tessera::ParseOptimizerKind(name);
      if (!kind.ok()) {
        std::fprintf(stderr, "tessera local: %s\n", std::string(kind.status().message()).c_str());
        return 2;
      }
      o.optimizer = tessera::OptimizerConfig{.kind = *kind,
                                             .learning_rate = absl::GetFlag(FLAGS_learning_rate)};
    }
    o.log_dir = absl::GetFlag(FLAGS_log_dir);
    o.prometheus = absl::GetFlag(FLAGS_prometheus);
    o.secure = absl::GetFlag(FLAGS_secure);
    o.serve = absl::GetFlag(FLAGS_serve);
    o.publish_interval_s = absl::GetFlag(FLAGS_publish_interval_s);
    o.linger_s = absl::GetFlag(FLAGS_linger_s);
    return tessera::RunLocal(o);
  }
  if (command == "local-cluster") return tessera::RunLocalClusterControl();
  if (command == "health") {
    const std::string address = absl::GetFlag(FLAGS_address);
    if (address.empty()) {
      std::fprintf(stderr, "tessera health: --address=host:port is required\n");
      return 2;
    }
    absl::StatusOr<bool> serving = tessera::CheckHealth(
        address, absl::Seconds(5), absl::GetFlag(FLAGS_service), CredentialsOrExit(0));
    if (!serving.ok()) {
      std::fprintf(stderr, "tessera health: %s\n", serving.status().ToString().c_str());
      return 1;
    }
    std::printf("%s\n", *serving ? "SERVING" : "NOT_SERVING");
    return *serving ? 0 : 1;
  }
  if (command == "status") {
    return tessera::RunStatus(absl::GetFlag(FLAGS_coordinator), absl::GetFlag(FLAGS_json),
                              CredentialsOrExit(tessera::kRoleAdmin));
  }
  if (command == "bench") {
    tessera::BenchCommandOptions o;
    o.credentials = CredentialsOrExit(tessera::kRoleAdmin | tessera::kRoleWorker);
    const std::string connect = absl::GetFlag(FLAGS_connect);
    if (!connect.empty()) o.connect = absl::StrSplit(connect, ',', absl::SkipEmpty());
    o.num_servers = absl::GetFlag(FLAGS_bench_servers);
    o.json = absl::GetFlag(FLAGS_json);
    o.seconds_per_workload = absl::GetFlag(FLAGS_seconds);
    o.dense_bytes = absl::GetFlag(FLAGS_dense_bytes);
    o.sparse_keys = absl::GetFlag(FLAGS_sparse_keys);
    o.sparse_dim = absl::GetFlag(FLAGS_sparse_dim);
    o.channels = absl::GetFlag(FLAGS_channels);
    const std::string transport = absl::GetFlag(FLAGS_transport);
    if (transport != "data" && transport != "grpc") {
      std::fprintf(stderr, "tessera bench: --transport must be data or grpc, not '%s'\n",
                   transport.c_str());
      return 2;
    }
    o.data_plane = transport == "data";
    o.data_connections = absl::GetFlag(FLAGS_data_connections);
    o.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
    o.workloads = absl::StrSplit(absl::GetFlag(FLAGS_workloads), ',', absl::SkipEmpty());
    for (const std::string& w : o.workloads) {
      if (w != "dense" && w != "pull" && w != "push" && w != "dense_push" && w != "dense_pull") {
        std::fprintf(stderr, "tessera bench: unknown workload '%s' (known: dense, pull, push)\n",
                     w.c_str());
        return 2;
      }
    }
    o.iperf3 = absl::GetFlag(FLAGS_iperf3);
    o.suite = absl::GetFlag(FLAGS_suite);
    o.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
    o.table_mb = absl::GetFlag(FLAGS_table_mb);
    o.threads = absl::GetFlag(FLAGS_push_threads);
    o.pause_rounds = std::max(1, absl::GetFlag(FLAGS_pause_rounds));
    if (o.suite == "checkpoint") return tessera::RunCheckpointBench(o);
    if (o.suite == "replication") return tessera::RunReplicationBench(o);
    o.lifecycle_keys = absl::GetFlag(FLAGS_lifecycle_keys);
    o.lifecycle_budget_mb = absl::GetFlag(FLAGS_lifecycle_budget_mb);
    o.lifecycle_tier_mb = absl::GetFlag(FLAGS_lifecycle_tier_mb);
    if (o.suite == "lifecycle") return tessera::RunLifecycleBench(o);
    o.serving_rows = absl::GetFlag(FLAGS_serving_rows);
    o.serving_publish_s = absl::GetFlag(FLAGS_serving_publish_s);
    o.serving_push_keys_per_s = absl::GetFlag(FLAGS_serving_push_keys_per_s);
    o.serving_stale_interval_s = absl::GetFlag(FLAGS_serving_stale_interval_s);
    o.serving_training_nice = absl::GetFlag(FLAGS_serving_training_nice);
    o.serving_threads = absl::GetFlag(FLAGS_serving_threads);
    if (o.suite == "serving") return tessera::RunServingBench(o);
    if (o.suite != "data" && o.suite != "security") {
      std::fprintf(stderr,
                   "tessera bench: --suite must be data, checkpoint, replication, security, "
                   "lifecycle or serving\n");
      return 2;
    }
    return tessera::RunBench(o);
  }
  std::fprintf(stderr, "tessera: unknown command '%s'\n\n%s\n", command.c_str(), kUsage);
  return 2;
}
