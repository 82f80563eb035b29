// `tessera bench --suite=checkpoint`: checkpoint write and restore throughput of a large table
// beside the disk's direct sequential write speed measured in the same run, the cost of a 1%
// incremental checkpoint, and the longest pause a push sees while a checkpoint is written.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/admin.h"
#include "client/client.h"
#include "testing/local_cluster.h"
#include "tools/bench_report.h"
#include "tools/commands.h"

namespace tessera {
namespace {

using Line = BenchLine;

void Print(const Line& l, bool json) { PrintBenchLine(l, json); }

// Direct (uncached) sequential write speed of the disk under `dir`, in MB/s.
absl::StatusOr<double> DdBaseline(const std::string& dir, uint64_t mb) {
  const std::string file = dir + "/dd-baseline.bin";
  const std::string cmd = absl::StrFormat(
      "dd if=/dev/zero of=%s bs=1M count=%u oflag=direct conv=fsync status=none", file, mb);
  const absl::Time start = absl::Now();
  const int rc = std::system(cmd.c_str());
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::filesystem::remove(file);
  if (rc != 0) return absl::InternalError("dd failed: " + cmd);
  return mb * 1048576.0 / 1e6 / seconds;
}

// Drops the page cache so that a restore reads from disk; false when not permitted.
bool DropCaches() {
  sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) return false;
  f << "3\n";
  return static_cast<bool>(f.flush());
}

// Pushes small updates in a loop and records the longest push latency of each phase.
class Pusher {
 public:
  Pusher(Client& client, std::string table, uint64_t size) : client_(client) {
    thread_ = std::thread([this, table, size] {
      std::mt19937_64 rng(1);
      std::vector<float> g(256, 1e-3f);
      while (!stop_.load()) {
        const uint64_t off = rng() % (size - g.size());
        const absl::Time t0 = absl::Now();
        const absl::Status s = client_.PushDense(table, off, g);
        const double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
        absl::MutexLock lock(&mu_);
        if (!s.ok()) error_ = s;
        max_ms_ = std::max(max_ms_, ms);
        ++pushes_;
      }
    });
  }
  ~Pusher() {
    stop_.store(true);
    thread_.join();
  }
  // The longest latency since the previous call, and the pushes counted.
  std::pair<double, uint64_t> TakeMax() {
    absl::MutexLock lock(&mu_);
    auto r = std::make_pair(max_ms_, pushes_);
    max_ms_ = 0;
    pushes_ = 0;
    return r;
  }
  absl::Status error() {
    absl::MutexLock lock(&mu_);
    return error_;
  }

 private:
  Client& client_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  double max_ms_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t pushes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace

int RunCheckpointBench(const BenchCommandOptions& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string dir = o.checkpoint_dir;
  if (dir.empty()) {
    char tmpl[] = "/tmp/tessera-bench-ckpt-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      std::perror("tessera bench: mkdtemp");
      return 1;
    }
    dir = tmpl;
  }
  auto fail = [&](const absl::Status& s) {
    std::fprintf(stderr, "tessera bench --suite=checkpoint: %s\n", s.ToString().c_str());
    if (o.checkpoint_dir.empty()) std::filesystem::remove_all(dir);
    return 1;
  };
  const uint64_t mb = o.table_mb;
  absl::StatusOr<double> dd = DdBaseline(dir, mb);
  if (!dd.ok()) return fail(dd.status());
  Print({"dd_direct_sequential_write", *dd, "MB/s", "",
         absl::StrFormat("dd bs=1M count=%u oflag=direct conv=fsync into %s", mb, dir)},
        o.json);

  std::unique_ptr<LocalCluster> cluster;
  absl::StatusOr<std::vector<std::string>> started = ConnectOrStart(
      o.connect, static_cast<uint32_t>(o.num_servers),
      {"--checkpoint_dir=" + dir, absl::StrFormat("--max_table_bytes=%u", (mb + 64) << 20)},
      &cluster);
  if (!started.ok()) return fail(started.status());
  const std::vector<std::string> servers = *started;
  ClientOptions co;
  co.servers = servers;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(co);
  if (!client.ok()) return fail(client.status());
  const uint64_t elems = (mb << 20) / sizeof(float);
  TableConfig t{.name = "bench_ckpt", .kind = TableKind::kDense, .dense_size = elems};
  t.optimizer = {.kind = OptimizerKind::kSgd, .learning_rate = 0.01f};
  t.initializer = {.kind = InitializerKind::kUniform, .seed = 1};
  if (absl::StatusOr<TableConfig> r = (*client)->CreateTable(t); !r.ok()) return fail(r.status());
  CheckpointDriverOptions d;
  d.dir = dir;
  d.servers = servers;
  const std::string table_detail =
      absl::StrFormat("dense table of %u MiB (SGD), %u server(s)", mb, servers.size());

