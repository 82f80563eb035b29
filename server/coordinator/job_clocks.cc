#include "server/coordinator/job_clocks.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"

namespace tessera {
namespace {

bool SameSpec(const v1::JobSpec& a, const v1::JobSpec& b) {
  return a.num_workers() == b.num_workers() && a.mode() == b.mode() &&
         a.staleness() == b.staleness() && a.worker_lease_ms() == b.worker_lease_ms() &&
         a.on_worker_death() == b.on_worker_death();
}

}  // namespace

absl::Duration JobClocks::Lease(const v1::JobSpec& spec) {
  return absl::Milliseconds(spec.worker_lease_ms() == 0 ? 5000 : spec.worker_lease_ms());
}

absl::StatusOr<v1::JoinJobResponse> JobClocks::Join(const v1::JoinJobRequest& req, absl::Time now) {
  const v1::JobSpec& spec = req.spec();
  if (spec.job().empty() || spec.num_workers() == 0 || spec.num_workers() > 100000 ||
      spec.mode() == v1::CONSISTENCY_MODE_UNSPECIFIED ||
      (spec.mode() != v1::CONSISTENCY_MODE_SSP && spec.staleness() != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "job spec needs a name, 1 to 100000 workers and a mode (staleness only with SSP); got "
        "'%s', %u workers, mode %d, staleness %u",
        spec.job(), spec.num_workers(), static_cast<int>(spec.mode()), spec.staleness()));
  }
  if (req.worker() >= spec.num_workers()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("worker %u of job '%s' must be below num_workers %u", req.worker(),
                        spec.job(), spec.num_workers()));
  }
  auto [it, created] = jobs_.try_emplace(spec.job());
  Job& job = it->second;
  if (created) {
    job.spec = spec;
    job.workers.resize(spec.num_workers());
    for (Worker& w : job.workers) w.deadline = now + Lease(spec);
    LogInfo(
        "job '%s' created: %u workers, %s%s", spec.job(), spec.num_workers(),
        v1::ConsistencyMode_Name(spec.mode()),
        spec.mode() == v1::CONSISTENCY_MODE_SSP ? absl::StrFormat("(%u)", spec.staleness()) : "");
  } else if (!SameSpec(job.spec, spec)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "job '%s' already runs with another spec (%u workers, %s, staleness %u)", spec.job(),
        job.spec.num_workers(), v1::ConsistencyMode_Name(job.spec.mode()), job.spec.staleness()));
  }
  if (!job.failure.empty()) return absl::FailedPreconditionError(job.failure);
  Worker& w = job.workers[req.worker()];
  w.incarnation = next_incarnation_++;
  w.alive = true;
  w.deadline = now + Lease(job.spec);
  v1::JoinJobResponse resp;
  resp.set_worker_incarnation(w.incarnation);
  resp.set_clock(w.clock);
  return resp;
}

absl::StatusOr<v1::ClockResponse> JobClocks::Check(const std::string& name, uint64_t step) const {
  auto it = jobs_.find(name);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrFormat("no job '%s'", name));
  const Job& job = it->second;
  if (!job.failure.empty()) return absl::FailedPreconditionError(job.failure);
  v1::ClockResponse resp;
  uint64_t min_clock = std::numeric_limits<uint64_t>::max();
  uint32_t live = 0;
  for (uint32_t i = 0; i < job.workers.size(); ++i) {
    const Worker& w = job.workers[i];
    if (!w.alive) {
      resp.add_dead_workers(i);
      continue;
    }
    ++live;
    min_clock = std::min(min_clock, w.clock);
  }
  if (live == 0) min_clock = 0;
  resp.set_min_clock(min_clock);
  resp.set_live_workers(live);
  const uint64_t slack = job.spec.mode() == v1::CONSISTENCY_MODE_SSP ? job.spec.staleness() : 0;
  resp.set_ready(step == 0 || job.spec.mode() == v1::CONSISTENCY_MODE_ASYNC ||
                 min_clock + 1 + slack >= step);
  return resp;
}

absl::StatusOr<v1::ClockResponse> JobClocks::Clock(const v1::ClockRequest& req, absl::Time now) {
  auto it = jobs_.find(req.job());
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrFormat("no job '%s'", req.job()));
  Job& job = it->second;
  if (req.worker() >= job.workers.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("job '%s' has no worker %u", req.job(), req.worker()));
  }
  if (!job.failure.empty()) return absl::FailedPreconditionError(job.failure);
  Worker& w = job.workers[req.worker()];
  if (w.incarnation != req.worker_incarnation()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "worker %u of job '%s' was replaced by another process (or never joined): rejoin",
        req.worker(), req.job()));
  }
  if (req.clock() < w.clock) {
    return absl::InvalidArgumentError(
        absl::StrFormat("worker %u of job '%s': clock %u is below its clock %u", req.worker(),
                        req.job(), req.clock(), w.clock));
  }
  w.clock = req.clock();
  w.deadline = now + Lease(job.spec);
  if (!w.alive) {
    w.alive = true;  // back within the job (policy CONTINUE): counted again
    LogInfo("worker %u of job '%s' is back at clock %u", req.worker(), req.job(), w.clock);
  }
  return Check(req.job(), req.wait_for());
}

std::vector<std::string> JobClocks::ExpireLeases(absl::Time now) {
  std::vector<std::string> changed;
  for (auto& [name, job] : jobs_) {
    if (!job.failure.empty()) continue;
    bool any = false;
    for (uint32_t i = 0; i < job.workers.size(); ++i) {
      Worker& w = job.workers[i];
      if (!w.alive || w.deadline > now) continue;
      w.alive = false;
      any = true;
      const std::string what =
          absl::StrFormat("worker %u of job '%s' %s (no clock for %d ms) at clock %u", i, name,
                          w.incarnation == 0 ? "never joined" : "died",
                          static_cast<int>(absl::ToInt64Milliseconds(Lease(job.spec))), w.clock);
      if (job.spec.on_worker_death() == v1::WORKER_DEATH_POLICY_FAIL) {
        job.failure = absl::StrCat("the job failed: ", what);
        LogWarning("%s", job.failure);
        break;
      }
      LogWarning("%s; the job goes on with the others", what);
    }
    if (any) changed.push_back(name);
  }
  return changed;
}

}  // namespace tessera
