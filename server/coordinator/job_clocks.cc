#include "server/coordinator/job_clocks.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"

namespace tessera {
namespace {

constexpr size_t kMaxJobNameBytes = 256;
constexpr size_t kMaxJobs = 4096;
constexpr uint64_t kMaxWorkers = 1'000'000;

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
  if (spec.job().size() > kMaxJobNameBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("a job name of %u bytes (at most %u)",
                                                      spec.job().size(), kMaxJobNameBytes));
  }
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
  // A new job's workers are counted before it is made: jobs are never forgotten (a
  // coordinator's jobs live as long as it), so their number and size are bounded.
  if (!jobs_.contains(spec.job()) &&
      (jobs_.size() >= kMaxJobs || workers_ + spec.num_workers() > kMaxWorkers)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the coordinator holds %u jobs of %u workers in all (at most %u jobs, %u workers): "
        "restart it to forget finished jobs",
        jobs_.size(), workers_, kMaxJobs, kMaxWorkers));
  }
  auto [it, created] = jobs_.try_emplace(spec.job());
  Job& job = it->second;
  if (created) {
    workers_ += spec.num_workers();
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

absl::StatusOr<JobClocks::Job*> JobClocks::Find(const std::string& name, uint32_t worker,
                                                uint64_t incarnation) {
  auto it = jobs_.find(name);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrFormat("no job '%s'", name.substr(0, 128)));
  }
  Job& job = it->second;
  if (worker >= job.workers.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("job '%s' has no worker %u", name, worker));
  }
  if (!job.failure.empty()) return absl::FailedPreconditionError(job.failure);
  Worker& w = job.workers[worker];
  if (w.incarnation != incarnation) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "worker %u of job '%s' was replaced by another process (or never joined): rejoin", worker,
        name));
  }
  return &job;
}

void JobClocks::Renew(const std::string& name, Job& job, uint32_t worker, absl::Time now) {
  Worker& w = job.workers[worker];
  w.deadline = now + Lease(job.spec);
  if (!w.alive) {
    w.alive = true;  // back within the job (policy CONTINUE): counted again
    LogInfo("worker %u of job '%s' is back at clock %u", worker, name, w.clock);
  }
}

absl::StatusOr<v1::ClockResponse> JobClocks::Clock(const v1::ClockRequest& req, absl::Time now) {
  absl::StatusOr<Job*> found = Find(req.job(), req.worker(), req.worker_incarnation());
  if (!found.ok()) return found.status();
  Job& job = **found;
  Worker& w = job.workers[req.worker()];
  if (req.clock() < w.clock) {
    return absl::InvalidArgumentError(
        absl::StrFormat("worker %u of job '%s': clock %u is below its clock %u", req.worker(),
                        req.job(), req.clock(), w.clock));
  }
  w.clock = req.clock();
  Renew(req.job(), job, req.worker(), now);
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

namespace {

constexpr size_t kMaxKeyBytes = 256;
constexpr size_t kMaxValueBytes = 64 << 10;
constexpr size_t kMaxJobKeyBytes = 16 << 20;

}  // namespace

absl::Status JobClocks::SetKey(Job& job, const v1::AllReduceSetOp& op) {
  if (op.key().size() > kMaxKeyBytes || op.value().size() > kMaxValueBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("all-reduce: a rendezvous key of %u bytes or a value of %u bytes (at most "
                        "%u and %u)",
                        op.key().size(), op.value().size(), kMaxKeyBytes, kMaxValueBytes));
  }
  const uint64_t newest = job.rounds->generation();
  if (op.generation() + 1 < newest || op.generation() > newest + 1) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "all-reduce: keys of generation %u are not kept (the group is at generation %u)",
        op.generation(), newest));
  }
  // Generations before the last two go first; then the key is counted before it is stored.
  while (!job.keys.empty() && job.keys.begin()->first.first + 1 < newest) {
    job.key_bytes -= job.keys.begin()->first.second.size() + job.keys.begin()->second.size();
    job.keys.erase(job.keys.begin());
  }
  const std::pair<uint64_t, std::string> at{op.generation(), op.key()};
  auto it = job.keys.find(at);
  const size_t old = it == job.keys.end() ? 0 : at.second.size() + it->second.size();
  const size_t bytes = op.key().size() + op.value().size();
  if (job.key_bytes - old + bytes > kMaxJobKeyBytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "all-reduce: the job's rendezvous keys would hold over %u bytes", kMaxJobKeyBytes));
  }
  job.key_bytes = job.key_bytes - old + bytes;
  job.keys[at] = op.value();
  return absl::OkStatus();
}

