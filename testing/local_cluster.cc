#include "testing/local_cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/internal/coordinator_queries.h"
#include "common/auth.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "proto/cluster.grpc.pb.h"

namespace tessera {
namespace {

// The daemons' flags for the options' token and TLS files.
void AddSecurityFlags(const LocalClusterOptions& o, std::vector<std::string>* args) {
  if (!o.auth_token_file.empty()) args->push_back("--auth_token_file=" + o.auth_token_file);
  if (!o.tls_cert_file.empty()) {
    args->push_back("--tls_cert_file=" + o.tls_cert_file);
    args->push_back("--tls_key_file=" + o.tls_key_file);
  }
  if (!o.tls_ca_file.empty()) args->push_back("--tls_ca_file=" + o.tls_ca_file);
}

// The harness's coordinator queries wait (this long at most) for a coordinator that is not
// reachable yet, such as one just restarted (tests ask right after a restart): a call sent on
// the dead one's connection fails UNAVAILABLE ("Socket closed") and is sent again.
constexpr absl::Duration kQueryTimeout = absl::Seconds(5);
template <typename Fetch>
auto Query(Fetch fetch, const std::shared_ptr<grpc::Channel>& channel) {
  const absl::Time deadline = absl::Now() + kQueryTimeout;
  for (;;) {
    auto r = fetch(channel, std::max(deadline - absl::Now(), absl::Milliseconds(1)), true);
    if (r.ok() || r.status().code() != absl::StatusCode::kUnavailable || absl::Now() >= deadline) {
      return r;
    }
    absl::SleepFor(absl::Milliseconds(20));  // (bounded by the deadline)
  }
}

// Waits until child `pid` exits or `timeout` passes; returns the wait status, or nullopt on
// timeout. Awaits the exit on a pidfd (Linux >= 5.3); polls waitpid only where pidfds are
// unavailable.
std::optional<int> WaitWithTimeout(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  int status = 0;
  while (true) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) break;  // not our child (any more)
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) {
      if (pidfd >= 0) close(pidfd);
      return std::nullopt;
    }
    if (pidfd >= 0) {
      pollfd p{pidfd, POLLIN, 0};
      poll(&p, 1, static_cast<int>(left_ms));
    } else {
      absl::SleepFor(absl::Milliseconds(5));
    }
  }
  if (pidfd >= 0) close(pidfd);
  return status;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("killed by signal ", WTERMSIG(status));
  return "unknown status";
}

// Reads one '\n'-terminated line from fd until `deadline`. Empty on EOF or timeout.
std::string ReadLine(int fd, absl::Time deadline) {
  std::string line;
  char c;
  while (true) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) return "";
    pollfd p{fd, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(left_ms));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return "";
    const ssize_t n = read(fd, &c, 1);
    if (n <= 0) return "";
    if (c == '\n') return line;
    line.push_back(c);
  }
}

}  // namespace

