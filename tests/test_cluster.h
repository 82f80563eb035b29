// Helpers for the multi-process tests: real tessera-server processes on loopback.
#ifndef TESSERA_TESTS_TEST_CLUSTER_H_
#define TESSERA_TESTS_TEST_CLUSTER_H_

#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "client/client.h"
#include "client/worker_clock.h"
#include "testing/local_cluster.h"
#include "testing/local_pki.h"

namespace tessera::testing {

inline std::unique_ptr<LocalCluster> StartCluster(uint32_t num_servers,
                                                  std::vector<std::string> extra_args = {}) {
  LocalClusterOptions o;
  o.server_binary = TESSERA_SERVER_BINARY;  // set by tests/CMakeLists.txt
  o.num_servers = num_servers;
  o.extra_args = std::move(extra_args);
  absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(o);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return std::move(*c);
}

inline std::unique_ptr<Client> Connect(const LocalCluster& cluster, ClientOptions o = {}) {
  o.servers = cluster.addresses();
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return std::move(*c);
}

// With TESSERA_TEST_SECURE set (tests/CMakeLists.txt registers such runs), the coordinated
// clusters below use mutual TLS from a throwaway CA and tokens (docs/security.md), and the
// helpers' clients present theirs: the same tests run, secured.
inline void SecureFromEnvironment(LocalClusterOptions* o) {
  if (std::getenv("TESSERA_TEST_SECURE") == nullptr) return;
  static const std::pair<LocalPki, std::string> material = [] {
    char dir[] = "/tmp/tessera_secure_test_XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    absl::StatusOr<LocalPki> pki = MakeLocalPki(dir);
    INFO(pki.status().ToString());
    REQUIRE(pki.ok());
    const std::string tokens = std::string(dir) + "/tokens";
    std::ofstream(tokens) << "admin job-0123456789abcdef\nworker job-0123456789abcdef\n"
                          << "server server-0123456789abcdef\n";
    return std::make_pair(*pki, tokens);
  }();
  o->tls_ca_file = material.first.ca_file;
  o->tls_cert_file = material.first.cert_file;
  o->tls_key_file = material.first.key_file;
  o->auth_token_file = material.second;
}

// What the helpers' clients of `cluster` present (nothing for an unsecured cluster).
inline Credentials JobCredentials(const LocalCluster& cluster) {
  return cluster.ClientCredentials(kRoleAdmin | kRoleWorker);
}

// The `tessera` CLI's flags for the same credentials ("" for an unsecured cluster).
inline std::string CliSecurityFlags(const LocalCluster& cluster) {
  const Credentials c = JobCredentials(cluster);
  std::string flags;
  if (!c.tls_ca_file.empty()) {
    flags += " --tls_ca_file=" + c.tls_ca_file + " --tls_cert_file=" + c.tls_cert_file +
             " --tls_key_file=" + c.tls_key_file;
  }
  if (!cluster.auth_token_file().empty()) {
    flags += " --auth_token_file=" + cluster.auth_token_file();
  }
  return flags;
}

#ifdef TESSERA_COORDINATOR_BINARY  // (set by tests/CMakeLists.txt for the tests that need it)
// A coordinator and `num_servers` servers it places into `num_shards` shards of `replication`
// replicas (docs/replication.md); returns once every shard has its replicas.
inline std::unique_ptr<LocalCluster> StartCoordinated(
    uint32_t num_servers, uint32_t replication, uint32_t num_shards,
    std::vector<std::string> coordinator_args = {}, std::vector<std::string> server_args = {}) {
  LocalClusterOptions o;
  SecureFromEnvironment(&o);
  o.server_binary = TESSERA_SERVER_BINARY;
  o.coordinator_binary = TESSERA_COORDINATOR_BINARY;
  o.num_servers = num_servers;
  o.replication = replication;
  o.num_shards = num_shards;
  o.coordinator_args = std::move(coordinator_args);
  o.extra_args = std::move(server_args);
  absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(o);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return std::move(*c);
}
#endif

// Waits until the coordinator's map has a primary for `shard` other than server `old`.
inline int WaitForNewPrimary(LocalCluster& cluster, uint32_t shard, int old,
                             absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    absl::StatusOr<std::vector<int>> r = cluster.ReplicasOf(shard);
    if (r.ok() && !r->empty() && (*r)[0] != old) return (*r)[0];
    absl::SleepFor(absl::Milliseconds(20));
  }
  FAIL("no new primary for shard " << shard << " in time");
  return -1;
}

// Waits until server `gone` is no longer a replica of `shard`.
inline void WaitUntilRemoved(LocalCluster& cluster, uint32_t shard, int gone) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    absl::StatusOr<std::vector<int>> r = cluster.ReplicasOf(shard);
    if (r.ok() && std::find(r->begin(), r->end(), gone) == r->end()) return;
    absl::SleepFor(absl::Milliseconds(20));
  }
  FAIL("server " << gone << " is still a replica of shard " << shard);
}

// A client that follows the coordinator's shard map.
inline std::unique_ptr<Client> ConnectCoordinated(const LocalCluster& cluster) {
  ClientOptions o;
  o.coordinator = cluster.coordinator_address();
  o.credentials = JobCredentials(cluster);
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return std::move(*c);
}

// Runs `train(client, clock, w)` for workers w = 0..n-1 of job `job`, each on its own thread
// with its own client and clock; requires every one to succeed.
inline void RunWorkerThreads(
    const LocalCluster& cluster, uint32_t n, const std::string& job, ConsistencyMode mode,
    uint32_t staleness, const std::function<absl::Status(Client&, WorkerClock*, uint32_t)>& train) {
  std::vector<std::thread> workers;
  std::vector<absl::Status> results(n);
  for (uint32_t w = 0; w < n; ++w) {
    workers.emplace_back([&, w] {
      ClientOptions co;
      co.coordinator = cluster.coordinator_address();
      co.credentials = JobCredentials(cluster);
      absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(co);
      absl::StatusOr<std::unique_ptr<WorkerClock>> clock =
          WorkerClock::Join({.coordinator = cluster.coordinator_address(),
                             .job = job,
                             .num_workers = n,
                             .worker = w,
                             .mode = mode,
                             .staleness = staleness,
                             .credentials = JobCredentials(cluster)});
      results[w] = !client.ok()  ? client.status()
                   : !clock.ok() ? clock.status()
                                 : train(**client, clock->get(), w);
    });
  }
  for (auto& t : workers) t.join();
  for (uint32_t w = 0; w < n; ++w) {
    INFO("worker " << w << ": " << results[w].ToString());
    REQUIRE(results[w].ok());
  }
}

// Runs a shell command; returns its exit code (-1 when killed) and standard output.
inline std::pair<int, std::string> RunCommand(const std::string& command) {
  FILE* p = popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

#define TESSERA_REQUIRE_OK(expr)              \
  do {                                        \
    const ::absl::Status tessera_s_ = (expr); \
    INFO(tessera_s_.ToString());              \
    REQUIRE(tessera_s_.ok());                 \
  } while (0)

}  // namespace tessera::testing

#endif  // TESSERA_TESTS_TEST_CLUSTER_H_
