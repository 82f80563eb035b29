// A worker's side of the all-reduce step protocol (docs/dense_allreduce.md, "A step") over the
// coordinator's AllReduce RPC: ask for the group of a step, be given the weights when joined,
// sum the gradients in the generation's Gloo group (rendezvous through the coordinator), report,
// and follow the coordinator's one decision: apply, or redo in a new generation.
#ifndef TESSERA_WORKER_ALLREDUCE_STEPS_H_
#define TESSERA_WORKER_ALLREDUCE_STEPS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/credentials.h"
#include "worker/allreduce.h"

namespace tessera {

struct AllReduceStepsOptions {
  std::string coordinator;  // host:port
  Credentials credentials;  // a worker token
  std::string job;
  uint32_t worker = 0;
  uint64_t incarnation = 0;  // the job clock's (WorkerClock::incarnation())
  // Whether this worker starts holding the job's weights (its initial ones, the same on every
  // worker): false for a worker restarted into a running job.
  bool holds = true;
  AllReduceOptions group;                       // listen address, Gloo's timeout, bucket size
  absl::Duration poll = absl::Milliseconds(5);  // between asks for what is not ready
};

class AllReduceSteps {
 public:
  static absl::StatusOr<std::unique_ptr<AllReduceSteps>> Create(
      const AllReduceStepsOptions& options);
  ~AllReduceSteps();

  // Runs `step` to its decision and returns the step applied: `step`, or, for a worker that
  // does not hold the weights (restarted into a running job), the group's step it joined. `state`
  // is this worker's replica of the all-reduced tables (weights and optimizer state): overwritten
  // with a holder's when this worker is joined. `compute(state, grads)` writes the step's gradients
  // (grads.size() floats) from the state; it is called again only when the state was given anew. On
  // apply, `apply(sum, members)` is called once with the gradients summed over the generation's
  // `members` workers, and Step returns OK. Errors: the coordinator's (FAILED_PRECONDITION when the
  // group is at another step or the job failed, DATA_LOSS when every holder of the weights is
  // gone), DEADLINE_EXCEEDED when no decision to apply came within `timeout`.
  absl::StatusOr<uint64_t> Step(
      uint64_t step, absl::Span<float> state, size_t grad_floats,
      const std::function<void(absl::Span<const float>, absl::Span<float>)>& compute,
      const std::function<void(absl::Span<const float>, uint32_t)>& apply, absl::Duration timeout);

  bool holds() const;
  uint64_t generation() const;  // of the last group this worker was a member of

  struct Impl;

 private:
  explicit AllReduceSteps(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_WORKER_ALLREDUCE_STEPS_H_
