// A randomized model-based test of the shard state machine (docs/state_machine.md): client
// threads drive creates, drops, sparse and dense pushes (with retries, BSP accumulation and
// assigns), pulls, ApplySteps, checkpoints and restores concurrently against a primary, while
// a replicator thread replays its log on a backup (snapshots after restores); at every
// quiescent point the primary's and the backup's state digests must be equal, and so must a
// fresh replica's that replays the whole history from a snapshot. One table has every lifecycle
// policy (TTL, capacity, admission), another a disk tier: lifecycle rounds of the primary
// (removals, demotions) and operators' removals and demotions (with stale stamps too) are
// operations of the histories.
//
// TESSERA_MODEL_HISTORIES (default 1000) and TESSERA_MODEL_SEED (first seed, default 1).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/core_test_util.h"

namespace tessera {
namespace {

using namespace tessera::testing;  // NOLINT

struct TableKindSpec {
  std::string name;
  TableConfig config;
  uint32_t dim;  // sparse: the row dim; dense: 0
};

std::vector<TableKindSpec> Specs() {
  // A table with every lifecycle policy (docs/embedding_lifecycle.md): a TTL, a capacity below
  // the keys the clients touch, admission at the second push.
  TableConfig life = SparseConfig("s_life", 2, OptimizerKind::kAdagrad);
  life.lifecycle = {.ttl_seconds = 1,
                    .capacity_rows = 12,
                    .admission_min_count = 2,
                    .admission_sketch_width = 1024};  // (small: snapshots copy it whole)
  // And one with a disk tier: a few rows in RAM, rows idle for a second demoted, a TTL over
  // both tiers, exact admission.
  TableConfig tier = SparseConfig("s_tier", 2, OptimizerKind::kAdam);
  tier.lifecycle = {.ttl_seconds = 2,
                    .admission_min_count = 2,
                    .admission_exact = true,
                    .admission_exact_keys = 256,  // (small: halvings happen)
                    .tier_ram_rows = 6,
                    .tier_idle_seconds = 1};
  return {{"s_adam", SparseConfig("s_adam", 3, OptimizerKind::kAdam), 3},
          {"s_ftrl", SparseConfig("s_ftrl", 2, OptimizerKind::kFtrl), 2},
          {"d_adagrad", DenseConfig("d_adagrad", 300, 50, OptimizerKind::kAdagrad), 0},
          {"s_life", life, 2},
          {"s_tier", tier, 2}};
}

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::strtoull(v, nullptr, 10) : fallback;
}

struct Totals {
  std::atomic<uint64_t> entries{0}, snapshots{0}, ok{0}, refused{0}, removed{0};
};

// One history; returns a description of the first divergence, or "".
std::string RunHistory(uint64_t seed, const std::string& dir, Totals* totals) {
  std::mt19937_64 setup(seed);
  ServerCoreOptions p, b;
  p.apply_threads = 1 + setup() % 4;
  b.apply_threads = 1 + setup() % 3;
  p.num_vshards = b.num_vshards = 16;
  p.checkpoint_dir = dir;
  p.checkpoint_write_threads = 1;
  // The primary's clock moves 50 ms at every reading (entry times, lifecycle decisions), so
  // that TTLs expire within a history; lifecycle rounds are client operations here.
  std::atomic<int64_t> clock{1'000'000'000};
  p.testing_clock_ms = [&clock] { return clock.fetch_add(50); };
  p.lifecycle_interval_ms = b.lifecycle_interval_ms = 0;
  ReplicaPair pair(p, b);
  ServerCore& core = *pair.primary;
  const std::vector<TableKindSpec> specs = Specs();
  std::atomic<uint64_t> next_checkpoint{1};
  std::atomic<uint64_t> step{1};  // the BSP step clients accumulate into
  std::string failure;
  absl::Mutex failure_mu;
  auto fail = [&](const std::string& what) {
    absl::MutexLock lock(&failure_mu);
    if (failure.empty()) failure = what;
  };

  auto client = [&](uint64_t id, int ops) {
    std::mt19937_64 rng(seed * 1000 + id);
    uint64_t seq = 0;
    v1::PushSparseRequest last_sparse;
    bool have_last = false;
    for (int op = 0; op < ops; ++op) {
      const TableKindSpec& t = specs[rng() % specs.size()];
      absl::Status st;
      const int what = static_cast<int>(rng() % 100);
      if (what >= 96) {
        totals->removed += core.RunLifecycle();  // the primary's task: removals in the log
        continue;
      }
      if (what >= 93 && t.dim != 0) {
        // An operator's removal: random keys, sometimes with (mostly stale) stamps.
        std::vector<uint64_t> keys;
        for (int i = 0; i < 1 + static_cast<int>(rng() % 6); ++i) keys.push_back(rng() % 40);
        std::sort(keys.begin(), keys.end());
        keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
        v1::RemoveRowsRequest req = RemoveRowsReq(t.name, keys);
        // (Into the disk tier, for a table with one: an operator's demotion.)
        if (t.config.lifecycle.tier() && rng() % 2 == 0) req.set_reason(v1::REMOVE_REASON_DEMOTE);
        if (t.config.lifecycle.enabled() && rng() % 2 == 0) {
          std::vector<uint64_t> stamps(keys.size());
          for (uint64_t& s : stamps) s = (uint64_t{1'000'000 + rng() % 3} << 32) | (rng() % 3);
          PackedAssign<uint64_t>(req.mutable_stamps(), stamps);
        }
        v1::RemoveRowsResponse r;
        st = core.RemoveRows(req, &r);
        (st.ok() ? totals->ok : totals->refused).fetch_add(1);
        continue;
      }
      if (what < 6) {
        v1::CreateTableResponse r;
        st = core.CreateTable(CreateReq(t.config), &r);
      } else if (what < 9) {
        v1::DropTableResponse r;
        st = core.DropTable(DropReq(t.name), &r);
      } else if (what < 12) {
        st = WriteCheckpoint(core, dir, next_checkpoint.fetch_add(1));
      } else if (what < 14) {
        st = RestoreNewest(core);
      } else if (what < 20) {
        v1::ApplyStepResponse r;
        const uint64_t s = step.load();
        st = core.ApplyStep(ApplyStepReq(t.name, s, 0.5f), &r);
        if (st.ok()) {
          uint64_t expected = s;
          step.compare_exchange_strong(expected, s + 1);
        }
      } else if (what < 28) {
        if (t.dim == 0) continue;
        std::vector<uint64_t> keys;
        for (int i = 0; i < 4; ++i) keys.push_back(rng() % 40);
        (void)PullRows(core, t.name, t.dim, keys);
        continue;
      } else if (what < 32 && have_last) {
        v1::PushResponse r;  // a retry of the last push: applied at most once
        st = core.PushSparse(last_sparse, &r);
      } else if (t.dim == 0) {
        std::vector<float> g(1 + rng() % 120);
        for (float& x : g) x = std::uniform_real_distribution<float>(-2, 2)(rng);
        const uint64_t offset = rng() % (300 - g.size() + 1);
        ++seq;
        const uint64_t acc = rng() % 4 == 0 ? step.load() : 0;
        v1::PushDenseRequest req = DensePushReq(t.name, offset, g, id, seq, seq, acc);
        req.set_assign(acc == 0 && rng() % 10 == 0);
        v1::PushResponse r;
        st = core.PushDense(req, &r);
      } else {
        std::vector<uint64_t> keys;
        for (uint64_t k = rng() % 8; keys.size() < 1 + rng() % 12; k += 1 + rng() % 5) {
          keys.push_back(k);
        }
        std::vector<float> g(keys.size() * t.dim);
        for (float& x : g) x = std::uniform_real_distribution<float>(-2, 2)(rng);
        if (rng() % 50 == 0) g[0] = 1e20f;  // numeric safety is replicated too
        ++seq;
        const uint64_t acc = rng() % 4 == 0 ? step.load() : 0;
        last_sparse = SparsePushReq(t.name, t.dim, keys, g, id, seq, seq, acc);
        last_sparse.set_assign(acc == 0 && rng() % 10 == 0);
        have_last = true;
        v1::PushResponse r;
        st = core.PushSparse(last_sparse, &r);
      }
      (st.ok() ? totals->ok : totals->refused).fetch_add(1);
    }
  };

  const int phases = 3;
  for (int phase = 0; phase < phases && failure.empty(); ++phase) {
    std::atomic<bool> done{false};
    std::thread replicator([&] {
      // Replays concurrently with the clients, as a backup does.
      while (!done.load()) {
        if (absl::Status st = pair.Replicate(); !st.ok()) {
          fail(absl::StrCat("phase ", phase, ": replay refused: ", st.ToString()));
          return;
        }
      }
    });
    std::vector<std::thread> clients;
    const int num_clients = 2 + static_cast<int>(setup() % 2);
    for (int c = 0; c < num_clients; ++c) {
      clients.emplace_back(client, phase * 10 + c + 1, 10 + static_cast<int>(setup() % 20));
    }
    for (auto& t : clients) t.join();
    done.store(true);
    replicator.join();
    if (!failure.empty()) break;
    if (absl::Status st = pair.Replicate(); !st.ok()) {
      fail(absl::StrCat("phase ", phase, ": replay refused: ", st.ToString()));
      break;
    }
    // A quiescent point: every replica has applied the same entries.
    if (pair.primary->lsn() != pair.backup->lsn()) {
      fail(
          absl::StrCat("phase ", phase, ": LSN ", pair.primary->lsn(), " vs ", pair.backup->lsn()));
    } else if (pair.primary->StateDigest() != pair.backup->StateDigest()) {
      fail(absl::StrCat("phase ", phase, ": digests differ at LSN ", pair.primary->lsn()));
    }
  }
  if (failure.empty()) {
    // A replica that joins now, by snapshot, holds the same state too.
    ReplicaPair fresh({}, b);
    fresh.primary.reset();
    pair.backup.swap(fresh.backup);
    if (absl::Status st = pair.Resync(); !st.ok()) {
      fail("snapshot of the final state refused: " + st.ToString());
    } else if (pair.primary->StateDigest() != pair.backup->StateDigest()) {
      fail("a replica that joined by snapshot differs");
    }
  }
  totals->entries += pair.primary->lsn();
  totals->snapshots += pair.snapshots;
  return failure;
}

TEST_CASE("primary and backup agree at every quiescent point of random concurrent histories",
          "[model]") {
  const uint64_t histories = EnvOr("TESSERA_MODEL_HISTORIES", 1000);
  const uint64_t first = EnvOr("TESSERA_MODEL_SEED", 1);
  const std::string root =
      std::filesystem::temp_directory_path() / absl::StrCat("tessera_model_", getpid());
  uint64_t divergences = 0;
  Totals totals;
  for (uint64_t seed = first; seed < first + histories; ++seed) {
    const std::string dir = absl::StrCat(root, "/", seed);
    std::filesystem::create_directories(dir);
    const std::string failure = RunHistory(seed, dir, &totals);
    std::filesystem::remove_all(dir);
    if (!failure.empty()) {
      ++divergences;
      UNSCOPED_INFO("seed " << seed << " (TESSERA_MODEL_SEED=" << seed
                            << " TESSERA_MODEL_HISTORIES=1): " << failure);
      if (divergences >= 3) break;
    }
  }
  std::filesystem::remove_all(root);
  std::printf(
      "model-based test: %llu histories, %llu entries, %llu snapshots installed, %llu "
      "changes accepted, %llu refused, %llu rows removed by lifecycle rounds, %llu "
      "divergences\n",
      static_cast<unsigned long long>(histories),
      static_cast<unsigned long long>(totals.entries.load()),
      static_cast<unsigned long long>(totals.snapshots.load()),
      static_cast<unsigned long long>(totals.ok.load()),
      static_cast<unsigned long long>(totals.refused.load()),
      static_cast<unsigned long long>(totals.removed.load()),
      static_cast<unsigned long long>(divergences));
  CHECK(divergences == 0);
}

}  // namespace
}  // namespace tessera