absl::StatusOr<v1::AllReduceResponse> JobClocks::AllReduce(const v1::AllReduceRequest& req,
                                                           absl::Time now) {
  if (req.op_case() == v1::AllReduceRequest::OP_NOT_SET) {
    return absl::InvalidArgumentError("AllReduceRequest needs one operation");
  }
  absl::StatusOr<Job*> found = Find(req.job(), req.worker(), req.worker_incarnation());
  if (!found.ok()) return found.status();
  Job& job = **found;
  Renew(req.job(), job, req.worker(), now);
  if (job.rounds == nullptr) job.rounds = std::make_unique<AllReduceRounds>(job.spec.num_workers());
  AllReduceRounds::Live live(job.workers.size());
  for (size_t i = 0; i < job.workers.size(); ++i) {
    const Worker& w = job.workers[i];
    // (A worker not joined yet is waited for, within the lease it has from the job's creation,
    // under an incarnation no call carries.)
    if (w.alive) live[i] = w.incarnation != 0 ? w.incarnation : AllReduceRounds::kNotJoined;
  }
  v1::AllReduceResponse resp;
  switch (req.op_case()) {
    case v1::AllReduceRequest::kGroup: {
      absl::StatusOr<AllReduceGroupView> v = job.rounds->Group(
          req.worker(), req.worker_incarnation(), req.group().step(), req.group().holds(), live);
      if (!v.ok()) return v.status();
      resp.set_ready(v->ready);
      resp.set_step(v->step);
      resp.set_generation(v->generation);
      for (uint32_t m : v->members) resp.add_members(m);
      for (uint64_t inc : v->incarnations) resp.add_incarnations(inc);
      resp.set_rank(v->rank);
      for (uint32_t j : v->joined) resp.add_joined(j);
      return resp;
    }
    case v1::AllReduceRequest::kReport: {
      const v1::AllReduceReportOp& op = req.report();
      if (absl::Status s = job.rounds->Report(req.worker(), req.worker_incarnation(), op.step(),
                                              op.generation(), op.reduced());
          !s.ok()) {
        return s;
      }
      return resp;
    }
    case v1::AllReduceRequest::kDecision: {
      absl::StatusOr<StepOutcome> d =
          job.rounds->Decision(req.decision().step(), req.decision().generation(), live);
      if (!d.ok()) return d.status();
      resp.set_outcome(*d == StepOutcome::kApply  ? v1::ALL_REDUCE_OUTCOME_APPLY
                       : *d == StepOutcome::kRedo ? v1::ALL_REDUCE_OUTCOME_REDO
                                                  : v1::ALL_REDUCE_OUTCOME_PENDING);
      return resp;
    }
    case v1::AllReduceRequest::kSet: {
      if (absl::Status s = SetKey(job, req.set()); !s.ok()) return s;
      return resp;
    }
    case v1::AllReduceRequest::kGet: {
      // (An answer is bounded like the keys: at most 1,024 keys, their values counted first.)
      if (req.get().keys_size() > 1024) {
        return absl::InvalidArgumentError("all-reduce: at most 1,024 rendezvous keys in one get");
      }
      size_t bytes = 0;
      for (const std::string& key : req.get().keys()) {
        auto it = job.keys.find({req.get().generation(), key});
        bytes += it == job.keys.end() ? 0 : it->second.size();
      }
      if (bytes > kMaxJobKeyBytes) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "all-reduce: the answer would hold %u bytes, over %u", bytes, kMaxJobKeyBytes));
      }
      for (const std::string& key : req.get().keys()) {
        auto it = job.keys.find({req.get().generation(), key});
        if (it == job.keys.end()) {
          resp.clear_values();
          return resp;  // (not ready)
        }
        resp.add_values(it->second);
      }
      resp.set_ready(true);
      return resp;
    }
    case v1::AllReduceRequest::OP_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("AllReduceRequest needs one operation");
}

}  // namespace tessera
