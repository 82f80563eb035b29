// `tessera checkpoint create | list | inspect | restore | merge | run`.
#include <signal.h>

#include <csignal>
#include <cstdio>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/admin.h"
#include "proto/checkpoint.pb.h"
#include "storage/checkpoint_store.h"
#include "storage/table_file.h"
#include "tools/commands.h"

namespace {
volatile std::sig_atomic_t g_stop_requested = 0;
}  // namespace

namespace tessera {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "tessera checkpoint: %s\n", s.ToString().c_str());
  return 1;
}

std::string When(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(unix_ms),
                          absl::LocalTimeZone());
}

void PrintRound(const CheckpointRoundResult& r) {
  std::printf(
      "checkpoint %llu written (%s): %llu rows, %.1f MB in %.2f s (%.0f MB/s); longest cut "
      "pause %.3f ms\n",
      static_cast<unsigned long long>(r.id),
      r.parent_id == 0 ? "full" : absl::StrFormat("incremental on %u", r.parent_id).c_str(),
      static_cast<unsigned long long>(r.rows), r.bytes / 1e6, r.seconds,
      r.bytes / 1e6 / std::max(r.seconds, 1e-9), r.max_cut_seconds * 1e3);
  if (!r.removed_partial.empty()) {
    std::printf("  removed partial checkpoints: %s\n",
                absl::StrJoin(r.removed_partial, ", ").c_str());
  }
  if (!r.removed_by_retention.empty()) {
    std::printf("  removed by retention: %s\n",
                absl::StrJoin(r.removed_by_retention, ", ").c_str());
  }
}

int List(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
      storage::CheckpointStore::Open(dir);
  if (!store.ok()) return Fail(store.status());
  std::vector<uint64_t> partial;
  absl::StatusOr<std::vector<uint64_t>> ids = (*store)->List(&partial);
  if (!ids.ok()) return Fail(ids.status());
  std::printf("%-6s %-19s %-16s %7s %12s %10s %8s\n", "id", "created", "kind", "shards", "rows",
              "MB", "seconds");
  for (uint64_t id : *ids) {
    storage::v1::CheckpointManifest m;
    if (absl::Status s = (*store)->ReadManifest(id, &m); !s.ok()) return Fail(s);
    uint64_t rows = 0, bytes = 0;
    for (const auto& p : m.parts()) {
      rows += p.rows();
      bytes += p.bytes();
    }
    const std::string kind =
        m.parent_id() == 0 ? "full" : absl::StrFormat("incr on %u", m.parent_id());
    std::printf("%-6llu %-19s %-16s %7u %12llu %10.1f %8.2f\n", static_cast<unsigned long long>(id),
                When(m.created_unix_ms()).c_str(), kind.c_str(), m.num_shards(),
                static_cast<unsigned long long>(rows), bytes / 1e6, m.seconds());
  }
  if (!partial.empty()) {
    std::printf("partial (ignored; removed by the next round): %s\n",
                absl::StrJoin(partial, ", ").c_str());
  }
  return 0;
}

int Inspect(const std::string& dir, uint64_t id, bool verify) {
  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
      storage::CheckpointStore::Open(dir);
  if (!store.ok()) return Fail(store.status());
  if (id == 0) id = (*store)->NewestOrZero();
  absl::StatusOr<std::vector<storage::v1::CheckpointManifest>> chain = (*store)->ReadChain(id);
  if (!chain.ok()) return Fail(chain.status());
  const storage::v1::CheckpointManifest& m = chain->back();
  std::printf("checkpoint %llu, created %s, chain %s, %u shards, %u vshards, epoch %llu\n",
              static_cast<unsigned long long>(id), When(m.created_unix_ms()).c_str(),
              absl::StrJoin(m.chain(), " <- ").c_str(), m.num_shards(), m.num_vshards(),
              static_cast<unsigned long long>(m.shard_map_epoch()));
  for (const auto& part : m.parts()) {
    std::printf(
        "  shard %u: cut at generation %llu (gate held %.3f ms), written in %.2f s, %d "
        "exactly-once clients\n",
        part.shard_index(), static_cast<unsigned long long>(part.cut_generation()),
        part.cut_seconds() * 1e3, part.write_seconds(), part.dedup_size());
    for (const auto& t : part.tables()) {
      std::printf(
          "    %-20s %-6s %-5s %10llu rows %10.2f MB in %d file(s)\n", t.spec().name().c_str(),
          t.spec().kind() == v1::TABLE_KIND_DENSE ? "dense" : "sparse", t.full() ? "full" : "incr",
          static_cast<unsigned long long>(t.rows()), t.bytes() / 1e6, t.files_size());
    }
  }
  if (!verify) return 0;
  absl::StatusOr<size_t> files = VerifyCheckpoint(dir, id);
  if (!files.ok()) return Fail(files.status());
  std::printf("verified: every file of the chain (%zu) matches its size and CRC32C\n", *files);
  return 0;
}

}  // namespace