std::string LocalCluster::DefaultServerBinary() {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const auto& candidate : {self.parent_path() / "tessera-server",
                                  self.parent_path().parent_path() / "server" / "tessera-server"}) {
      if (std::filesystem::exists(candidate, ec)) return candidate.string();
    }
  }
  return "tessera-server";
}

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(
    const LocalClusterOptions& options) {
  std::unique_ptr<LocalCluster> cluster(new LocalCluster());
  cluster->options_ = options;
  LocalClusterOptions& o = cluster->options_;
  cluster->pids_.assign(options.num_servers, 0);
  cluster->addresses_.resize(options.num_servers);
  cluster->metrics_ports_.resize(options.num_servers);
  if (o.replication > 0) {
    if (o.num_shards == 0) o.num_shards = std::max<uint32_t>(1, o.num_servers / o.replication);
    if (o.coordinator_binary.empty()) {
      o.coordinator_binary = (std::filesystem::path(o.server_binary).parent_path() / "coordinator" /
                              "tessera-coordinator")
                                 .string();
      std::error_code ec;
      if (!std::filesystem::exists(o.coordinator_binary, ec)) {
        o.coordinator_binary =
            (std::filesystem::path(o.server_binary).parent_path() / "tessera-coordinator").string();
      }
    }
    if (o.state_dir.empty()) {
      char tmpl[] = "/tmp/tessera-coordinator-XXXXXX";
      if (mkdtemp(tmpl) == nullptr) {
        return absl::InternalError(absl::StrCat("mkdtemp: ", strerror(errno)));
      }
      o.state_dir = tmpl;
      cluster->owned_state_dir_ = true;
    }
    if (absl::Status s = cluster->SpawnCoordinator(0, 0); !s.ok()) return s;
  }
  for (uint32_t i = 0; i < options.num_servers; ++i) {
    if (absl::Status s = cluster->Spawn(i, 0, 0, {}); !s.ok()) return s;
  }
  if (o.replication > 0) {
    if (absl::Status s = cluster->WaitForReplicas(o.replicas_timeout); !s.ok()) return s;
  }
  return cluster;
}

absl::Status LocalCluster::RestartServer(int i, const std::vector<std::string>& extra_args) {
  if (pids_[i] != 0) {
    kill(pids_[i], SIGKILL);
    WaitWithTimeout(pids_[i], absl::Seconds(10));
    pids_[i] = 0;
  }
  const std::string& address = addresses_[i];
  int port = 0;
  (void)absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port);
  return Spawn(static_cast<uint32_t>(i), port, metrics_ports_[i], extra_args);
}

std::optional<int> LocalCluster::Reap(int i) {
  if (pids_[i] == 0) return std::nullopt;
  std::optional<int> status = WaitWithTimeout(pids_[i], absl::ZeroDuration());
  if (status.has_value()) pids_[i] = 0;
  return status;
}

namespace {

// Starts `args` (args[0]: the binary) with --ready_fd appended and waits for its ready line.
absl::StatusOr<Spawned> SpawnProcess(std::vector<std::string> args, const std::string& name,
                                     const std::string& log_path, absl::Duration timeout) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", strerror(errno)));
  }
  args.push_back(absl::StrCat("--ready_fd=", fds[1]));
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int log_fd = -1;
  if (!log_path.empty()) {
    log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      close(fds[0]);
      close(fds[1]);
      return absl::InternalError(absl::StrCat("cannot open ", log_path, ": ", strerror(errno)));
    }
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    fcntl(fds[1], F_SETFD, 0);  // keep the ready pipe open across exec
    if (log_fd >= 0) dup2(log_fd, STDERR_FILENO);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  if (log_fd >= 0) close(log_fd);
  if (pid < 0) {
    close(fds[0]);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  Spawned out;
  out.pid = pid;
  const std::string line = ReadLine(fds[0], absl::Now() + timeout);
  close(fds[0]);
  for (absl::string_view field : absl::StrSplit(line, ' ')) {
    if (absl::ConsumePrefix(&field, "port=")) (void)absl::SimpleAtoi(field, &out.port);
    if (absl::ConsumePrefix(&field, "metrics_port=")) {
      (void)absl::SimpleAtoi(field, &out.metrics_port);
    }
  }
  if (out.port <= 0) {
    std::string why = "did not report ready in time";
    if (std::optional<int> st = WaitWithTimeout(pid, absl::Milliseconds(100)); st.has_value()) {
      why = absl::StrCat("exited early with ", DescribeWaitStatus(*st));
    } else {
      kill(pid, SIGKILL);
      WaitWithTimeout(pid, absl::Seconds(10));
    }
    return absl::UnavailableError(
        absl::StrFormat("%s (%s) %s%s", name, args[0], why,
                        log_path.empty() ? "" : absl::StrCat("; see ", log_path)));
  }
  return out;
}

}  // namespace

