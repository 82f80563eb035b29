// `tessera bench`: throughput of the data path against a cluster (or one it starts), beside an
// iperf3 loopback baseline measured in the same run.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "common/auth.h"
#include "testing/local_cluster.h"
#include "testing/local_pki.h"
#include "tools/commands.h"

namespace tessera {
namespace {

struct BenchResult {
  std::string workload;
  double value;
  std::string unit;
  uint64_t iterations;
  double seconds;
  std::string detail;
};

// Repeats `iteration` (after one warm-up) until `seconds` have passed; returns
// (iterations, seconds), or the first error.
template <typename Fn>
absl::StatusOr<std::pair<uint64_t, double>> Measure(double seconds, Fn&& iteration) {
  if (absl::Status s = iteration(); !s.ok()) return s;
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::Seconds(seconds);
  uint64_t n = 0;
  absl::Time now = start;
  while (now < end) {
    if (absl::Status s = iteration(); !s.ok()) return s;
    ++n;
    now = absl::Now();
  }
  return std::make_pair(n, absl::ToDoubleSeconds(now - start));
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

// Loopback bandwidth by iperf3 (-l 1M), in GB/s; an error when iperf3 is missing or fails.
absl::StatusOr<double> Iperf3Baseline(double seconds) {
  if (std::system("command -v iperf3 >/dev/null 2>&1") != 0) {
    return absl::NotFoundError("iperf3 is not installed (tools/setup.sh installs it)");
  }
  const int port = FreePort();
  // One-off server (-1), and `timeout` so that it never outlives a failed measurement.
  const std::string server =
      absl::StrFormat("timeout %d iperf3 -s -1 -B 127.0.0.1 -p %d >/dev/null 2>&1 &",
                      static_cast<int>(seconds) + 30, port);
  if (std::system(server.c_str()) != 0) return absl::InternalError("cannot start iperf3 -s");
  // The server needs a moment to listen; retry the client a few times (bounded).
  std::string out;
  for (int attempt = 0; attempt < 50 && out.find("bits_per_second") == std::string::npos;
       ++attempt) {
    const std::string cmd = absl::StrFormat("iperf3 -c 127.0.0.1 -p %d -l 1M -t %d -J 2>/dev/null",
                                            port, std::max(1, static_cast<int>(seconds)));
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return absl::InternalError("cannot run iperf3 -c");
    out.clear();
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    pclose(p);
    if (out.find("bits_per_second") == std::string::npos) absl::SleepFor(absl::Milliseconds(20));
  }
  // The receiver's view: "sum_received": { ... "bits_per_second": X
  const size_t at = out.find("\"sum_received\"");
  const size_t bps = out.find("\"bits_per_second\"", at == std::string::npos ? 0 : at);
  if (bps == std::string::npos) return absl::InternalError("no result from iperf3");
  const double bits = std::strtod(out.c_str() + out.find(':', bps) + 1, nullptr);
  return bits / 8 / 1e9;
}

void Print(const BenchResult& r, bool json, double baseline_gbps) {
  if (json) {
    std::string extra;
    if (r.unit == "GB/s" && baseline_gbps > 0) {
      extra = absl::StrFormat(",\"iperf3_GBps\":%.3f,\"ratio_to_iperf3\":%.3f", baseline_gbps,
                              r.value / baseline_gbps);
    }
    std::printf("%s\n", absl::StrFormat("{\"workload\":\"%s\",\"value\":%.4g,\"unit\":\"%s\","
                                        "\"iterations\":%u,\"seconds\":%.3f%s,\"detail\":\"%s\"}",
                                        r.workload, r.value, r.unit, r.iterations, r.seconds, extra,
                                        r.detail)
                            .c_str());
  } else {
    std::printf("%-28s %10.3f %-8s (%llu iterations in %.2f s; %s)\n", r.workload.c_str(), r.value,
                r.unit.c_str(), static_cast<unsigned long long>(r.iterations), r.seconds,
                r.detail.c_str());
  }
}

// Starts `num_servers` servers with mutual TLS from a throwaway CA and tokens (docs/security.md)
// in a new directory; *credentials: what a client presents to them.
absl::StatusOr<std::unique_ptr<LocalCluster>> StartSecured(uint32_t num_servers,
                                                           Credentials* credentials) {
  char dir[] = "/tmp/tessera-bench-secure-XXXXXX";
  if (mkdtemp(dir) == nullptr) return absl::InternalError("cannot create a directory");
  absl::StatusOr<LocalPki> pki = MakeLocalPki(dir);
  if (!pki.ok()) return pki.status();
  LocalClusterOptions lo;
  lo.server_binary = LocalCluster::DefaultServerBinary();
  lo.num_servers = num_servers;
  lo.tls_ca_file = pki->ca_file;
  lo.tls_cert_file = pki->cert_file;
  lo.tls_key_file = pki->key_file;
  lo.auth_token_file = absl::StrCat(dir, "/tokens");
  std::ofstream(lo.auth_token_file) << "admin bench-0123456789abcdef\n"
                                    << "worker bench-0123456789abcdef\n";
  absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(lo);
  if (!c.ok()) return c.status();
  *credentials = (*c)->ClientCredentials(kRoleAdmin | kRoleWorker);
  return c;
}

// The data suite; every result is printed and, with `collected`, kept there.
int RunDataBench(const BenchCommandOptions& o, std::vector<BenchResult>* collected) {
  std::unique_ptr<LocalCluster> cluster;
  Credentials credentials = o.credentials;
  absl::StatusOr<std::vector<std::string>> started = o.connect;
  if (o.secure && o.connect.empty()) {
    absl::StatusOr<std::unique_ptr<LocalCluster>> c =
        StartSecured(static_cast<uint32_t>(o.num_servers), &credentials);
    if (c.ok()) {
      cluster = *std::move(c);
      started = cluster->addresses();
    } else {
      started = c.status();
    }
  } else {
    started = ConnectOrStart(o.connect, static_cast<uint32_t>(o.num_servers), {}, &cluster);
  }
  if (!started.ok()) {
    std::fprintf(stderr, "tessera bench: %s\n", started.status().ToString().c_str());
    return 1;
  }
  const std::vector<std::string> servers = *started;
  ClientOptions co;
  co.servers = servers;
  co.credentials = credentials;
  co.channels_per_server = o.channels;
  co.data_plane = o.data_plane;
  co.data_connections_per_server = o.data_connections;
  co.chunk_bytes = o.chunk_bytes;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(co);
  if (!client.ok()) {
    std::fprintf(stderr, "tessera bench: %s\n", client.status().ToString().c_str());
    return 1;
  }
  Client& c = **client;
  const std::string setup =
      absl::StrFormat("%d server(s), %s, %llu KiB chunks%s", static_cast<int>(servers.size()),
                      o.data_plane && credentials.tls_ca_file.empty()
                          ? std::string("data plane")
                          : absl::StrFormat("gRPC, %d channels", o.channels),
                      static_cast<unsigned long long>(o.chunk_bytes >> 10),
                      credentials.tls_ca_file.empty() ? "" : ", mutual TLS and tokens");
  double baseline = 0;
  if (o.iperf3) {
    absl::StatusOr<double> b = Iperf3Baseline(o.seconds_per_workload);
    if (b.ok()) {
      baseline = *b;
      Print({"iperf3_loopback_1MiB_writes", baseline, "GB/s", 1, o.seconds_per_workload,
             "iperf3 -c 127.0.0.1 -l 1M, receiver side"},
            o.json, 0);
    } else {
      std::fprintf(stderr, "tessera bench: no iperf3 baseline: %s\n",
                   b.status().ToString().c_str());
    }
  }

  int failures = 0;
  auto wanted = [&](const char* w) {
    return o.workloads.empty() ||
           std::find(o.workloads.begin(), o.workloads.end(), w) != o.workloads.end();
  };
  auto report = [&](const std::string& name, const std::string& unit, double per_iteration,
                    const absl::StatusOr<std::pair<uint64_t, double>>& m) {
    if (!m.ok()) {
      std::fprintf(stderr, "tessera bench: %s failed: %s\n", name.c_str(),
                   m.status().ToString().c_str());
      ++failures;
      return;
    }
    const BenchResult r{name, per_iteration * m->first / m->second, unit, m->first, m->second,
                        setup};
    Print(r, o.json, baseline);
    if (collected != nullptr) collected->push_back(r);
  };

  // Dense: push the whole tensor (SGD), then pull it back. Counted as 2 x payload.
  const std::string tag = absl::StrFormat("%d", static_cast<int>(getpid()));
  const uint64_t elems = o.dense_bytes / sizeof(float);
  TableConfig dense{.name = "bench_dense_" + tag, .kind = TableKind::kDense, .dense_size = elems};
  dense.optimizer = {.kind = OptimizerKind::kSgd, .learning_rate = 0.001f};
  if (absl::StatusOr<TableConfig> r = c.CreateTable(dense); !r.ok()) {
    std::fprintf(stderr, "tessera bench: %s\n", r.status().ToString().c_str());
    return 1;
  }
  std::vector<float> grad(elems, 0.5f), out(elems);
  if (wanted("dense_push")) {
    report("dense_push", "GB/s", 1.0 * elems * sizeof(float) / 1e9,
           Measure(o.seconds_per_workload, [&] { return c.PushDense(dense.name, 0, grad); }));
  }
  if (wanted("dense_pull")) {
    report("dense_pull", "GB/s", 1.0 * elems * sizeof(float) / 1e9,
           Measure(o.seconds_per_workload,
                   [&] { return c.PullDense(dense.name, 0, absl::MakeSpan(out)); }));
  }
  if (wanted("dense")) {
    report(absl::StrFormat("dense_push_pull_%lluKiB",
                           static_cast<unsigned long long>(o.dense_bytes >> 10)),
           "GB/s", 2.0 * elems * sizeof(float) / 1e9, Measure(o.seconds_per_workload, [&] {
             absl::Status s = c.PushDense(dense.name, 0, grad);
             return s.ok() ? c.PullDense(dense.name, 0, absl::MakeSpan(out)) : s;
           }));
  }

  // Sparse: distinct random keys; the first pull creates the rows.
  std::mt19937_64 rng(1);
  std::vector<uint64_t> keys(o.sparse_keys);
  for (uint64_t& k : keys) k = rng();
  std::vector<float> values(keys.size() * o.sparse_dim, 0.25f);
  TableConfig sparse{
      .name = "bench_sparse_" + tag, .kind = TableKind::kSparse, .dim = o.sparse_dim};
  sparse.optimizer = {.kind = OptimizerKind::kAdagrad, .learning_rate = 0.01f};
  if (absl::StatusOr<TableConfig> r = c.CreateTable(sparse); !r.ok()) {
    std::fprintf(stderr, "tessera bench: %s\n", r.status().ToString().c_str());
    return 1;
  }
  const std::string keys_label =
      absl::StrFormat("%llux%u", static_cast<unsigned long long>(keys.size()), o.sparse_dim);
  if (wanted("pull") || wanted("push")) {
    // (the first pull creates the rows, so a push-only run pulls once first)
    if (absl::Status s = c.PullSparse(sparse.name, keys, absl::MakeSpan(values)); !s.ok()) {
      std::fprintf(stderr, "tessera bench: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  if (wanted("pull")) {
    report("sparse_pull_" + keys_label, "Mkeys/s", keys.size() / 1e6,
           Measure(o.seconds_per_workload,
                   [&] { return c.PullSparse(sparse.name, keys, absl::MakeSpan(values)); }));
  }
  if (wanted("push")) {
    report(
        "sparse_push_adagrad_" + keys_label, "Mkeys/s", keys.size() / 1e6,
        Measure(o.seconds_per_workload, [&] { return c.PushSparse(sparse.name, keys, values); }));
  }

  (void)c.DropTable(dense.name);
  (void)c.DropTable(sparse.name);
  client->reset();
  if (cluster != nullptr) {
    if (absl::Status s = cluster->Stop(); !s.ok()) {
      std::fprintf(stderr, "tessera bench: %s\n", s.ToString().c_str());
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace

int RunBench(const BenchCommandOptions& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (o.suite != "security") return RunDataBench(o, nullptr);
  // The data workloads on a plaintext cluster, then on one with mutual TLS and tokens, both
  // started here; then each secured figure over its plaintext one.
  if (!o.connect.empty()) {
    std::fprintf(stderr, "tessera bench --suite=security starts its own clusters (no --connect)\n");
    return 2;
  }
  BenchCommandOptions plain = o, secured = o;
  plain.secure = false;
  secured.secure = true;
  secured.iperf3 = false;
  std::vector<BenchResult> a, b;
  if (RunDataBench(plain, &a) != 0 || RunDataBench(secured, &b) != 0) return 1;
  for (const BenchResult& p : a) {
    for (const BenchResult& q : b) {
      if (q.workload != p.workload || p.value <= 0) continue;
      Print({p.workload + "_secured_over_plaintext", q.value / p.value, "x", q.iterations,
             q.seconds, "mutual TLS and tokens over plaintext, same run"},
            o.json, 0);
    }
  }
  return 0;
}

}  // namespace tessera
