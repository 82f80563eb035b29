// Starts and stops real tessera-server processes on this machine (127.0.0.1, free ports). Used
// by `tessera local`, `tessera bench` and the multi-process tests.
#ifndef TESSERA_TESTING_LOCAL_CLUSTER_H_
#define TESSERA_TESTING_LOCAL_CLUSTER_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth.h"
#include "common/credentials.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace tessera {

struct LocalClusterOptions {
  // Path of the tessera-server binary. Required.
  std::string server_binary;
  uint32_t num_servers = 2;
  uint32_t num_vshards = 1024;
  uint64_t shard_map_epoch = 1;
  // Extra flags for every server, e.g. "--testing_fail_push_after_apply_every=3".
  std::vector<std::string> extra_args;
  // Where server i writes its log (server-i.log); empty: servers inherit stderr.
  std::string log_dir;
  // How long to wait for each server's ready line.
  absl::Duration start_timeout = absl::Seconds(60);
  // Token file for every daemon (--auth_token_file, docs/security.md); the harness's own
  // queries present its first admin token. Empty: no authentication.
  std::string auth_token_file;
  // TLS files for every daemon (--tls_cert_file, --tls_key_file, --tls_ca_file); the harness's
  // own queries present the same certificate and trust the same CA. Empty: plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_ca_file;

  // Replication (docs/replication.md). 0: static shards, one server each, no coordinator.
  // 1..3: tessera-coordinator starts first and places the num_servers servers into num_shards
  // shards of `replication` replicas (default num_shards: num_servers / replication; servers
  // beyond num_shards * replication are spares).
  uint32_t replication = 0;
  uint32_t num_shards = 0;
  std::string coordinator_binary;             // default: tessera-coordinator beside server_binary
  std::vector<std::string> coordinator_args;  // e.g. "--lease_ms=1000"
  std::string state_dir;  // the coordinator's; default: a new directory under /tmp
  // Start() returns once every shard has `replication` LIVE replicas.
  absl::Duration replicas_timeout = absl::Seconds(60);
};

// A cluster of tessera-server child processes. The servers die with the parent process
// (PR_SET_PDEATHSIG) even if it crashes. Thread-compatible.
class LocalCluster {
 public:
  // Starts the servers and waits until each reports that it serves.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const LocalClusterOptions& options);
  ~LocalCluster();  // kills what is still running

  // "127.0.0.1:port" of each server, in shard order.
  const std::vector<std::string>& addresses() const { return addresses_; }
  const std::vector<int>& metrics_ports() const { return metrics_ports_; }
  pid_t pid(int i) const { return pids_[i]; }

  // Sends SIGTERM to server i and waits (up to `timeout`) for it to exit. Returns its exit
  // code; DEADLINE_EXCEEDED (and SIGKILL) when it does not exit in time.
  absl::StatusOr<int> StopServer(int i, absl::Duration timeout = absl::Seconds(30));
  // SIGTERM to all, then waits; an error names every server that did not exit with 0.
  absl::Status Stop(absl::Duration timeout = absl::Seconds(30));

  // Starts server i again on its old ports (killing it first if it still runs), with
  // extra_args added to its flags. Waits until it serves.
  absl::Status RestartServer(int i, const std::vector<std::string>& extra_args = {});
  // SIGKILL to server i (a crash); returns once it is reaped.
  void KillServer(int i);
  // The wait status of server i if it has exited (it is then no longer running), else nullopt.
  std::optional<int> Reap(int i);

  // The options' token file (empty: no authentication).
  const std::string& auth_token_file() const { return options_.auth_token_file; }
  // What a client of this cluster presents: the TLS files (when the daemons use TLS) and, when
  // the daemons check tokens, the first token with every role of `roles`.
  Credentials ClientCredentials(RoleSet roles) const;

  // Finds tessera-server next to the running executable (or on PATH as a fallback).
  static std::string DefaultServerBinary();

