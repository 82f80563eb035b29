// Training clocks of the jobs a coordinator hosts: BSP, SSP(s) and async bounds, worker
// leases and what happens when a worker dies (docs/worker.md). Transport-free; the
// coordinator's service serializes calls.
#ifndef TESSERA_SERVER_COORDINATOR_JOB_CLOCKS_H_
#define TESSERA_SERVER_COORDINATOR_JOB_CLOCKS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/cluster.pb.h"
#include "server/coordinator/allreduce_rounds.h"

namespace tessera {

// Clock = steps a worker has finished. A worker may start step k (1, 2, ...) when:
// async: always; BSP: every live worker's clock >= k - 1; SSP(s): >= k - 1 - s. Workers that
// have not joined yet count with clock 0 until their lease (from the job's creation) runs out.
// Thread-compatible.
class JobClocks {
 public:
  // Errors: INVALID_ARGUMENT (bad spec or worker index, a name over 256 bytes),
  // FAILED_PRECONDITION (the job exists with another spec, or has failed), RESOURCE_EXHAUSTED
  // (a new job beyond 4,096 jobs or 1,000,000 workers in all: jobs are never forgotten).
  absl::StatusOr<v1::JoinJobResponse> Join(const v1::JoinJobRequest& req, absl::Time now);

  // Records the worker's clock and renews its lease, then answers whether it may start step
  // req.wait_for (ready is always true for wait_for 0). Errors: NOT_FOUND (no such job),
  // FAILED_PRECONDITION (another process joined as this worker since, or the job failed:
  // the message names the dead worker), INVALID_ARGUMENT (a clock going backwards).
  absl::StatusOr<v1::ClockResponse> Clock(const v1::ClockRequest& req, absl::Time now);

  // Whether `worker` of `job` may start step `step` now (no side effects).
  absl::StatusOr<v1::ClockResponse> Check(const std::string& job, uint64_t step) const;

  // Ends the leases that ran out; returns the jobs whose state changed (waiters re-check).
  std::vector<std::string> ExpireLeases(absl::Time now);

  // Dense all-reduce (docs/dense_allreduce.md): the job's group, reports, decisions and
  // rendezvous keys. Renews the worker's lease as Clock does, with the same errors; a get whose
  // keys are not all set answers ready = false (the caller asks again). Keys and values are
  // bounded in size and count per job (RESOURCE_EXHAUSTED), counted before they are stored;
  // those of generations before the last two are dropped.
  absl::StatusOr<v1::AllReduceResponse> AllReduce(const v1::AllReduceRequest& req, absl::Time now);

 private:
  struct Worker {
    uint64_t incarnation = 0;  // 0: not joined yet
    uint64_t clock = 0;
    bool alive = true;
    absl::Time deadline;
  };
  struct Job {
    v1::JobSpec spec;
    std::vector<Worker> workers;
    std::string failure;                      // non-empty: the job failed
    std::unique_ptr<AllReduceRounds> rounds;  // made at the first all-reduce call
    std::map<std::pair<uint64_t, std::string>, std::string> keys;  // (generation, key)
    size_t key_bytes = 0;
  };

  static absl::Duration Lease(const v1::JobSpec& spec);
  // The job of a worker's call: NOT_FOUND, INVALID_ARGUMENT (no such worker),
  // FAILED_PRECONDITION (the job failed, or another incarnation joined as this worker).
  absl::StatusOr<Job*> Find(const std::string& name, uint32_t worker, uint64_t incarnation);
  // Renews the worker's lease (it is counted again if it was dead).
  static void Renew(const std::string& name, Job& job, uint32_t worker, absl::Time now);
  static absl::Status SetKey(Job& job, const v1::AllReduceSetOp& op);

  std::map<std::string, Job> jobs_;
  uint64_t workers_ = 0;  // of every job
  uint64_t next_incarnation_ = 1;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_COORDINATOR_JOB_CLOCKS_H_
