// A training worker's clock in a job hosted by tessera-coordinator: BSP, SSP(s) or async
// (docs/worker.md). The worker calls WaitToStart() before each step and Finish() after the
// step's pushes were acknowledged; a background thread keeps the worker's lease.
#ifndef TESSERA_CLIENT_WORKER_CLOCK_H_
#define TESSERA_CLIENT_WORKER_CLOCK_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/credentials.h"
#include "common/export.h"

namespace tessera {

enum class ConsistencyMode { kBsp, kSsp, kAsync };

struct WorkerClockOptions {
  std::string coordinator;  // host:port; required
  std::string job;          // required; every worker of the job uses the same options
  uint32_t num_workers = 1;
  uint32_t worker = 0;  // this worker's index
  ConsistencyMode mode = ConsistencyMode::kBsp;
  uint32_t staleness = 0;  // SSP only
  // A worker silent this long is dead: the job goes on without it, or fails (by policy).
  int64_t lease_ms = 5000;
  bool fail_on_worker_death = false;
  Credentials credentials;  // a worker token (docs/security.md)
};

struct JobProgress {
  uint64_t min_clock = 0;  // the slowest live worker's finished steps
  uint32_t live_workers = 0;
  std::vector<uint32_t> dead_workers;
};

// Thread-compatible (one training loop drives it); the lease thread is internal.
class TESSERA_EXPORT WorkerClock {
 public:
  // Joins (or creates) the job. A worker index that rejoins resumes at its clock.
  static absl::StatusOr<std::unique_ptr<WorkerClock>> Join(const WorkerClockOptions& options);
  ~WorkerClock();

  uint64_t clock() const;        // steps this worker finished
  uint64_t incarnation() const;  // the coordinator's for this process (JoinJob's)
  const WorkerClockOptions& options() const;

  // Blocks until step clock() + 1 may start. Errors: FAILED_PRECONDITION when the job failed
  // (the message names the dead worker), DEADLINE_EXCEEDED after `timeout`, UNAVAILABLE when
  // the coordinator cannot be reached for that long.
  absl::StatusOr<JobProgress> WaitToStart(absl::Duration timeout = absl::InfiniteDuration());
  // Blocks until step `step` may start (WaitToStart is WaitFor(clock() + 1)); a worker that
  // prefetches step clock() + 2's parameters asks for that step's bound first.
  absl::StatusOr<JobProgress> WaitFor(uint64_t step,
                                      absl::Duration timeout = absl::InfiniteDuration());

  // Blocks until every live worker has finished at least clock() steps (the end of a job whose
  // workers all run the same number of steps): what worker 0 waits for before evaluating.
  absl::StatusOr<JobProgress> WaitForAll(absl::Duration timeout);

  // The current step is finished (its pushes are acknowledged): clock() + 1 is reported.
  absl::Status Finish();

 private:
  struct Impl;
  explicit WorkerClock(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_CLIENT_WORKER_CLOCK_H_
