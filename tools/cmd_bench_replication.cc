// `tessera bench --suite=replication`: replicated push throughput (R=2 against R=1, measured
// in the same run, alternating) and the pause a client sees when a primary is killed or
// stalled (docs/replication.md, docs/benchmarks.md).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "testing/local_cluster.h"
#include "tools/bench_report.h"
#include "tools/commands.h"

namespace tessera {
namespace {

absl::StatusOr<std::unique_ptr<LocalCluster>> StartCluster(uint32_t replication,
                                                           const std::string& log_dir) {
  LocalClusterOptions o;
  o.server_binary = LocalCluster::DefaultServerBinary();
  o.num_servers = replication;
  o.replication = replication;
  o.num_shards = 1;
  o.log_dir = log_dir;
  return LocalCluster::Start(o);
}

absl::StatusOr<std::unique_ptr<Client>> ConnectTo(const LocalCluster& cluster,
                                                  const BenchCommandOptions& o) {
  ClientOptions co;
  co.coordinator = cluster.coordinator_address();
  co.channels_per_server = o.channels;
  co.data_plane = o.data_plane;
  co.chunk_bytes = o.chunk_bytes;
  return Client::Connect(co);
}

// CPU seconds (user + system) used so far by process `pid` (0: this process).
double CpuSeconds(pid_t pid) {
  const std::string path = pid == 0 ? "/proc/self/stat" : absl::StrCat("/proc/", pid, "/stat");
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return 0;
  char buf[4096];
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // Fields after the command (which may hold spaces) start after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return 0;
  unsigned long long utime = 0, stime = 0;
  // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
  if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) !=
      2) {
    return 0;
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU used by the client (this process) and by each server of a cluster's shard 0 (primary
// first) during a measurement.
struct CpuUse {
  double client = 0;
  std::vector<double> servers;  // primary, backups
};

class CpuMeter {
 public:
  explicit CpuMeter(LocalCluster& cluster) {
    absl::StatusOr<std::vector<int>> r = cluster.ReplicasOf(0);
    if (r.ok()) {
      for (int i : *r) pids_.push_back(cluster.pid(i));
    }
    client_ = CpuSeconds(0);
    for (pid_t p : pids_) start_.push_back(CpuSeconds(p));
  }
  CpuUse Done() const {
    CpuUse u;
    u.client = CpuSeconds(0) - client_;
    for (size_t i = 0; i < pids_.size(); ++i) u.servers.push_back(CpuSeconds(pids_[i]) - start_[i]);
    return u;
  }

 private:
  std::vector<pid_t> pids_;
  std::vector<double> start_;
  double client_ = 0;
};

// Pushes from `threads` threads for `seconds`; returns pushes per second.
absl::StatusOr<double> PushRate(int threads, double seconds,
                                const std::function<absl::Status(int thread)>& push) {
  std::atomic<uint64_t> done{0};
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  absl::Status first_error;
  std::vector<std::thread> workers;
  (void)push(0);  // warm-up: creates the rows
  const absl::Time start = absl::Now();
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      while (!stop) {
        absl::Status s = push(t);
        if (!s.ok()) {
          absl::MutexLock lock(&mu);
          if (first_error.ok()) first_error = s;
          return;
        }
        done.fetch_add(1);
      }
    });
  }
  absl::SleepFor(absl::Seconds(seconds));
  stop = true;
  for (auto& w : workers) w.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  if (!first_error.ok()) return first_error;
  return done.load() / elapsed;
}

struct Workloads {
  std::vector<std::vector<uint64_t>> keys;  // per thread
  std::vector<float> values;
  std::vector<float> dense;
};

absl::Status CreateTables(Client& c, const BenchCommandOptions& o) {
  TableConfig sparse{.name = "bench_sparse", .kind = TableKind::kSparse, .dim = o.sparse_dim};
  sparse.optimizer = {.kind = OptimizerKind::kAdagrad, .learning_rate = 0.01f};
  if (absl::StatusOr<TableConfig> r = c.CreateTable(sparse); !r.ok()) return r.status();
  TableConfig dense{
      .name = "bench_dense", .kind = TableKind::kDense, .dense_size = o.dense_bytes / 4};
  dense.optimizer = {.kind = OptimizerKind::kSgd, .learning_rate = 0.001f};
  return c.CreateTable(dense).status();
}

// Pushes one small update after another and records when each was acknowledged; the longest
// gap around a fault is the pause a training step would see.
class PauseProbe {
 public:
  explicit PauseProbe(Client* client) : client_(client) {
    thread_ = std::thread([this] { Run(); });
  }
  ~PauseProbe() { Stop(); }

  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // The longest gap between consecutive acknowledgements since `since`.
  double LongestGapSince(absl::Time since) {
    absl::MutexLock lock(&mu_);
    double longest = 0;
    for (size_t i = 1; i < acks_.size(); ++i) {
      if (acks_[i] < since) continue;
      longest = std::max(longest, absl::ToDoubleSeconds(acks_[i] - std::max(acks_[i - 1], since)));
    }
    return longest;
  }
  uint64_t acked() {
    absl::MutexLock lock(&mu_);
    return acks_.size();
  }
  absl::Status error() {
    absl::MutexLock lock(&mu_);
    return error_;
  }

