#include "server/coordinator/job_clocks.h"

#include <catch2/catch.hpp>

namespace tessera {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(5000);

v1::JoinJobRequest JoinReq(uint32_t worker, v1::ConsistencyMode mode, uint32_t staleness = 0,
                           v1::WorkerDeathPolicy policy = v1::WORKER_DEATH_POLICY_CONTINUE) {
  v1::JoinJobRequest r;
  r.mutable_spec()->set_job("j");
  r.mutable_spec()->set_num_workers(3);
  r.mutable_spec()->set_mode(mode);
  r.mutable_spec()->set_staleness(staleness);
  r.mutable_spec()->set_worker_lease_ms(1000);
  r.mutable_spec()->set_on_worker_death(policy);
  r.set_worker(worker);
  return r;
}

struct Job {
  JobClocks clocks;
  std::vector<uint64_t> incarnations;

  Job(v1::ConsistencyMode mode, uint32_t staleness = 0,
      v1::WorkerDeathPolicy policy = v1::WORKER_DEATH_POLICY_CONTINUE) {
    for (uint32_t w = 0; w < 3; ++w) {
      absl::StatusOr<v1::JoinJobResponse> r = clocks.Join(JoinReq(w, mode, staleness, policy), kT0);
      REQUIRE(r.ok());
      incarnations.push_back(r->worker_incarnation());
    }
  }
  // Worker w reports `clock` and asks to start step `step`.
  absl::StatusOr<v1::ClockResponse> Tick(uint32_t w, uint64_t clock, uint64_t step,
                                         absl::Time now = kT0) {
    v1::ClockRequest r;
    r.set_job("j");
    r.set_worker(w);
    r.set_worker_incarnation(incarnations[w]);
    r.set_clock(clock);
    r.set_wait_for(step);
    return clocks.Clock(r, now);
  }
};

TEST_CASE("BSP: step k starts once every worker finished step k - 1", "[clocks]") {
  Job j(v1::CONSISTENCY_MODE_BSP);
  CHECK(j.Tick(0, 0, 1)->ready());  // everyone is at 0: step 1 may start
  CHECK_FALSE(j.Tick(0, 1, 2)->ready());
  CHECK_FALSE(j.Tick(1, 1, 2)->ready());
  CHECK(j.Tick(2, 1, 2)->ready());  // the last one finished step 1
  CHECK(j.clocks.Check("j", 2)->ready());
  CHECK(j.clocks.Check("j", 2)->min_clock() == 1);
}

TEST_CASE("SSP(2): a worker runs at most 2 steps ahead of the slowest", "[clocks]") {
  Job j(v1::CONSISTENCY_MODE_SSP, 2);
  // Worker 0 races ahead while the others stay at clock 0.
  CHECK(j.Tick(0, 1, 2)->ready());
  CHECK(j.Tick(0, 2, 3)->ready());
  CHECK_FALSE(j.Tick(0, 3, 4)->ready());  // 4 - 1 - 2 = 1 > 0
  (void)j.Tick(1, 1, 0);
  CHECK_FALSE(j.clocks.Check("j", 4)->ready());
  (void)j.Tick(2, 1, 0);
  CHECK(j.clocks.Check("j", 4)->ready());
}

TEST_CASE("async never waits", "[clocks]") {
  Job j(v1::CONSISTENCY_MODE_ASYNC);
  CHECK(j.Tick(0, 100, 101)->ready());
}

TEST_CASE("a dead worker stops counting, or fails the job, by policy", "[clocks]") {
  const absl::Time later = kT0 + absl::Milliseconds(1500);
  SECTION("continue") {
    Job j(v1::CONSISTENCY_MODE_SSP, 1);
    (void)j.Tick(0, 5, 0, kT0 + absl::Milliseconds(900));
    (void)j.Tick(1, 5, 0, kT0 + absl::Milliseconds(900));
    CHECK_FALSE(j.clocks.Check("j", 7)->ready());  // worker 2 is at 0
    CHECK(j.clocks.ExpireLeases(later) == std::vector<std::string>{"j"});
    absl::StatusOr<v1::ClockResponse> r = j.clocks.Check("j", 7);
    CHECK(r->ready());
    CHECK(r->live_workers() == 2);
    CHECK(r->dead_workers_size() == 1);
  }
  SECTION("fail") {
    Job j(v1::CONSISTENCY_MODE_SSP, 1, v1::WORKER_DEATH_POLICY_FAIL);
    (void)j.Tick(0, 5, 0, kT0 + absl::Milliseconds(900));
    (void)j.Tick(1, 5, 0, kT0 + absl::Milliseconds(900));
    j.clocks.ExpireLeases(later);
    absl::StatusOr<v1::ClockResponse> r = j.Tick(0, 6, 7, later);
    CHECK(r.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(std::string(r.status().message()).find("worker 2 of job 'j' died") != std::string::npos);
  }
}

TEST_CASE("bad clock calls are refused clearly", "[clocks]") {
  Job j(v1::CONSISTENCY_MODE_BSP);
  (void)j.Tick(0, 3, 0);
  CHECK(j.Tick(0, 2, 0).status().code() == absl::StatusCode::kInvalidArgument);  // backwards
  v1::ClockRequest stale;
  stale.set_job("j");
  stale.set_worker(0);
  stale.set_worker_incarnation(12345);
  CHECK(j.clocks.Clock(stale, kT0).status().code() == absl::StatusCode::kFailedPrecondition);
  stale.set_job("nope");
  CHECK(j.clocks.Clock(stale, kT0).status().code() == absl::StatusCode::kNotFound);
  // Joining with another spec, or a worker index out of range.
  CHECK(j.clocks.Join(JoinReq(0, v1::CONSISTENCY_MODE_ASYNC), kT0).status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(j.clocks.Join(JoinReq(3, v1::CONSISTENCY_MODE_BSP), kT0).status().code() ==
        absl::StatusCode::kInvalidArgument);
  // A restarted worker rejoins and continues from its clock.
  absl::StatusOr<v1::JoinJobResponse> again =
      j.clocks.Join(JoinReq(0, v1::CONSISTENCY_MODE_BSP), kT0);
  REQUIRE(again.ok());
  CHECK(again->clock() == 3);
  CHECK(again->worker_incarnation() != j.incarnations[0]);
}

TEST_CASE("jobs are bounded in number size and name before they are made", "[clocks]") {
  JobClocks clocks;
  v1::JoinJobRequest r = JoinReq(0, v1::CONSISTENCY_MODE_BSP);
  r.mutable_spec()->set_num_workers(100000);
  for (int i = 0; i < 10; ++i) {  // 10 x 100,000 workers: the limit of 1,000,000
    r.mutable_spec()->set_job("big" + std::to_string(i));
    REQUIRE(clocks.Join(r, kT0).ok());
  }
  r.mutable_spec()->set_job("one more");
  r.mutable_spec()->set_num_workers(1);
  const absl::Status full = clocks.Join(r, kT0).status();
  CHECK(full.code() == absl::StatusCode::kResourceExhausted);
  CHECK(full.message().find("1000000 workers") != absl::string_view::npos);
  r.mutable_spec()->set_job("big3");  // an existing job is joined as before
  r.mutable_spec()->set_num_workers(100000);
  CHECK(clocks.Join(r, kT0).ok());
  r.mutable_spec()->set_job(std::string(100000, 'n'));
  const absl::Status named = clocks.Join(r, kT0).status();
  CHECK(named.code() == absl::StatusCode::kInvalidArgument);
  CHECK(named.message().size() < 200);
}

}  // namespace
}  // namespace tessera