// A port the kernel does not hand out by itself: below the ephemeral range
// (net.ipv4.ip_local_port_range), tested free by a bind. A process started there and killed
// can then be restarted at the same address: with a port from the ephemeral range (--port=0),
// a connection of another test running beside it could be given the freed port meanwhile
// ("Address already in use" at the restart). 0 when none is found: the kernel chooses.
int PickPort() {
  static absl::Mutex mu(absl::kConstInit);
  static std::mt19937_64 rng(static_cast<uint64_t>(getpid()) * 0x9E3779B97F4A7C15ull ^
                             static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())));
  int ephemeral_low = 32768;
  if (FILE* f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r"); f != nullptr) {
    if (fscanf(f, "%d", &ephemeral_low) != 1) ephemeral_low = 32768;
    fclose(f);
  }
  constexpr int kFirst = 10000;
  if (ephemeral_low - kFirst < 1000) return 0;
  absl::MutexLock lock(&mu);
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int port =
        kFirst + static_cast<int>(rng() % static_cast<uint64_t>(ephemeral_low - kFirst));
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool free = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    close(fd);
    if (free) return port;
  }
  return 0;
}

absl::Status LocalCluster::Spawn(uint32_t i, int port, int metrics_port,
                                 const std::vector<std::string>& more_args) {
  if (port != 0) return SpawnAt(i, port, metrics_port, more_args);
  // A first start: ports of our choosing (above), tried again with others should another
  // process take one between the test and the server's bind (the server exits at once).
  absl::Status st;
  for (int attempt = 0; attempt < 3; ++attempt) {
    st = SpawnAt(i, PickPort(), metrics_port != 0 ? metrics_port : PickPort(), more_args);
    if (st.ok() || !absl::StrContains(st.message(), "exited early")) return st;
  }
  return st;
}

absl::Status LocalCluster::SpawnAt(uint32_t i, int port, int metrics_port,
                                   const std::vector<std::string>& more_args) {
  const LocalClusterOptions& options = options_;
  std::vector<std::string> args = {options.server_binary};
  if (options.replication == 0) {
    args.push_back(absl::StrCat("--shard_index=", i));
    args.push_back(absl::StrCat("--num_shards=", options.num_servers));
    args.push_back(absl::StrCat("--shard_map_epoch=", options.shard_map_epoch));
  } else {
    args.push_back(absl::StrCat("--coordinator=", coordinator_address_));
  }
  args.push_back(absl::StrCat("--num_vshards=", options.num_vshards));
  args.push_back(absl::StrCat("--port=", port));
  args.push_back(absl::StrCat("--metrics_port=", metrics_port));
  AddSecurityFlags(options, &args);
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  args.insert(args.end(), more_args.begin(), more_args.end());
  const std::string log_path =
      options.log_dir.empty() ? "" : absl::StrCat(options.log_dir, "/server-", i, ".log");
  absl::StatusOr<Spawned> p =
      SpawnProcess(std::move(args), absl::StrCat("server ", i), log_path, options.start_timeout);
  if (!p.ok()) return p.status();
  pids_[i] = p->pid;
  addresses_[i] = absl::StrCat("127.0.0.1:", p->port);
  metrics_ports_[i] = p->metrics_port;
  return absl::OkStatus();
}

absl::Status LocalCluster::SpawnCoordinator(int port, int metrics_port) {
  if (port == 0) {
    absl::Status st;
    for (int attempt = 0; attempt < 3; ++attempt) {
      st = SpawnCoordinatorAt(PickPort(), metrics_port != 0 ? metrics_port : PickPort());
      if (st.ok() || !absl::StrContains(st.message(), "exited early")) return st;
    }
    return st;
  }
  return SpawnCoordinatorAt(port, metrics_port);
}

