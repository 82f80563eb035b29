// The data-parallel training loop shared by every model (docs/worker.md): a model says what one
// batch pulls, computes and pushes (StepModel); the loop owns the clocks (BSP / SSP / async),
// BSP step aggregation on the servers, and pipelining: the next batch is prepared (keys
// deduplicated) on a helper thread while this one computes and pushes, and outside BSP its pull
// can run then too (prefetch).
#ifndef TESSERA_WORKER_TRAIN_LOOP_H_
#define TESSERA_WORKER_TRAIN_LOOP_H_

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "client/worker_clock.h"
#include "common/table_config.h"

namespace tessera {

// The asynchronous client calls (client/call.h) of one step's pulls or pushes, waited for
// together; keeps the first error. Its destructor waits: destroy it before the buffers its
// calls borrow. One thread at a time.
class CallGroup {
 public:
  CallGroup() = default;
  CallGroup(const CallGroup&) = delete;
  CallGroup& operator=(const CallGroup&) = delete;
  ~CallGroup() { (void)Wait(); }

  void Add(Call call) { calls_.push_back(std::move(call)); }
  // Blocks until every added call completed; returns the first error and empties the group.
  absl::Status Wait() { return Call::All(std::exchange(calls_, {})).Wait(); }

 private:
  std::vector<Call> calls_;
};

// One model's work on one batch. The loop may pull batch k+1 (into the other slot) while it
// computes and pushes batch k, so Pull must only touch its slot's buffers; Compute and Push
// run on the loop's thread.
class StepModel {
 public:
  virtual ~StepModel() = default;
  virtual std::vector<TableConfig> Tables() const = 0;
  virtual uint32_t NumBatches() const = 0;  // per epoch, over all workers
  virtual uint32_t BatchSize() const = 0;
  // The CPU work of a batch that needs no parameters (distinct keys, batch layout), into slot
  // `slot`. May run on another thread while the other slot computes and pushes: it must touch
  // only its slot (and what nothing else uses). Default: waits for the batch's examples.
  virtual absl::Status Prepare(uint32_t batch, int slot) {
    return WaitForExamples((size_t{batch} + 1) * BatchSize());
  }
  // Issues the (asynchronous) pulls prepared batch `batch` needs into slot `slot` (0 or 1), each
  // with a callback from `group`; buffers must stay valid until group.Wait() returns.
  virtual void Pull(Client& client, uint32_t batch, int slot, CallGroup& group) = 0;
  // Forward and backward of `batch` with slot's parameters; returns the batch's mean loss.
  virtual double Compute(uint32_t batch, int slot) = 0;
  // Multiplies the gradients Compute produced by `scale`, then issues their pushes, each with
  // a callback from `group`.
  virtual void Push(Client& client, const PushOptions& options, float scale, CallGroup& group) = 0;

  // Training data still being read (a CriteoStream): `gate(n)` blocks until the first n
  // examples are there, or fails (a parse error). Prepare waits on it.
  void SetDataGate(std::function<absl::Status(size_t examples)> gate) { gate_ = std::move(gate); }

 protected:
  absl::Status WaitForExamples(size_t n) const { return gate_ ? gate_(n) : absl::OkStatus(); }

 private:
  std::function<absl::Status(size_t)> gate_;
};

// One step of a worker, for progress lines and metrics.
struct StepReport {
  uint64_t step = 0;  // this worker's steps so far
  double loss = 0;    // of this step's batch
  uint32_t samples = 0;
  double wait_s = 0;  // clock waits (consistency)
  double pull_s = 0;  // waiting for pulls (a prefetched pull is mostly hidden)
  double compute_s = 0;
  double push_s = 0;       // pushes, and applying the step (BSP leader)
  uint64_t staleness = 0;  // this worker's clock minus the slowest live worker's
};

struct WorkerReport {
  uint64_t steps = 0;     // this worker's steps so far
  double train_loss = 0;  // mean over those steps
};

struct TrainLoopOptions {
  int epochs = 1;
  uint32_t worker = 0;
  uint32_t num_workers = 1;
  // Pull the next batch while this one computes. Only where the consistency mode allows it:
  // async, and SSP with staleness >= 1 (the prefetch waits for the next step's clock bound
  // first, so the bound on other workers holds; this worker's own last step may be missing
  // from what it reads). Never under BSP, where every step reads the previous step's result.
  bool prefetch = true;
  // A learning-rate schedule for SGD and momentum, which the servers apply with a fixed rate:
  // gradients are scaled from 1 at the first step linearly down to `final_gradient_scale` at
  // the last (1: no decay). Adaptive optimizers (Adagrad, Adam, FTRL) normalise the gradient's
  // scale away, so for them this has (almost) no effect.
  float final_gradient_scale = 1.0f;
  uint64_t max_steps = 0;  // stop after this many of this worker's steps; 0: no limit
};

// Creates the model's tables (idempotent: every worker may), then trains on the batches whose
// index is worker (mod num_workers), epoch after epoch, in order; every worker runs
// NumBatches() / num_workers steps per epoch. `clock` may be null (no
// coordination: like async).
absl::StatusOr<WorkerReport> RunTrainLoop(
    Client& client, WorkerClock* clock, StepModel& model, const TrainLoopOptions& options,
    const std::function<void(const StepReport&)>& on_step = nullptr);

}  // namespace tessera

#endif  // TESSERA_WORKER_TRAIN_LOOP_H_
