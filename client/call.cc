#include "client/call.h"

#include <atomic>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tessera {

struct TESSERA_HIDDEN Call::State {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::Status status ABSL_GUARDED_BY(mu);
  std::vector<StatusCallback> continuations ABSL_GUARDED_BY(mu);

  void Complete(absl::Status s) {
    std::vector<StatusCallback> run;
    {
      absl::MutexLock lock(&mu);
      if (done) return;
      done = true;
      status = s;
      run.swap(continuations);
    }
    for (StatusCallback& fn : run) fn(s);
  }
};

Call::Call() : Call(Done()) {}
Call::Call(std::shared_ptr<State> state) : state_(std::move(state)) {}

std::pair<Call, StatusCallback> Call::Pending() {
  auto state = std::make_shared<State>();
  return {Call(state), [state](absl::Status s) { state->Complete(std::move(s)); }};
}

Call Call::Done(absl::Status status) {
  auto state = std::make_shared<State>();
  state->Complete(std::move(status));
  return Call(std::move(state));
}

Call Call::All(std::vector<Call> calls) {
  if (calls.empty()) return Done();
  if (calls.size() == 1) return std::move(calls[0]);
  // The first error in the order given: each call's status has its slot; the last completion
  // picks.
  struct Join {
    std::vector<absl::Status> statuses;
    std::atomic<size_t> remaining;
    StatusCallback complete;
  };
  auto [all, complete] = Pending();
  auto join = std::make_shared<Join>();
  join->statuses.resize(calls.size());
  join->remaining = calls.size();
  join->complete = std::move(complete);
  for (size_t i = 0; i < calls.size(); ++i) {
    calls[i].OnDone([join, i](absl::Status s) {
      join->statuses[i] = std::move(s);
      if (join->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
      absl::Status first;
      for (absl::Status& st : join->statuses) {
        if (!st.ok()) {
          first = std::move(st);
          break;
        }
      }
      join->complete(std::move(first));
    });
  }
  return all;
}

bool Call::done() const {
  absl::MutexLock lock(&state_->mu);
  return state_->done;
}

absl::Status Call::Wait() const {
  absl::MutexLock lock(&state_->mu);
  state_->mu.Await(absl::Condition(&state_->done));
  return state_->status;
}

bool Call::WaitFor(absl::Duration timeout) const {
  absl::MutexLock lock(&state_->mu);
  return state_->mu.AwaitWithTimeout(absl::Condition(&state_->done), timeout);
}

absl::Status Call::status() const {
  absl::MutexLock lock(&state_->mu);
  if (!state_->done) return absl::FailedPreconditionError("the call has not completed");
  return state_->status;
}

void Call::OnDone(StatusCallback fn) const {
  absl::Status s;
  {
    absl::MutexLock lock(&state_->mu);
    if (!state_->done) {
      state_->continuations.push_back(std::move(fn));
      return;
    }
    s = state_->status;
  }
  fn(std::move(s));
}

}  // namespace tessera