absl::Status LocalCluster::SpawnCoordinatorAt(int port, int metrics_port) {
  const LocalClusterOptions& o = options_;
  std::vector<std::string> args = {
      o.coordinator_binary,
      absl::StrCat("--port=", port),
      absl::StrCat("--metrics_port=", metrics_port),
      absl::StrCat("--state_dir=", o.state_dir),
      absl::StrCat("--num_shards=", o.num_shards),
      absl::StrCat("--replication=", o.replication),
      absl::StrCat("--num_vshards=", o.num_vshards),
  };
  AddSecurityFlags(o, &args);
  args.insert(args.end(), o.coordinator_args.begin(), o.coordinator_args.end());
  const std::string log_path = o.log_dir.empty() ? "" : absl::StrCat(o.log_dir, "/coordinator.log");
  absl::StatusOr<Spawned> p =
      SpawnProcess(std::move(args), "coordinator", log_path, o.start_timeout);
  if (!p.ok()) return p.status();
  coordinator_pid_ = p->pid;
  coordinator_address_ = absl::StrCat("127.0.0.1:", p->port);
  if (coordinator_channel_ == nullptr) {  // (a restart keeps the port: the channel reconnects)
    coordinator_channel_ = MakeChannel(coordinator_address_, ClientCredentials(kRoleAdmin));
  }
  coordinator_metrics_port_ = p->metrics_port;
  return absl::OkStatus();
}

void LocalCluster::KillServer(int i) {
  if (pids_[i] == 0) return;
  kill(pids_[i], SIGKILL);
  WaitWithTimeout(pids_[i], absl::Seconds(10));
  pids_[i] = 0;
}

void LocalCluster::KillCoordinator() {
  if (coordinator_pid_ == 0) return;
  kill(coordinator_pid_, SIGKILL);
  WaitWithTimeout(coordinator_pid_, absl::Seconds(10));
  coordinator_pid_ = 0;
}

absl::Status LocalCluster::RestartCoordinator() {
  KillCoordinator();
  int port = 0;
  (void)absl::SimpleAtoi(coordinator_address_.substr(coordinator_address_.rfind(':') + 1), &port);
  return SpawnCoordinator(port, coordinator_metrics_port_);
}

absl::StatusOr<int> LocalCluster::AddServer() {
  const int i = static_cast<int>(pids_.size());
  pids_.push_back(0);
  addresses_.emplace_back();
  metrics_ports_.push_back(0);
  if (absl::Status s = Spawn(static_cast<uint32_t>(i), 0, 0, {}); !s.ok()) return s;
  return i;
}

Credentials LocalCluster::ClientCredentials(RoleSet roles) const {
  Credentials c;
  c.tls_ca_file = options_.tls_ca_file;
  c.tls_cert_file = options_.tls_cert_file;
  c.tls_key_file = options_.tls_key_file;
  if (!options_.auth_token_file.empty()) {
    absl::StatusOr<std::string> token = ReadClientToken(options_.auth_token_file, roles);
    if (token.ok()) c.auth_token = *token;
  }
  return c;
}

int LocalCluster::IndexOf(const std::string& address) const {
  for (size_t i = 0; i < addresses_.size(); ++i) {
    if (addresses_[i] == address) return static_cast<int>(i);
  }
  return -1;
}

absl::Status LocalCluster::WaitForReplicas(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no answer";
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::ClusterMap> m =
        Query(client_internal::FetchClusterMap, coordinator_channel_);
    if (m.ok()) {
      bool complete = true;
      for (int s = 0; s < m->shards_size(); ++s) {
        int live = 0;
        for (const auto& r : m->shards(s).replicas()) live += r.state() == v1::REPLICA_STATE_LIVE;
        if (m->shards(s).lost()) {
          complete = false;
          last = absl::StrFormat("shard %d is not serving (state %d)", s, m->shards(s).state());
        } else if (live != m->shards(s).replicas_size() ||
                   live < static_cast<int>(m->replication())) {
          complete = false;
          last = absl::StrFormat("shard %d has %d LIVE of %d replicas (want %u)", s, live,
                                 m->shards(s).replicas_size(), m->replication());
        }
      }
      if (complete) return absl::OkStatus();
    } else {
      last = m.status().ToString();
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("the cluster did not reach full replication in time: ", last));
}

