// `tessera bench --suite=lifecycle` (docs/embedding_lifecycle.md): a stream of new keys into a
// table with a capacity on a server with a memory budget, its resident memory sampled
// throughout; then push throughput on resident keys of that table against a table without a
// policy, same server, same run.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "testing/local_cluster.h"
#include "tools/bench_report.h"
#include "tools/commands.h"

namespace tessera {
namespace {

// Resident memory of process `pid` (VmRSS), in bytes; 0 when it cannot be read.
uint64_t ResidentBytes(pid_t pid) {
  std::ifstream f(absl::StrFormat("/proc/%d/status", pid));
  std::string line;
  while (std::getline(f, line)) {
    unsigned long long kb = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %llu kB", &kb) == 1) return kb * 1024;
  }
  return 0;
}

constexpr uint32_t kDim = 8;
constexpr uint64_t kKeysPerPush = 4096;

// Pushes of gradient 1e-3 to `keys`, retried while the server refuses them for memory (the
// budget's back-pressure); returns the refusals, or the first other error.
absl::StatusOr<uint64_t> PushRetrying(Client& client, const std::string& table,
                                      const std::vector<uint64_t>& keys) {
  static const std::vector<float> grads(kKeysPerPush * kDim, 1e-3f);
  uint64_t refused = 0;
  for (;;) {
    absl::Status s =
        client.PushSparse(table, keys, absl::MakeConstSpan(grads.data(), keys.size() * kDim));
    if (s.ok()) return refused;
    if (s.code() != absl::StatusCode::kResourceExhausted || refused > 10000) return s;
    ++refused;
    absl::SleepFor(absl::Milliseconds(1));
  }
}

// Pushes of `keys` (in random batches) for `seconds`; returns keys per second.
absl::StatusOr<double> ResidentPushRate(Client& client, const std::string& table,
                                        const std::vector<uint64_t>& keys, double seconds,
                                        int threads) {
  std::atomic<uint64_t> pushed{0};
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  absl::Status error;
  std::vector<std::thread> workers;
  const absl::Time start = absl::Now();
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(t + 1);
      std::vector<uint64_t> batch(kKeysPerPush);
      while (!stop.load()) {
        // Distinct keys of the resident set.
        const uint64_t first = rng() % (keys.size() - kKeysPerPush);
        std::copy(keys.begin() + first, keys.begin() + first + kKeysPerPush, batch.begin());
        absl::StatusOr<uint64_t> r = PushRetrying(client, table, batch);
        if (!r.ok()) {
          absl::MutexLock lock(&mu);
          error = r.status();
          return;
        }
        pushed += batch.size();
      }
    });
  }
  absl::SleepFor(absl::Seconds(seconds));
  stop = true;
  for (std::thread& w : workers) w.join();
  if (!error.ok()) return error;
  return pushed.load() / absl::ToDoubleSeconds(absl::Now() - start);
}

}  // namespace

