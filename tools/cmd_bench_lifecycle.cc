// `tessera bench --suite=lifecycle` (docs/embedding_lifecycle.md): a stream of new keys into a
// table with a capacity on a server with a memory budget, its resident memory sampled
// throughout; then push throughput on resident keys of that table against a table without a
// policy, same server, same run.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
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

// Gradients of round `round` for `keys`: distinct per key and round, so that every row (and
// its Adam moments and step) differs.
std::vector<float> TierGrads(absl::Span<const uint64_t> keys, uint64_t round) {
  std::vector<float> g(keys.size() * kDim);
  for (size_t i = 0; i < keys.size(); ++i) {
    for (uint32_t d = 0; d < kDim; ++d) {
      g[i * kDim + d] =
          static_cast<float>(static_cast<int64_t>((keys[i] * 31 + round * 7 + d) % 2001) - 1000) *
          1e-4f;
    }
  }
  return g;
}

// Seconds at quantile q of sorted `s`.
double Quantile(const std::vector<double>& s, double q) {
  return s.empty() ? 0 : s[std::min(s.size() - 1, static_cast<size_t>(q * s.size()))];
}

// 3. The disk tier: a table whose working set is 5 times its RAM (tier_ram_bytes), Adam, and
// a table without a lifecycle given the same pushes. Rows demoted (by the operator's demotion
// and the policy) and promoted (by random pushes) must end bit-exact: the final pulls of both
// tables are compared bit by bit after a round of pushes to every key (which reads the slots
// and Adam's step). Pull latency for rows in RAM and on disk, push throughput under random
// access.
int RunTierPart(const BenchCommandOptions& o, Client& client) {
  auto fail = [&](const absl::Status& s) {
    std::fprintf(stderr, "tessera bench --suite=lifecycle (tier): %s\n", s.ToString().c_str());
    return 1;
  };
  const uint64_t ram_bytes = o.lifecycle_tier_mb << 20;
  // What the budget charges one row (server/sparse_table.h, row_charge): dim 8 with Adam's two
  // slots, its step and the lifecycle metadata (28 floats), the generation, the index entry
  // (43) and the arena's page share (16).
  constexpr uint64_t kRowCharge = (kDim * 3 + 2 + 2 + 2) * 4 + 43 + 16;
  const uint64_t ram_rows = ram_bytes / kRowCharge;
  const uint64_t working_set = 5 * ram_rows;
  TableConfig tiered{.name = "bench_tier", .kind = TableKind::kSparse, .dim = kDim};
  tiered.optimizer = {.kind = OptimizerKind::kAdam};
  tiered.lifecycle = {.tier_ram_bytes = ram_bytes};
  TableConfig reference = tiered;
  reference.name = "bench_tier_reference";
  reference.lifecycle = {};
  for (const TableConfig& t : {tiered, reference}) {
    if (absl::StatusOr<TableConfig> r = client.CreateTable(t); !r.ok()) return fail(r.status());
  }
  std::vector<uint64_t> keys(working_set);
  for (uint64_t i = 0; i < working_set; ++i) keys[i] = (i + 1) * 0x9E3779B97F4A7C15ull;
  double seconds[2] = {0, 0};  // pushes timed: into the tiered table, into the reference
  auto push_both = [&](absl::Span<const uint64_t> batch, uint64_t round,
                       bool timed) -> absl::Status {
    const std::vector<float> g = TierGrads(batch, round);
    for (int which = 0; which < 2; ++which) {
      const absl::Time start = absl::Now();
      if (absl::Status s = client.PushSparse(which == 0 ? tiered.name : reference.name, batch, g);
          !s.ok()) {
        return s;
      }
      if (timed) seconds[which] += absl::ToDoubleSeconds(absl::Now() - start);
    }
    return absl::OkStatus();
  };
  // Every key pushed once, then all but 90% of the RAM's rows moved to disk by the operator
  // (exact placement for the latency figures); the policy keeps the RAM under its capacity.
  for (uint64_t i = 0; i < working_set; i += kKeysPerPush) {
    const absl::Span<const uint64_t> batch =
        absl::MakeConstSpan(keys).subspan(i, std::min(kKeysPerPush, working_set - i));
    if (absl::Status s = push_both(batch, 0, false); !s.ok()) return fail(s);
  }
  const uint64_t hot = ram_rows / 10 * 9;
  const absl::Span<const uint64_t> cold = absl::MakeConstSpan(keys).subspan(0, working_set - hot);
  const absl::Span<const uint64_t> warm = absl::MakeConstSpan(keys).subspan(working_set - hot);
  const absl::Time demote_start = absl::Now();
  absl::StatusOr<uint64_t> demoted = client.DemoteRows(tiered.name, cold);
  if (!demoted.ok()) return fail(demoted.status());
  const double demote_s = absl::ToDoubleSeconds(absl::Now() - demote_start);
  // The warm keys pushed again: any the policy moved to disk while the keys were loaded (the
  // RAM was over its capacity then) come back, and 90% of the capacity stays in RAM.
  for (uint64_t i = 0; i < warm.size(); i += kKeysPerPush) {
    if (absl::Status s =
            push_both(warm.subspan(i, std::min<uint64_t>(kKeysPerPush, warm.size() - i)), 1, false);
        !s.ok()) {
      return fail(s);
    }
  }
  absl::StatusOr<TableStatus> placed = client.DescribeTable(tiered.name);
  if (!placed.ok()) return fail(placed.status());
  if (placed->disk_rows != cold.size() || placed->rows != hot) {
    return fail(absl::InternalError(
        absl::StrFormat("after the demotion %u rows in RAM and %u on disk, expected %u and %u",
                        placed->rows, placed->disk_rows, hot, cold.size())));
  }

  // Pull latency: batches of 256 keys all in RAM, then all on disk, one at a time.
  constexpr size_t kPullBatch = 256;
  auto pull_figures = [&](absl::Span<const uint64_t> from, const char* name,
                          const char* what) -> absl::Status {
    std::mt19937_64 rng(7);
    std::vector<double> latencies;
    std::vector<uint64_t> batch(kPullBatch);
    std::vector<float> values(kPullBatch * kDim);
    const absl::Time start = absl::Now();
    while (absl::Now() - start < absl::Seconds(o.seconds_per_workload)) {
      for (uint64_t& k : batch) k = from[rng() % from.size()];
      const absl::Time t0 = absl::Now();
      if (absl::Status s = client.PullSparse(tiered.name, batch, absl::MakeSpan(values)); !s.ok()) {
        return s;
      }
      latencies.push_back(absl::ToDoubleSeconds(absl::Now() - t0));
    }
    const double total = absl::ToDoubleSeconds(absl::Now() - start);
    std::sort(latencies.begin(), latencies.end());
    PrintBenchLine(
        {name, latencies.size() * kPullBatch / total / 1e6, "Mkeys/s",
         absl::StrFormat(",\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"pulls\":%u",
                         Quantile(latencies, 0.5) * 1e3, Quantile(latencies, 0.99) * 1e3,
                         latencies.size()),
         absl::StrFormat("pulls of %u random keys %s, one at a time for %.1f s: p50 %.3f ms, "
                         "p99 %.3f ms a pull",
                         kPullBatch, what, o.seconds_per_workload, Quantile(latencies, 0.5) * 1e3,
                         Quantile(latencies, 0.99) * 1e3)},
        o.json);
    return absl::OkStatus();
  };
  if (absl::Status s = pull_figures(warm, "lifecycle_tier_pull_ram", "whose rows are in RAM");
      !s.ok()) {
    return fail(s);
  }
  if (absl::Status s = pull_figures(cold, "lifecycle_tier_pull_disk", "whose rows are on disk");
      !s.ok()) {
    return fail(s);
  }

  // Random access: pushes of 4,096 distinct random keys of the working set (rows on disk come
  // back, the policy moves others out), the same pushes into the reference table.
  std::vector<uint64_t> order(keys);
  std::mt19937_64 rng(11);
  uint64_t pushed = 0, round = 2;
  const absl::Time start = absl::Now();
  while (absl::Now() - start < absl::Seconds(o.seconds_per_workload)) {
    const uint64_t first = rng() % (working_set - kKeysPerPush);
    if (first < kKeysPerPush) std::shuffle(order.begin(), order.end(), rng);
    const absl::Span<const uint64_t> batch =
        absl::MakeConstSpan(order).subspan(first, kKeysPerPush);
    if (absl::Status s = push_both(batch, round++, true); !s.ok()) return fail(s);
    pushed += batch.size();
  }
  // A round of pushes to every key (Adam reads its moments and step), then every row of both
  // tables compared bit by bit.
  for (uint64_t i = 0; i < working_set; i += kKeysPerPush) {
    const absl::Span<const uint64_t> batch =
        absl::MakeConstSpan(keys).subspan(i, std::min(kKeysPerPush, working_set - i));
    if (absl::Status s = push_both(batch, round, false); !s.ok()) return fail(s);
  }
  uint64_t differ = 0;
  constexpr uint64_t kCompare = 65536;
  for (uint64_t i = 0; i < working_set; i += kCompare) {
    const absl::Span<const uint64_t> batch =
        absl::MakeConstSpan(keys).subspan(i, std::min(kCompare, working_set - i));
    std::vector<float> a(batch.size() * kDim), b(batch.size() * kDim);
    if (absl::Status s = client.PullSparse(tiered.name, batch, absl::MakeSpan(a)); !s.ok()) {
      return fail(s);
    }
    if (absl::Status s = client.PullSparse(reference.name, batch, absl::MakeSpan(b)); !s.ok()) {
      return fail(s);
    }
    for (size_t r = 0; r < batch.size(); ++r) {
      differ += std::memcmp(a.data() + r * kDim, b.data() + r * kDim, kDim * sizeof(float)) != 0;
    }
  }
  absl::StatusOr<TableStatus> after = client.DescribeTable(tiered.name);
  if (!after.ok()) return fail(after.status());
  PrintBenchLine(
      {"lifecycle_tier_random_push", pushed / seconds[0] / 1e6, "Mkeys/s",
       absl::StrFormat(",\"without_tier_mkeys_s\":%.3f,\"working_set_rows\":%u,\"ram_rows\":%u,"
                       "\"disk_rows\":%u,"
                       "\"demoted\":%u,\"promoted\":%u,\"rows_not_bit_exact\":%u,"
                       "\"operator_demotion_mrows_s\":%.3f",
                       pushed / seconds[1] / 1e6, working_set, after->rows, after->disk_rows,
                       after->demoted, after->promoted, differ, cold.size() / demote_s / 1e6),
       absl::StrFormat("(%.3f Mkeys/s into the table without a tier) pushes of %u random keys of "
                       "a working set of %u rows (Adam, dim %u), 5x "
                       "the %u rows of tier_ram_bytes %u: %u rows demoted and %u promoted in "
                       "all; then a push to every key and every row compared with a table "
                       "without a tier given the same pushes: %u of %u differ (the operator "
                       "moved %u rows to disk at %.2f M rows/s)",
                       pushed / seconds[1] / 1e6, kKeysPerPush, working_set, kDim, ram_rows,
                       ram_bytes, after->demoted, after->promoted, differ, working_set, cold.size(),
                       cold.size() / demote_s / 1e6)},
      o.json);
  for (const TableConfig& t : {tiered, reference}) {
    if (absl::Status s = client.DropTable(t.name); !s.ok()) return fail(s);
  }
  if (differ != 0) {
    return fail(absl::DataLossError(
        absl::StrFormat("%u rows differ after demotion and promotion", differ)));
  }
  return 0;
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
  if (o.lifecycle_keys == 0) return o.lifecycle_tier_mb == 0 ? 0 : RunTierPart(o, **client);
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
  if (o.lifecycle_tier_mb == 0) return 0;
  for (const TableConfig& t : {bounded, plain}) {
    if (absl::Status s = (*client)->DropTable(t.name); !s.ok()) return fail(s);
  }
  return RunTierPart(o, **client);
}

}  // namespace tessera