  // ---- With replication ----
  const std::string& coordinator_address() const { return coordinator_address_; }
  int coordinator_metrics_port() const { return coordinator_metrics_port_; }
  pid_t coordinator_pid() const { return coordinator_pid_; }
  // SIGKILL to the coordinator (its state stays in state_dir).
  void KillCoordinator();
  // Starts the coordinator again on its old port with its state.
  absl::Status RestartCoordinator();
  // Starts one more server (a spare until the coordinator places it); returns its index.
  absl::StatusOr<int> AddServer();
  // Waits until every shard has `replication` LIVE replicas and none joining.
  absl::Status WaitForReplicas(absl::Duration timeout);
  // The servers of `shard` as the coordinator's map has them: indices, the primary first
  // (-1: a server this cluster did not start); empty while the shard is LOST or RESTORING.
  absl::StatusOr<std::vector<int>> ReplicasOf(uint32_t shard);
  // The same with each one's state: LIVE (else JOINING), and whether the entry names the
  // process the coordinator knows at that address now, with an unexpired lease (a crashed
  // and restarted server's old entry does not, once the coordinator heard the new process).
  struct ReplicaState {
    int index;
    bool live;
    bool current;
  };
  absl::StatusOr<std::vector<ReplicaState>> ReplicaStates(uint32_t shard);
  // The incarnation of the process the coordinator knows at server i's address (0: none).
  absl::StatusOr<uint64_t> MemberIncarnation(int i);
  // "serving", "lost" or "restoring".
  absl::StatusOr<std::string> ShardState(uint32_t shard);
  // The coordinator's shard-map epoch.
  absl::StatusOr<uint64_t> Epoch();
  int IndexOf(const std::string& address) const;

 private:
  LocalCluster() = default;
  // Starts server i (port 0: any free one) and waits for its ready line.
  absl::Status Spawn(uint32_t i, int port, int metrics_port,
                     const std::vector<std::string>& more_args);
  absl::Status SpawnCoordinator(int port, int metrics_port);
  // The same at exactly these ports (0: the kernel's choice).
  absl::Status SpawnAt(uint32_t i, int port, int metrics_port,
                       const std::vector<std::string>& more_args);
  absl::Status SpawnCoordinatorAt(int port, int metrics_port);

  LocalClusterOptions options_;
  std::vector<pid_t> pids_;  // 0 once reaped
  std::vector<std::string> addresses_;
  std::vector<int> metrics_ports_;
  pid_t coordinator_pid_ = 0;
  std::string coordinator_address_;
  int coordinator_metrics_port_ = -1;
  bool owned_state_dir_ = false;
  std::shared_ptr<grpc::Channel> coordinator_channel_;  // for the map queries above
};

// The servers a tool should talk to: `connect` when it is not empty, else those of a new
// local cluster of `num_servers` (with `extra_args`), which *owned then holds.
absl::StatusOr<std::vector<std::string>> ConnectOrStart(const std::vector<std::string>& connect,
                                                        uint32_t num_servers,
                                                        std::vector<std::string> extra_args,
                                                        std::unique_ptr<LocalCluster>* owned);

// A free loopback port below the ephemeral range (a daemon killed there can be restarted at
// the same address without another process having been handed the port); 0 when none.
int PickPort();

// A daemon started by SpawnDaemon.
struct Spawned {
  pid_t pid = 0;
  int port = 0;
  int metrics_port = 0;
};
// Starts daemon `args` (args[0]: the binary; --ready_fd is appended) with its stderr appended to
// `log_path` (empty: inherited), and waits at most `timeout` for its ready line. The child
// dies with this process.
absl::StatusOr<Spawned> SpawnDaemon(std::vector<std::string> args, const std::string& name,
                                    const std::string& log_path, absl::Duration timeout);

// Starts `args` (args[0]: the binary) with stdout and stderr into `out_fd` (-1: inherited); the
// child dies with this process (PR_SET_PDEATHSIG). Returns its pid, or -1.
pid_t SpawnChild(std::vector<std::string> args, int out_fd);
// The exit code of child `pid`, waiting at most `timeout`; -1 when it was killed by a signal,
// or did not exit in time (it is then SIGKILLed and reaped).
int WaitChild(pid_t pid, absl::Duration timeout);

// Asks the standard gRPC health service at `address` about `service` ("": the whole server).
// Returns true for SERVING, false for any other answer; an error when it cannot be asked
// (NOT_FOUND for a service the server does not know).
absl::StatusOr<bool> CheckHealth(const std::string& address,
                                 absl::Duration timeout = absl::Seconds(5),
                                 const std::string& service = "",
                                 const Credentials& credentials = {});

}  // namespace tessera

#endif  // TESSERA_TESTING_LOCAL_CLUSTER_H_