absl::StatusOr<std::vector<int>> LocalCluster::ReplicasOf(uint32_t shard) {
  absl::StatusOr<v1::ClusterMap> m = Query(client_internal::FetchClusterMap, coordinator_channel_);
  if (!m.ok()) return m.status();
  if (shard >= static_cast<uint32_t>(m->shards_size())) {
    return absl::InvalidArgumentError(absl::StrCat("no shard ", shard));
  }
  std::vector<int> out;
  if (m->shards(shard).lost()) return out;  // (LOST or RESTORING)
  for (const auto& r : m->shards(shard).replicas()) out.push_back(IndexOf(r.address()));
  return out;
}

absl::StatusOr<std::vector<LocalCluster::ReplicaState>> LocalCluster::ReplicaStates(
    uint32_t shard) {
  absl::StatusOr<v1::GetClusterStatusResponse> st =
      Query(client_internal::FetchClusterStatus, coordinator_channel_);
  if (!st.ok()) return st.status();
  if (shard >= static_cast<uint32_t>(st->map().shards_size())) {
    return absl::InvalidArgumentError(absl::StrCat("no shard ", shard));
  }
  std::vector<ReplicaState> out;
  if (st->map().shards(shard).lost()) return out;  // (LOST or RESTORING)
  for (const auto& r : st->map().shards(shard).replicas()) {
    bool current = false;
    for (const v1::MemberInfo& m : st->members()) {
      current |= m.alive() && m.status().address() == r.address() &&
                 m.status().incarnation() == r.incarnation();
    }
    out.push_back({IndexOf(r.address()), r.state() == v1::REPLICA_STATE_LIVE, current});
  }
  return out;
}

absl::StatusOr<uint64_t> LocalCluster::MemberIncarnation(int i) {
  absl::StatusOr<v1::GetClusterStatusResponse> st =
      Query(client_internal::FetchClusterStatus, coordinator_channel_);
  if (!st.ok()) return st.status();
  for (const v1::MemberInfo& m : st->members()) {
    if (m.status().address() == addresses_[i]) return m.status().incarnation();
  }
  return uint64_t{0};
}

absl::StatusOr<std::string> LocalCluster::ShardState(uint32_t shard) {
  absl::StatusOr<v1::ClusterMap> m = Query(client_internal::FetchClusterMap, coordinator_channel_);
  if (!m.ok()) return m.status();
  if (shard >= static_cast<uint32_t>(m->shards_size())) {
    return absl::InvalidArgumentError(absl::StrCat("no shard ", shard));
  }
  const v1::ShardReplicas& r = m->shards(shard);
  switch (r.state() == v1::SHARD_STATE_UNSPECIFIED && r.lost() ? v1::SHARD_STATE_LOST : r.state()) {
    case v1::SHARD_STATE_LOST:
      return std::string("lost");
    case v1::SHARD_STATE_RESTORING:
      return std::string("restoring");
    default:
      return std::string("serving");
  }
}

absl::StatusOr<uint64_t> LocalCluster::Epoch() {
  absl::StatusOr<v1::ClusterMap> m = Query(client_internal::FetchClusterMap, coordinator_channel_);
  if (!m.ok()) return m.status();
  return m->epoch();
}