int RunLifecycleBench(const BenchCommandOptions& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto fail = [&](const absl::Status& s) {
    std::fprintf(stderr, "tessera bench --suite=lifecycle: %s\n", s.ToString().c_str());
    return 1;
  };
  const uint64_t budget = o.lifecycle_budget_mb << 20;
  // The table's capacity: 3/5 of the budget (a vshard may hold 110% of its share; the rest is
  // the resident keys' table, requests and responses).
  const uint64_t capacity_bytes = budget / 5 * 3;
  std::unique_ptr<LocalCluster> cluster;
  absl::StatusOr<std::vector<std::string>> started =
      ConnectOrStart(o.connect, 1, {absl::StrFormat("--max_memory_bytes=%u", budget)}, &cluster);
  if (!started.ok()) return fail(started.status());
  const pid_t pid = cluster != nullptr ? cluster->pid(0) : 0;
  ClientOptions co;
  co.servers = *started;
  co.credentials = o.credentials;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(co);
  if (!client.ok()) return fail(client.status());
  TableConfig bounded{.name = "bench_bounded", .kind = TableKind::kSparse, .dim = kDim};
  bounded.optimizer = {.kind = OptimizerKind::kAdagrad};
  bounded.lifecycle = {.capacity_bytes = capacity_bytes};
  TableConfig plain = bounded;
  plain.name = "bench_plain";
  plain.lifecycle = {};
  for (const TableConfig& t : {bounded, plain}) {
    if (absl::StatusOr<TableConfig> r = (*client)->CreateTable(t); !r.ok()) return fail(r.status());
  }
  const int threads = std::max(1, o.threads);
  // The resident keys of the throughput figure (2.), in the table without a policy first: its
  // memory is taken before the stream fills the budget.
  std::vector<uint64_t> resident(200000);
  for (uint64_t i = 0; i < resident.size(); ++i) resident[i] = (1ull << 62) + i;
  auto load = [&](const std::string& table) -> absl::Status {
    for (uint64_t i = 0; i < resident.size(); i += kKeysPerPush) {
      std::vector<uint64_t> keys(resident.begin() + i,
                                 resident.begin() + std::min(i + kKeysPerPush, resident.size()));
      if (absl::StatusOr<uint64_t> r = PushRetrying(**client, table, keys); !r.ok()) {
        return r.status();
      }
    }
    return absl::OkStatus();
  };
  if (absl::Status s = load(plain.name); !s.ok()) return fail(s);

  // 1. The stream: every key new, pushed once, `threads` clients at once; RSS sampled.
  std::atomic<uint64_t> next{1}, refused{0}, max_rss{0};
  std::atomic<bool> done{false};
  std::thread sampler([&] {
    while (!done.load()) {
      const uint64_t rss = pid != 0 ? ResidentBytes(pid) : 0;
      uint64_t seen = max_rss.load();
      while (rss > seen && !max_rss.compare_exchange_weak(seen, rss)) {
      }
      absl::SleepFor(absl::Milliseconds(20));  // (a sampling period, not a wait)
    }
  });
  absl::Mutex mu;
  absl::Status error;
  std::vector<std::thread> writers;
  const absl::Time start = absl::Now();
  for (int t = 0; t < threads; ++t) {
    writers.emplace_back([&] {
      std::vector<uint64_t> keys(kKeysPerPush);
      for (;;) {
        const uint64_t first = next.fetch_add(kKeysPerPush);
        if (first > o.lifecycle_keys) return;
        // Spread over the key space (as hashed ids are).
        for (uint64_t i = 0; i < kKeysPerPush; ++i) keys[i] = (first + i) * 0x9E3779B97F4A7C15ull;
        absl::StatusOr<uint64_t> r = PushRetrying(**client, bounded.name, keys);
        if (!r.ok()) {
          absl::MutexLock lock(&mu);
          error = r.status();
          return;
        }
        refused += *r;
      }
    });
  }
  for (std::thread& w : writers) w.join();
  const double stream_s = absl::ToDoubleSeconds(absl::Now() - start);
  done = true;
  sampler.join();
  if (!error.ok()) {
    if (absl::StatusOr<TableStatus> t = (*client)->DescribeTable(bounded.name); t.ok()) {
      std::fprintf(stderr, "table %s: %llu rows, %llu evicted\n", bounded.name.c_str(),
                   static_cast<unsigned long long>(t->rows),
                   static_cast<unsigned long long>(t->evicted_capacity));
    }
    return fail(error);
  }
  absl::StatusOr<TableStatus> after = (*client)->DescribeTable(bounded.name);
  if (!after.ok()) return fail(after.status());
  const uint64_t streamed = std::min<uint64_t>(next.load() - 1, o.lifecycle_keys + kKeysPerPush);
  PrintBenchLine(
      {"lifecycle_stream_max_rss", max_rss.load() / 1048576.0, "MiB",
       absl::StrFormat(",\"budget_mib\":%u,\"ratio_to_budget\":%.3f,\"keys\":%u,\"seconds\":%.1f,"
                       "\"refused_pushes\":%u,\"rows\":%u,\"evicted\":%u,"
                       "\"evicted_near_limit\":%u",
                       o.lifecycle_budget_mb,
                       static_cast<double>(max_rss.load()) / static_cast<double>(budget), streamed,
                       stream_s, refused.load(), after->rows, after->evicted_capacity,
                       after->evicted_memory),
       absl::StrFormat("%u new keys (dim %u, Adagrad) into a table with capacity_bytes %u on a "
                       "server with --max_memory_bytes=%u: %.0f keys/s, %u pushes refused for "
                       "memory and retried, %u rows held, %u evicted by the capacity and %u "
                       "near the memory limit; RSS sampled every 20 ms%s",
                       streamed, kDim, capacity_bytes, budget, streamed / stream_s, refused.load(),
                       after->rows, after->evicted_capacity, after->evicted_memory,
                       pid == 0 ? " (not measured: --connect)" : "")},
      o.json);

  // 2. Push throughput on resident keys: the table with the policy (full: its resident keys
  // take the place of streamed ones) against the one without.
  if (absl::Status s = load(bounded.name); !s.ok()) return fail(s);
  double rates[2] = {0, 0};
  for (int round = 0; round < 2; ++round) {
    for (int which = 0; which < 2; ++which) {
      const std::string& table = which == 0 ? bounded.name : plain.name;
      absl::StatusOr<double> rate =
          ResidentPushRate(**client, table, resident, o.seconds_per_workload, threads);
      if (!rate.ok()) return fail(rate.status());
      rates[which] = std::max(rates[which], *rate);  // (the better of two rounds each)
    }
  }
  PrintBenchLine(
      {"lifecycle_resident_push", rates[0] / 1e6, "Mkeys/s",
       absl::StrFormat(",\"without_policy_mkeys_s\":%.3f,\"ratio\":%.3f", rates[1] / 1e6,
                       rates[0] / rates[1]),
       absl::StrFormat("%.3fx the %.3f Mkeys/s of a table without a policy: pushes of %u "
                       "resident keys (%u a push, %d threads) into the table with the capacity "
                       "(at it: %u rows) and into one without, same server, the better of two "
                       "rounds of %.1f s each",
                       rates[0] / rates[1], rates[1] / 1e6, resident.size(), kKeysPerPush, threads,
                       after->rows, o.seconds_per_workload)},
      o.json);
  return 0;
}

}  // namespace tessera
