// Training clocks through a real tessera-coordinator (docs/worker.md): SSP bounds, BSP
// barriers and dead workers.
#include <catch2/catch.hpp>
#include <thread>

#include "client/worker_clock.h"
#include "tests/test_cluster.h"

namespace tessera {
namespace {

std::unique_ptr<LocalCluster> StartCoordinator() { return testing::StartCoordinated(1, 1, 1); }

std::unique_ptr<WorkerClock> JoinAs(const LocalCluster& cluster, WorkerClockOptions o,
                                    uint32_t worker) {
  o.coordinator = cluster.coordinator_address();
  o.worker = worker;
  absl::StatusOr<std::unique_ptr<WorkerClock>> c = WorkerClock::Join(o);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return std::move(*c);
}

TEST_CASE("SSP(2) keeps a fast worker within two steps of the slowest", "[clocks]") {
  auto cluster = StartCoordinator();
  WorkerClockOptions o{
      .job = "ssp", .num_workers = 2, .mode = ConsistencyMode::kSsp, .staleness = 2};
  auto fast = JoinAs(*cluster, o, 0);
  auto slow = JoinAs(*cluster, o, 1);
  for (int step = 1; step <= 3; ++step) {
    TESSERA_REQUIRE_OK(fast->WaitToStart(absl::Seconds(10)).status());
    TESSERA_REQUIRE_OK(fast->Finish());
  }
  // Step 4 needs the slow worker at clock >= 1.
  CHECK(fast->WaitToStart(absl::Milliseconds(300)).status().code() ==
        absl::StatusCode::kDeadlineExceeded);
  TESSERA_REQUIRE_OK(slow->WaitToStart(absl::Seconds(10)).status());
  TESSERA_REQUIRE_OK(slow->Finish());
  absl::StatusOr<JobProgress> p = fast->WaitToStart(absl::Seconds(10));
  TESSERA_REQUIRE_OK(p.status());
  CHECK(p->min_clock == 1);
}

TEST_CASE("BSP: three workers move in lock step", "[clocks]") {
  auto cluster = StartCoordinator();
  WorkerClockOptions o{.job = "bsp", .num_workers = 3, .mode = ConsistencyMode::kBsp};
  std::vector<std::thread> threads;
  std::atomic<uint64_t> max_spread{0};
  std::vector<std::unique_ptr<WorkerClock>> clocks;
  for (uint32_t w = 0; w < 3; ++w) clocks.push_back(JoinAs(*cluster, o, w));
  for (uint32_t w = 0; w < 3; ++w) {
    threads.emplace_back([&, w] {
      for (int step = 1; step <= 20; ++step) {
        absl::StatusOr<JobProgress> p = clocks[w]->WaitToStart(absl::Seconds(30));
        if (!p.ok()) return;
        // Starting step `step` means every worker finished step - 1.
        const uint64_t spread = clocks[w]->clock() - p->min_clock;
        uint64_t seen = max_spread.load();
        while (spread > seen && !max_spread.compare_exchange_weak(seen, spread)) {
        }
        (void)clocks[w]->Finish();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& c : clocks) CHECK(c->clock() == 20);
  CHECK(max_spread.load() == 0);
}

TEST_CASE("a dead worker does not block an SSP job forever, or fails it by policy", "[clocks]") {
  auto cluster = StartCoordinator();
  for (bool fail : {false, true}) {
    INFO((fail ? "policy: fail" : "policy: continue"));
    WorkerClockOptions o{.job = fail ? "ssp-fail" : "ssp-continue",
                         .num_workers = 3,
                         .mode = ConsistencyMode::kSsp,
                         .staleness = 1,
                         .lease_ms = 500,
                         .fail_on_worker_death = fail};
    auto a = JoinAs(*cluster, o, 0);
    auto b = JoinAs(*cluster, o, 1);
    auto dying = JoinAs(*cluster, o, 2);
    dying.reset();  // stops renewing its lease at clock 0, like a killed process
    for (auto* w : {a.get(), b.get()}) {
      for (int step = 1; step <= 2; ++step) {
        TESSERA_REQUIRE_OK(w->WaitToStart(absl::Seconds(10)).status());
        TESSERA_REQUIRE_OK(w->Finish());
      }
    }
    // Step 3 needs every live worker at clock >= 1: only the dead one's expiry decides.
    absl::StatusOr<JobProgress> p = a->WaitToStart(absl::Seconds(20));
    if (!fail) {
      TESSERA_REQUIRE_OK(p.status());
      CHECK(p->live_workers == 2);
      CHECK(p->dead_workers == std::vector<uint32_t>{2});
    } else {
      CHECK(p.status().code() == absl::StatusCode::kFailedPrecondition);
      CHECK(std::string(p.status().message()).find("worker 2 of job 'ssp-fail' died") !=
            std::string::npos);
    }
  }
}

}  // namespace
}  // namespace tessera
