// Runs the control-plane simulation (control_plane_sim.h) over thousands of seeded schedules
// and proves it catches two broken promotion rules. Replay a failing seed with
//
//   TESSERA_SIM_SEED=1234 TESSERA_SIM_FAMILY=chaos build/server/control_plane_sim_test
//
// TESSERA_SIM_CHAOS_SCHEDULES and TESSERA_SIM_TIMED_SCHEDULES change how many run (8000 and
// 2000); TESSERA_SIM_STOP=N makes the [mutation] cases list up to N seeds that catch them.
#include "server/coordinator/control_plane_sim.h"

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/process_setup.h"

namespace tessera::control_plane_sim {
namespace {

struct Outcome {
  uint64_t schedules = 0;
  uint64_t steps = 0;
  std::vector<std::pair<uint64_t, std::string>> failures;  // seed, what
};

// Runs seeds [first, first + count) of `family` on two threads.
Outcome RunSchedules(Family family, uint64_t first, uint64_t count,
                     const CoordinatorOptions& broken, size_t stop_after_failures) {
  SetUpProcess();  // (the daemons' allocator settings: half the time otherwise goes to the kernel)
  Outcome out;
  absl::Mutex mu;
  std::atomic<uint64_t> next{first};
  auto work = [&] {
    SetThreadLogSink(nullptr, /*discard=*/true);
    while (true) {
      const uint64_t seed = next.fetch_add(1);
      if (seed >= first + count) break;
      {
        absl::MutexLock lock(&mu);
        if (out.failures.size() >= stop_after_failures) break;
      }
      Sim sim(seed, family, broken);
      std::string failure = sim.Run();
      absl::MutexLock lock(&mu);
      ++out.schedules;
      out.steps += sim.steps();
      if (!failure.empty()) out.failures.emplace_back(seed, std::move(failure));
    }
    SetThreadLogSink(nullptr, false);
  };
  std::thread other(work);
  work();
  other.join();
  std::sort(out.failures.begin(), out.failures.end());
  return out;
}

// The log of one schedule, for a failure report.
std::string Replay(uint64_t seed, Family family, const CoordinatorOptions& broken) {
  std::string log;
  SetThreadLogSink(&log);
  Sim sim(seed, family, broken);
  const std::string failure = sim.Run();
  SetThreadLogSink(nullptr);
  return absl::StrCat(log, "=> ", failure.empty() ? "passed" : failure, "\n");
}

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

void RequireClean(Family family, uint64_t count) {
  const absl::Time start = absl::Now();
  const Outcome out = RunSchedules(family, 1, count, {}, 1);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  WARN(absl::StrFormat("%s: %u schedules, %u steps in %.1f s", FamilyName(family), out.schedules,
                       out.steps, seconds));
  if (!out.failures.empty()) {
    const auto& [seed, what] = out.failures.front();
    FAIL(
        absl::StrFormat("%s schedule with seed %u failed: %s\nreplay: TESSERA_SIM_SEED=%u "
                        "TESSERA_SIM_FAMILY=%s %s\n%s",
                        FamilyName(family), seed, what, seed, FamilyName(family),
                        "build/server/control_plane_sim_test", Replay(seed, family, {})));
  }
  CHECK(out.schedules == count);
}

// A broken rule must be caught by some schedule of `family` within `count`.
void RequireCaught(Family family, uint64_t count, const CoordinatorOptions& broken,
                   const char* rule) {
  const Outcome out = RunSchedules(family, 1, count, broken, EnvOr("TESSERA_SIM_STOP", 1));
  for (const auto& [seed, what] : out.failures) {
    if (EnvOr("TESSERA_SIM_STOP", 1) > 1) std::printf("%lu %s\n", seed, what.c_str());
  }
  INFO(rule);
  REQUIRE_FALSE(out.failures.empty());
  WARN(absl::StrFormat("%s: caught by %s seed %u after %u schedules: %s", rule, FamilyName(family),
                       out.failures.front().first, out.schedules, out.failures.front().second));
}

TEST_CASE("control-plane simulation: chaos schedules keep every invariant", "[sim]") {
  if (const uint64_t seed = EnvOr("TESSERA_SIM_SEED", 0); seed != 0) {
    const char* f = std::getenv("TESSERA_SIM_FAMILY");
    const Family family =
        f != nullptr && std::string(f) == "timed" ? Family::kTimed : Family::kChaos;
    std::fputs(Replay(seed, family, {}).c_str(), stdout);
    return;
  }
  RequireClean(Family::kChaos, EnvOr("TESSERA_SIM_CHAOS_SCHEDULES", 8000));
}

TEST_CASE("control-plane simulation: timed failures are survived within a lease", "[sim]") {
  if (EnvOr("TESSERA_SIM_SEED", 0) != 0) return;
  RequireClean(Family::kTimed, EnvOr("TESSERA_SIM_TIMED_SCHEDULES", 2000));
}

TEST_CASE("control-plane simulation catches promoting a backup whose lease is merely unexpired",
          "[sim][mutation]") {
  RequireCaught(Family::kTimed, 2000, {.promote_unproven_for_testing = true},
                "promotion on an unexpired lease");
}

TEST_CASE("control-plane simulation catches identity by address instead of incarnation",
          "[sim][mutation]") {
  RequireCaught(Family::kChaos, 2000, {.ignore_incarnation_for_testing = true},
                "identity by address");
}

TEST_CASE("control-plane simulation catches a primary that stops counting a FAILED backup itself",
          "[sim][mutation]") {
  RequireCaught(Family::kChaos, 2000, {.uncount_failed_backup_for_testing = true},
                "a FAILED backup uncounted before it is JOINING");
}

}  // namespace
}  // namespace tessera::control_plane_sim