 private:
  void Run() {
    std::vector<uint64_t> keys(64);
    for (uint64_t k = 0; k < keys.size(); ++k) keys[k] = k * 7919;
    std::vector<float> values(keys.size() * 16, 0.01f);
    while (!stop_) {
      absl::Status s = client_->PushSparse("bench_sparse", keys, values);
      absl::MutexLock lock(&mu_);
      if (!s.ok()) {
        error_ = s;
        return;
      }
      acks_.push_back(absl::Now());
    }
  }

  Client* client_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  std::vector<absl::Time> acks_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

int RunReplicationBench(const BenchCommandOptions& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  char tmpl[] = "/tmp/tessera-bench-replication-XXXXXX";
  const std::string log_dir = mkdtemp(tmpl) != nullptr ? tmpl : "";
  absl::StatusOr<std::unique_ptr<LocalCluster>> r1 = StartCluster(1, log_dir);
  if (!r1.ok()) {
    std::fprintf(stderr, "tessera bench: %s\n", r1.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<LocalCluster>> r2 = StartCluster(2, log_dir);
  if (!r2.ok()) {
    std::fprintf(stderr, "tessera bench: %s\n", r2.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Client>> c1 = ConnectTo(**r1, o);
  absl::StatusOr<std::unique_ptr<Client>> c2 = ConnectTo(**r2, o);
  if (!c1.ok() || !c2.ok()) {
    std::fprintf(stderr, "tessera bench: %s\n",
                 (!c1.ok() ? c1.status() : c2.status()).ToString().c_str());
    return 1;
  }
  for (Client* c : {c1->get(), c2->get()}) {
    if (absl::Status s = CreateTables(*c, o); !s.ok()) {
      std::fprintf(stderr, "tessera bench: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  const int kThreads = std::max(1, o.threads);
  Workloads w;
  std::mt19937_64 rng(1);
  w.keys.resize(kThreads);
  for (auto& k : w.keys) {
    k.resize(o.sparse_keys);
    for (uint64_t& x : k) x = rng();
  }
  w.values.assign(o.sparse_keys * o.sparse_dim, 0.25f);
  w.dense.assign(o.dense_bytes / 4, 0.5f);
  const std::string detail_base =
      absl::StrFormat("1 shard, %d client threads, alternating rounds, median of 3", kThreads);

  // Throughput: rounds alternate R=1 and R=2 so that both see the same machine.
  struct Kind {
    const char* name;
    const char* unit;
    double per_push;
    std::function<absl::Status(Client&, int)> push;
  };
  const std::vector<Kind> kinds = {
      {"sparse_push_adagrad", "Mkeys/s", o.sparse_keys / 1e6,
       [&](Client& c, int t) { return c.PushSparse("bench_sparse", w.keys[t], w.values); }},
      {"dense_push", "GB/s", o.dense_bytes / 1e9,
       [&](Client& c, int) { return c.PushDense("bench_dense", 0, w.dense); }},
  };
  int failures = 0;
  const double seconds = std::max(0.2, o.seconds_per_workload);
  for (const Kind& k : kinds) {
    std::vector<double> rate1, rate2, ratio;
    CpuUse cpu1, cpu2;  // summed over rounds
    double units1 = 0, units2 = 0;
    auto add = [](CpuUse& sum, const CpuUse& u) {
      sum.client += u.client;
      sum.servers.resize(std::max(sum.servers.size(), u.servers.size()));
      for (size_t i = 0; i < u.servers.size(); ++i) sum.servers[i] += u.servers[i];
    };
    for (int round = 0; round < 3; ++round) {
      CpuMeter m1(**r1);
      absl::StatusOr<double> a =
          PushRate(kThreads, seconds, [&](int t) { return k.push(**c1, t); });
      add(cpu1, m1.Done());
      CpuMeter m2(**r2);
      absl::StatusOr<double> b =
          PushRate(kThreads, seconds, [&](int t) { return k.push(**c2, t); });
      add(cpu2, m2.Done());
      if (a.ok()) units1 += *a * k.per_push * seconds;
      if (b.ok()) units2 += *b * k.per_push * seconds;
      if (!a.ok() || !b.ok()) {
        std::fprintf(stderr, "tessera bench: %s failed: %s\n", k.name,
                     (!a.ok() ? a.status() : b.status()).ToString().c_str());
        ++failures;
        break;
      }
      rate1.push_back(*a * k.per_push);
      rate2.push_back(*b * k.per_push);
      ratio.push_back(*b / *a);
    }
    if (ratio.size() != 3) continue;
    std::sort(rate1.begin(), rate1.end());
    std::sort(rate2.begin(), rate2.end());
    std::sort(ratio.begin(), ratio.end());
    PrintBenchLine({absl::StrFormat("%s_r1", k.name), rate1[1], k.unit, "", detail_base}, o.json);
    PrintBenchLine({absl::StrFormat("%s_r2", k.name), rate2[1], k.unit, "", detail_base}, o.json);
    // Where the time goes: CPU seconds per unit pushed (Mkeys or GB) of each process. On this
    // machine all of them share the same cores; with a machine per server, the busier server
    // bounds the rate instead.
    if (cpu1.servers.size() == 1 && cpu2.servers.size() == 2 && units1 > 0 && units2 > 0) {
      const double p1 = cpu1.servers[0] / units1, p2 = cpu2.servers[0] / units2,
                   b2 = cpu2.servers[1] / units2;
      PrintBenchLine(
          {absl::StrFormat("%s_cpu_seconds_per_unit", k.name), p2, "s",
           absl::StrFormat(",\"r1_client\":%.4f,\"r1_primary\":%.4f,\"r2_client\":%.4f,"
                           "\"r2_primary\":%.4f,\"r2_backup\":%.4f",
                           cpu1.client / units1, p1, cpu2.client / units2, p2, b2),
           absl::StrFormat("CPU s per %s: R=1 client %.3f primary %.3f; R=2 client %.3f "
                           "primary %.3f backup %.3f; one machine per server would bound R=2/R=1 "
                           "near %.2f (projection, not measured)",
                           k.unit[0] == 'M' ? "Mkeys" : "GB", cpu1.client / units1, p1,
                           cpu2.client / units2, p2, b2, p1 / std::max(p2, b2))},
          o.json);
    }
    PrintBenchLine(
        {absl::StrFormat("%s_r2_over_r1", k.name), ratio[1], "x",
         absl::StrFormat(",\"rounds\":[%.3f,%.3f,%.3f]", ratio[0], ratio[1], ratio[2]),
         absl::StrFormat("goal >= 0.7; rounds %.2f %.2f %.2f", ratio[0], ratio[1], ratio[2])},
        o.json);
  }
  c1->reset();
  (void)(*r1)->Stop();

  // Failover pauses with the default lease (1.5 s) and heartbeat (250 ms).
  LocalCluster& cluster = **r2;
  auto pause = [&](const char* name, int signal) {
    std::vector<double> pauses;
    for (int round = 0; round < o.pause_rounds; ++round) {
      PauseProbe probe(c2->get());
      const uint64_t before = probe.acked();
      const absl::Time deadline = absl::Now() + absl::Seconds(10);
      while (probe.acked() < before + 100 && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(5));
      }
      absl::StatusOr<std::vector<int>> replicas = cluster.ReplicasOf(0);
      if (!replicas.ok() || replicas->empty()) return false;
      const int victim = (*replicas)[0];
      const absl::Time fault = absl::Now();
      kill(cluster.pid(victim), signal);
      // Until the probe has been acknowledged 100 more times after the fault.
      const uint64_t at_fault = probe.acked();
      const absl::Time limit = absl::Now() + absl::Seconds(30);
      while (probe.acked() < at_fault + 100 && absl::Now() < limit && probe.error().ok()) {
        absl::SleepFor(absl::Milliseconds(10));
      }
      probe.Stop();
      if (!probe.error().ok() || probe.acked() < at_fault + 100) {
        std::fprintf(stderr, "tessera bench: %s: pushes did not resume: %s\n", name,
                     probe.error().ToString().c_str());
        return false;
      }
      pauses.push_back(probe.LongestGapSince(fault));
      if (signal == SIGSTOP) kill(cluster.pid(victim), SIGCONT);
      if (signal == SIGKILL && !cluster.RestartServer(victim).ok()) return false;
      if (!cluster.WaitForReplicas(absl::Seconds(60)).ok()) return false;
    }
    std::sort(pauses.begin(), pauses.end());
    const auto at = [&](double q) {
      return pauses[std::min(pauses.size() - 1,
                             static_cast<size_t>(q * (pauses.size() - 1) + 0.5))];
    };
    std::vector<std::string> rounds;
    for (double p : pauses) rounds.push_back(absl::StrFormat("%.3f", p));
    PrintBenchLine(
        {name, at(0.5), "s",
         absl::StrFormat(",\"p99\":%.3f,\"rounds\":[%s]", at(0.99), absl::StrJoin(rounds, ",")),
         absl::StrFormat("p50 of %d; p99 %.2f s, max %.2f s; default lease 1.5 s; goal < 3 s",
                         pauses.size(), at(0.99), pauses.back())},
        o.json);
    return true;
  };
  if (!pause("failover_pause_primary_killed", SIGKILL)) ++failures;
  if (!pause("failover_pause_primary_stalled", SIGSTOP)) ++failures;
  c2->reset();
  (void)cluster.Stop();
  return failures == 0 ? 0 : 1;
}

}  // namespace tessera