absl::StatusOr<int> LocalCluster::StopServer(int i, absl::Duration timeout) {
  const pid_t pid = pids_[i];
  if (pid == 0) return absl::FailedPreconditionError(absl::StrCat("server ", i, " is not running"));
  kill(pid, SIGTERM);
  std::optional<int> status = WaitWithTimeout(pid, timeout);
  if (!status.has_value()) {
    kill(pid, SIGKILL);
    WaitWithTimeout(pid, absl::Seconds(10));
    pids_[i] = 0;
    return absl::DeadlineExceededError(absl::StrFormat(
        "server %d did not exit within %s of SIGTERM; killed", i, absl::FormatDuration(timeout)));
  }
  pids_[i] = 0;
  if (WIFEXITED(*status)) return WEXITSTATUS(*status);
  return absl::InternalError(absl::StrFormat("server %d: %s", i, DescribeWaitStatus(*status)));
}

absl::Status LocalCluster::Stop(absl::Duration timeout) {
  for (pid_t pid : pids_) {
    if (pid != 0) kill(pid, SIGTERM);
  }
  if (coordinator_pid_ != 0) {
    kill(coordinator_pid_, SIGTERM);
    WaitWithTimeout(coordinator_pid_, timeout);
    coordinator_pid_ = 0;
  }
  std::string errors;
  for (size_t i = 0; i < pids_.size(); ++i) {
    if (pids_[i] == 0) continue;
    absl::StatusOr<int> code = StopServer(static_cast<int>(i), timeout);
    if (!code.ok()) {
      absl::StrAppend(&errors, code.status().message(), "; ");
    } else if (*code != 0) {
      absl::StrAppend(&errors, "server ", i, " exited with code ", *code, "; ");
    }
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::InternalError(errors);
}

LocalCluster::~LocalCluster() {
  for (pid_t& pid : pids_) {
    if (pid == 0) continue;
    kill(pid, SIGCONT);  // a stopped process cannot die
    kill(pid, SIGKILL);
    WaitWithTimeout(pid, absl::Seconds(10));
    pid = 0;
  }
  KillCoordinator();
  if (owned_state_dir_) {
    std::error_code ec;
    std::filesystem::remove_all(options_.state_dir, ec);
  }
}

absl::StatusOr<std::vector<std::string>> ConnectOrStart(const std::vector<std::string>& connect,
                                                        uint32_t num_servers,
                                                        std::vector<std::string> extra_args,
                                                        std::unique_ptr<LocalCluster>* owned) {
  if (!connect.empty()) return connect;
  LocalClusterOptions o;
  o.server_binary = LocalCluster::DefaultServerBinary();
  o.num_servers = num_servers;
  o.extra_args = std::move(extra_args);
  absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(o);
  if (!c.ok()) return c.status();
  *owned = std::move(*c);
  return (*owned)->addresses();
}

absl::StatusOr<Spawned> SpawnDaemon(std::vector<std::string> args, const std::string& name,
                                    const std::string& log_path, absl::Duration timeout) {
  return SpawnProcess(std::move(args), name, log_path, timeout);
}

pid_t SpawnChild(std::vector<std::string> args, int out_fd) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    if (out_fd >= 0) {
      dup2(out_fd, STDOUT_FILENO);
      dup2(out_fd, STDERR_FILENO);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

int WaitChild(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (true) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (r < 0) return -1;
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

absl::StatusOr<bool> CheckHealth(const std::string& address, absl::Duration timeout,
                                 const std::string& service, const Credentials& credentials) {
  if (absl::Status s = CheckCredentials(credentials); !s.ok()) return s;
  grpc::GenericStub stub(MakeChannel(address, credentials));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  // grpc.health.v1.HealthCheckRequest{service}: field 1, length-delimited (empty: no bytes).
  std::string bytes_out;
  if (!service.empty()) {
    bytes_out.push_back(0x0a);
    bytes_out.push_back(static_cast<char>(service.size()));  // (names are < 128 bytes)
    bytes_out += service;
  }
  grpc::Slice slice(bytes_out);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::DataLossError("unreadable health response");
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status = 1 (SERVING)} is the two bytes 08 01.
  return bytes == std::string("\x08\x01", 2);
}

}  // namespace tessera