  // 1. Pushes keep going while a full checkpoint is written: the longest pause they see.
  double baseline_ms = 0, during_ms = 0, cut_ms = 0;
  uint64_t baseline_pushes = 0, during_pushes = 0;
  {
    Pusher pusher(**client, t.name, elems);
    absl::SleepFor(absl::Seconds(2));  // a window of equal standing without a checkpoint
    std::tie(baseline_ms, baseline_pushes) = pusher.TakeMax();
    d.incremental = false;
    absl::StatusOr<CheckpointRoundResult> r = RunCheckpointRound(d);
    if (!r.ok()) return fail(r.status());
    std::tie(during_ms, during_pushes) = pusher.TakeMax();
    cut_ms = r->max_cut_seconds * 1e3;
    if (absl::Status s = pusher.error(); !s.ok()) return fail(s);
  }
  Print({"push_max_latency_during_checkpoint", during_ms, "ms",
         absl::StrFormat(",\"baseline_ms\":%.3f,\"cut_gate_ms\":%.3f", baseline_ms, cut_ms),
         absl::StrFormat("%u pushes of 1 KiB during the write; without a checkpoint the longest "
                         "of %u took %.3f ms; the cut held the update gate %.3f ms",
                         during_pushes, baseline_pushes, baseline_ms, cut_ms)},
        o.json);

  // 2. A full checkpoint without concurrent pushes.
  d.incremental = false;
  absl::StatusOr<CheckpointRoundResult> full = RunCheckpointRound(d);
  if (!full.ok()) return fail(full.status());
  const double full_mbs = full->bytes / 1e6 / full->seconds;
  Print({"checkpoint_full_write", full_mbs, "MB/s",
         absl::StrFormat(",\"bytes\":%u,\"seconds\":%.3f,\"dd_MBps\":%.1f,\"ratio_to_dd\":%.3f",
                         full->bytes, full->seconds, *dd, full_mbs / *dd),
         table_detail},
        o.json);

  // 3. 1% of the blocks dirty, then an incremental checkpoint.
  const uint64_t block = kDefaultDenseBlockElems;
  const uint64_t blocks = (elems + block - 1) / block;
  const uint64_t dirty = std::max<uint64_t>(1, blocks / 100);
  std::vector<float> g(block, 1e-3f);
  for (uint64_t i = 0; i < dirty; ++i) {
    const uint64_t b = i * (blocks / dirty);
    const uint64_t n = std::min<uint64_t>(block, elems - b * block);
    if (absl::Status s = (*client)->PushDense(t.name, b * block, absl::MakeConstSpan(g.data(), n));
        !s.ok()) {
      return fail(s);
    }
  }
  d.incremental = true;
  absl::StatusOr<CheckpointRoundResult> inc = RunCheckpointRound(d);
  if (!inc.ok()) return fail(inc.status());
  Print({"checkpoint_incremental_1pct", inc->seconds, "s",
         absl::StrFormat(",\"full_seconds\":%.3f,\"ratio_to_full\":%.4f,\"bytes\":%u",
                         full->seconds, inc->seconds / full->seconds, inc->bytes),
         absl::StrFormat("%u of %u blocks dirty; incremental on %u", dirty, blocks, full->id)},
        o.json);

  // 4. Restore the chain (full + incremental) into the running servers: two copies of the
  // table in memory while it runs.
  const bool cold = DropCaches();
  absl::StatusOr<RestoreResult> restored = RestoreCluster(dir, servers, 1, inc->id);
  if (!restored.ok()) return fail(restored.status());
  const double restore_mbs = restored->bytes / 1e6 / restored->seconds;
  Print({"checkpoint_restore_live", restore_mbs, "MB/s",
         absl::StrFormat(",\"bytes\":%u,\"seconds\":%.3f,\"dd_MBps\":%.1f,\"ratio_to_dd\":%.3f,"
                         "\"page_cache\":\"%s\"",
                         restored->bytes, restored->seconds, *dd, restore_mbs / *dd,
                         cold ? "dropped" : "warm"),
         absl::StrFormat("%s; RestoreCluster into the running servers (prepare on all, commit)",
                         table_detail)},
        o.json);

  // 5. What recovery after a crash does: a fresh tessera-server started with --restore, timed
  // from its start to serving.
  if (cluster != nullptr) {
    client->reset();
    if (absl::Status s = cluster->Stop(); !s.ok()) return fail(s);
    const bool dropped = DropCaches();
    LocalClusterOptions ro;
    ro.server_binary = LocalCluster::DefaultServerBinary();
    ro.num_servers = static_cast<uint32_t>(o.num_servers);
    ro.extra_args = {"--checkpoint_dir=" + dir, "--restore",
                     absl::StrFormat("--max_table_bytes=%u", (mb + 64) << 20)};
    const absl::Time t0 = absl::Now();
    absl::StatusOr<std::unique_ptr<LocalCluster>> fresh = LocalCluster::Start(ro);
    if (!fresh.ok()) return fail(fresh.status());
    const double seconds = absl::ToDoubleSeconds(absl::Now() - t0);
    const double mbs = restored->bytes / 1e6 / seconds;
    Print({"checkpoint_restore_startup", mbs, "MB/s",
           absl::StrFormat(",\"bytes\":%u,\"seconds\":%.3f,\"dd_MBps\":%.1f,\"ratio_to_dd\":%.3f,"
                           "\"page_cache\":\"%s\"",
                           restored->bytes, seconds, *dd, mbs / *dd, dropped ? "dropped" : "warm"),
           absl::StrFormat("%s; tessera-server --restore, from process start to serving",
                           table_detail)},
          o.json);
    (void)(*fresh)->Stop();
    cluster.reset();
  }

  client->reset();
  if (cluster != nullptr) (void)cluster->Stop();
  if (o.checkpoint_dir.empty()) std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace tessera
