// The coordinator's side of dense all-reduce (docs/dense_allreduce.md, "The protocol"): per
// job, which workers form each generation of the all-reduce group and, for every step, the one
// decision all of them follow: apply the step's sum, or redo the step in a new generation.
// Transport-free and deterministic: liveness comes in as an argument (the job clocks' leases),
// so the simulation test drives it over random schedules. Thread-compatible.
#ifndef TESSERA_SERVER_COORDINATOR_ALLREDUCE_ROUNDS_H_
#define TESSERA_SERVER_COORDINATOR_ALLREDUCE_ROUNDS_H_

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera {

enum class StepOutcome { kPending, kApply, kRedo };

struct AllReduceGroupView {
  bool ready = false;  // false: not formed yet (every live worker has not asked): ask again
  uint64_t step = 0;   // the step the group reduces
  uint64_t generation = 0;
  std::vector<uint32_t> members;       // ascending worker indexes; rank = position
  std::vector<uint64_t> incarnations;  // of each member: what its rendezvous key carries
  int rank = -1;
  // Members that do not hold the weights yet (joined, or restarted under a new incarnation):
  // before the step's sum, the group gives them the weights and optimizer state of a member
  // that does (A5).
  std::vector<uint32_t> joined;
};

class AllReduceRounds {
 public:
  explicit AllReduceRounds(uint32_t num_workers) : num_workers_(num_workers) {}

  // Liveness as the job clocks see it: live[i] is the incarnation of worker i that holds a
  // lease, 0 when none does, kNotJoined for a worker expected but not joined yet (a generation
  // waits for it). A member is (index, incarnation): a worker restarted under a new incarnation
  // is a new member, whatever its index.
  using Live = std::vector<uint64_t>;
  static constexpr uint64_t kNotJoined = ~uint64_t{0};

  // Worker `worker` (incarnation `incarnation`) asks for the group that reduces `step`;
  // `holds`: it holds the weights after step - 1 (it applied that step, or was given the weights
  // since; at a job's start every worker holds its initial weights). A generation forms once
  // every live worker has asked for the same step; those that do not hold the weights are its
  // joined members, and join whatever step the group is at (their `step` is ignored: a worker
  // restarted into a running job). A member asking again gets the same answer.
  // FAILED_PRECONDITION (naming the step) when a worker holding weights asks for another step
  // than the group's, or when `incarnation` holds no lease (rejoin the job). INVALID_ARGUMENT
  // for a worker outside the job. DATA_LOSS, from then on, once a generation would form of
  // members none of which holds the weights: every worker that held them is gone (as when
  // every replica of a shard is lost), and the job must be restored from its newest checkpoint.
  absl::StatusOr<AllReduceGroupView> Group(uint32_t worker, uint64_t incarnation, uint64_t step,
                                           bool holds, const Live& live);

  // A member's result of summing `step` in `generation`: reduced (it holds the sum) or failed.
  // Repeating a report is harmless; a report for a generation or step already decided, or from
  // a non-member, is FAILED_PRECONDITION (it changes nothing).
  absl::Status Report(uint32_t worker, uint64_t incarnation, uint64_t step, uint64_t generation,
                      bool reduced);

  // The decision for `step` in `generation`: apply when every member reported reduced; redo
  // when one reported failed or is no longer live without having reported; else pending.
  // Decided once and kept (the last 64 decisions): every member gets the same answer.
  // FAILED_PRECONDITION for a generation never formed or forgotten.
  absl::StatusOr<StepOutcome> Decision(uint64_t step, uint64_t generation, const Live& live);

  uint64_t step() const { return step_; }
  uint64_t generation() const { return generation_; }
  bool reducing() const { return Reducing(); }  // false: forming

 private:
  bool Reducing() const { return !members_.empty(); }
  using Member = std::pair<uint32_t, uint64_t>;  // (index, incarnation)
  absl::Status CheckArgs(uint32_t worker, const Live& live) const;
  absl::Status Lost() const;
  void Decide(const Live& live);
  void Remember(uint64_t step, uint64_t generation, StepOutcome outcome);
  AllReduceGroupView View(uint32_t worker, uint64_t incarnation) const;

  const uint32_t num_workers_;
  uint64_t step_ = 0;  // 0: no worker has asked yet
  bool lost_ = false;
  uint64_t generation_ = 0;
  std::vector<Member> members_;  // ascending; empty: forming (every live worker must ask)
  std::vector<uint32_t> joined_;
  std::map<Member, bool> asked_;                 // while forming, for step_: -> holds
  absl::flat_hash_map<uint32_t, bool> reports_;  // while reducing: member index -> reduced
  std::deque<std::pair<std::pair<uint64_t, uint64_t>, StepOutcome>> decided_;  // (step, gen)
};

}  // namespace tessera

#endif  // TESSERA_SERVER_COORDINATOR_ALLREDUCE_ROUNDS_H_
