#include "server/coordinator/allreduce_rounds.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace tessera {

namespace {

constexpr size_t kKeptDecisions = 64;

}  // namespace

absl::Status AllReduceRounds::Lost() const {
  return absl::DataLossError(absl::StrFormat(
      "all-reduce: every worker holding the all-reduced tables' weights after step %u is gone: "
      "restore the job from its newest checkpoint",
      step_ - 1));
}

absl::Status AllReduceRounds::CheckArgs(uint32_t worker, const Live& live) const {
  if (worker >= num_workers_ || live.size() != num_workers_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("all-reduce: worker %u of a job of %u workers (liveness of %u)", worker,
                        num_workers_, live.size()));
  }
  return absl::OkStatus();
}

AllReduceGroupView AllReduceRounds::View(uint32_t worker, uint64_t incarnation) const {
  AllReduceGroupView v;
  v.step = step_;
  v.generation = generation_;
  for (const Member& m : members_) {
    // (By incarnation: a worker restarted since the generation formed is not its member.)
    if (m == Member{worker, incarnation}) v.rank = static_cast<int>(v.members.size());
    v.members.push_back(m.first);
    v.incarnations.push_back(m.second);
  }
  v.ready = v.rank >= 0;
  v.joined = joined_;
  return v;
}

void AllReduceRounds::Remember(uint64_t step, uint64_t generation, StepOutcome outcome) {
  decided_.push_back({{step, generation}, outcome});
  while (decided_.size() > kKeptDecisions) decided_.pop_front();
}

void AllReduceRounds::Decide(const Live& live) {
  if (!Reducing()) return;
  bool all_reduced = true, redo = false;
  for (const Member& m : members_) {
    auto it = reports_.find(m.first);
    if (it == reports_.end()) {
      all_reduced = false;
      if (live[m.first] != m.second) redo = true;  // gone without a report (A3)
    } else if (!it->second) {
      redo = true;
    }
  }
  if (redo) {
    Remember(step_, generation_, StepOutcome::kRedo);
    members_.clear();  // form the next generation for the same step
    asked_.clear();
    reports_.clear();
    return;
  }
  if (!all_reduced) return;
  Remember(step_, generation_, StepOutcome::kApply);
  ++step_;
  reports_.clear();
  // The same members, all still live and no one else: the generation goes on to the next step.
  // Anyone else live (a worker joined, or back): form a new one, so that it is let in.
  // (members_ ascends by index: one pass, not a search per worker.)
  std::vector<Member> now;
  for (uint32_t i = 0; i < num_workers_; ++i) {
    if (live[i] != 0) now.push_back({i, live[i]});
  }
  if (now == members_) {
    joined_.clear();
  } else {
    members_.clear();
    asked_.clear();
  }
}

absl::StatusOr<AllReduceGroupView> AllReduceRounds::Group(uint32_t worker, uint64_t incarnation,
                                                          uint64_t step, bool holds,
                                                          const Live& live) {
  if (absl::Status s = CheckArgs(worker, live); !s.ok()) return s;
  if (incarnation == 0 || live[worker] != incarnation) {
    return absl::FailedPreconditionError(
        absl::StrFormat("all-reduce: worker %u (incarnation %u) holds no lease: rejoin the job",
                        worker, incarnation));
  }
  if (lost_) return Lost();
  if (step_ == 0) step_ = step;
  Decide(live);
  // A worker without the weights joins whatever step the group is at (it is given them).
  if (!holds) step = step_;
  if (step != step_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "all-reduce: the group reduces step %u, not %u: ask without holding the weights to be "
        "given them and join step %u",
        step_, step, step_));
  }
  if (Reducing())
    return View(worker, incarnation);  // not ready for a non-member: it waits for the next
  asked_[{worker, incarnation}] = holds;
  std::vector<Member> members;
  for (uint32_t i = 0; i < num_workers_; ++i) {
    if (live[i] == 0) continue;
    if (!asked_.contains({i, live[i]}))
      return View(worker, incarnation);  // (not ready: someone has not asked)
    members.push_back({i, live[i]});
  }
  std::vector<uint32_t> joined;
  for (const Member& m : members) {
    if (!asked_.at(m)) joined.push_back(m.first);
  }
  if (joined.size() == members.size()) {
    lost_ = true;  // no member holds the weights to give the others
    return Lost();
  }
  members_ = std::move(members);
  joined_ = std::move(joined);
  ++generation_;
  asked_.clear();
  reports_.clear();
  return View(worker, incarnation);
}

absl::Status AllReduceRounds::Report(uint32_t worker, uint64_t incarnation, uint64_t step,
                                     uint64_t generation, bool reduced) {
  if (worker >= num_workers_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("all-reduce: worker %u of a job of %u workers", worker, num_workers_));
  }
  const bool member =
      std::find(members_.begin(), members_.end(), Member{worker, incarnation}) != members_.end();
  if (!Reducing() || step != step_ || generation != generation_ || !member) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "all-reduce: worker %u reports step %u of generation %u; the group %s step %u of "
        "generation %u%s",
        worker, step, generation, Reducing() ? "reduces" : "decided it and forms", step_,
        generation_, Reducing() && !member ? " (not a member)" : ""));
  }
  reports_.try_emplace(worker, reduced);  // (the first report stands)
  return absl::OkStatus();
}

absl::StatusOr<StepOutcome> AllReduceRounds::Decision(uint64_t step, uint64_t generation,
                                                      const Live& live) {
  if (live.size() != num_workers_) return CheckArgs(0, live);
  if (Reducing() && step == step_ && generation == generation_) {
    Decide(live);
    if (Reducing() && step == step_) return StepOutcome::kPending;
  }
  for (const auto& [key, outcome] : decided_) {
    if (key == std::make_pair(step, generation)) return outcome;
  }
  return absl::FailedPreconditionError(
      absl::StrFormat("all-reduce: no decision for step %u of generation %u (the group is at "
                      "step %u of generation %u)",
                      step, generation, step_, generation_));
}

}  // namespace tessera