int RunCheckpoint(const CheckpointCommandOptions& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (o.dir.empty()) {
    std::fprintf(stderr, "tessera checkpoint: --checkpoint_dir is required\n");
    return 2;
  }
  CheckpointDriverOptions d;
  d.credentials = o.credentials;
  d.dir = o.dir;
  d.servers = o.connect;
  d.shard_map_epoch = o.shard_map_epoch;
  d.incremental = !o.full;
  d.keep_last = o.keep_last;
  d.testing_crash_point = o.testing_crash_point;
  const bool needs_servers = o.action == "create" || o.action == "restore" || o.action == "run";
  if (needs_servers && o.connect.empty() && o.coordinator.empty()) {
    std::fprintf(stderr, "tessera checkpoint %s: --connect is required\n", o.action.c_str());
    return 2;
  }
  if (o.action == "create") {
    absl::StatusOr<CheckpointRoundResult> r = RunCheckpointRound(d);
    if (!r.ok()) return Fail(r.status());
    PrintRound(*r);
    return 0;
  }
  if (o.action == "list") return List(o.dir);
  if (o.action == "inspect") return Inspect(o.dir, o.id, o.verify);
  if (o.action == "restore" && !o.coordinator.empty()) {
    absl::StatusOr<ClusterRestoreResult> r = RestoreThroughCoordinator(
        o.coordinator, o.dir, o.id, absl::Minutes(10), o.credentials, o.lifecycle);
    if (!r.ok()) return Fail(r.status());
    std::printf("restored checkpoint %llu through %s: %llu rows, %.1f MB in %.2f s%s\n",
                static_cast<unsigned long long>(r->restore.id), o.coordinator.c_str(),
                static_cast<unsigned long long>(r->restore.rows), r->restore.bytes / 1e6,
                r->restore.seconds,
                r->recovered_shards.empty()
                    ? ""
                    : absl::StrCat("; lost shard(s) ", absl::StrJoin(r->recovered_shards, ", "),
                                   " serve again (their backups catch up now)")
                          .c_str());
    return 0;
  }
  if (o.action == "restore") {
    absl::StatusOr<RestoreResult> r = RestoreCluster(o.dir, o.connect, o.shard_map_epoch, o.id,
                                                     absl::Hours(1), o.credentials, o.lifecycle);
    if (!r.ok()) return Fail(r.status());
    std::printf("restored checkpoint %llu on %zu servers: %llu rows, %.1f MB in %.2f s\n",
                static_cast<unsigned long long>(r->id), o.connect.size(),
                static_cast<unsigned long long>(r->rows), r->bytes / 1e6, r->seconds);
    return 0;
  }
  if (o.action == "merge") {
    absl::StatusOr<uint64_t> merged = MergeCheckpointChain(o.dir, o.id);
    if (!merged.ok()) return Fail(merged.status());
    std::printf("merged the chain of checkpoint %llu into full checkpoint %llu\n",
                static_cast<unsigned long long>(o.id), static_cast<unsigned long long>(*merged));
    return 0;
  }
  if (o.action == "run") {
    if (o.every_s <= 0) {
      std::fprintf(stderr, "tessera checkpoint run: --every_s must be > 0\n");
      return 2;
    }
    // Until SIGINT or SIGTERM: one round every --every_s seconds. A handler (not a blocked
    // mask and sigwait) because threads that libraries start before main (OpenBLAS's pool)
    // would otherwise take the signal with its default action.
    struct sigaction sa = {};
    sa.sa_handler = [](int) { g_stop_requested = 1; };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    auto wait_or_stop = [&](absl::Duration d) {  // true when asked to stop
      const absl::Time deadline = absl::Now() + d;
      while (g_stop_requested == 0 && absl::Now() < deadline) {
        absl::SleepFor(std::min(absl::Milliseconds(20), deadline - absl::Now()));
      }
      return g_stop_requested != 0;
    };
    int failures = 0;
    uint64_t rounds = 0;
    do {
      // Every full_every-th round is full, so that retention can drop whole old chains.
      d.incremental = !o.full && (o.full_every == 0 || rounds++ % o.full_every != 0);
      absl::StatusOr<CheckpointRoundResult> r = RunCheckpointRound(d);
      if (r.ok()) {
        PrintRound(*r);
      } else {
        ++failures;
        std::fprintf(stderr, "tessera checkpoint run: %s\n", r.status().ToString().c_str());
      }
    } while (!wait_or_stop(absl::Seconds(o.every_s)));
    return failures == 0 ? 0 : 1;
  }
  std::fprintf(stderr,
               "tessera checkpoint: unknown action '%s' (create, list, inspect, restore, merge, "
               "run)\n",
               o.action.c_str());
  return 2;
}

}  // namespace tessera
