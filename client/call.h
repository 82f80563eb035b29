// Handles of asynchronous client calls (client/client.h): a Call completes once with a status;
// it can be waited on (with or without a timeout), polled, given continuations and combined
// with others. Result<T> is a Call that also owns the call's result (the rows of a pull into a
// buffer the client allocated).
//
//   Call a = client->PushDenseAsync("w", 0, grads);        // borrows grads until done
//   Call b = client->PushSparseAsync("emb", std::move(keys), std::move(rows));  // owns them
//   absl::Status s = Call::All({a, b}).Wait();              // the first error, or OK
//   Result<std::vector<float>> r = client->PullSparseAsync("emb", {1, 2, 3});
//   absl::StatusOr<std::vector<float>> rows = r.Take();
//
// Copies of a Call are handles of the same call. Dropping every handle does not cancel or wait
// for the call (the client's destructor waits for calls in flight); a call that borrows
// buffers must still be waited for before they are freed.
#ifndef TESSERA_CLIENT_CALL_H_
#define TESSERA_CLIENT_CALL_H_

#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/export.h"

namespace tessera {

// Runs exactly once when an asynchronous call completes.
using StatusCallback = std::function<void(absl::Status)>;

class TESSERA_EXPORT Call {
 public:
  // A new, pending call and the callback that completes it (the first invocation counts; later
  // ones are ignored). For composing calls of one's own with the client's.
  static std::pair<Call, StatusCallback> Pending();
  // A call that has already completed with `status`.
  static Call Done(absl::Status status = absl::OkStatus());
  // Completes when every one of `calls` completed, with the first error among them in the
  // order given (OK when all succeeded). Empty: completed, OK.
  static Call All(std::vector<Call> calls);

  // A default-constructed Call is completed and OK.
  Call();
  // Copyable, and a "move" copies: a Call is never empty, also after std::move.
  Call(const Call&) = default;
  Call& operator=(const Call&) = default;

  bool done() const;
  // Blocks until the call completes; its status. Any number of times, from any thread.
  absl::Status Wait() const;
  // True when the call completed within `timeout`.
  bool WaitFor(absl::Duration timeout) const;
  // The status of a completed call; FAILED_PRECONDITION while it is pending.
  absl::Status status() const;
  // Runs `fn` with the status once the call completes: at once on this thread when it already
  // has, else on the thread that completes it (for the client's calls, a gRPC thread: `fn`
  // must not block).
  void OnDone(StatusCallback fn) const;

  struct State;  // client/call.cc

 private:
  explicit Call(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

// A Call with a result the handle owns: available once the call completed successfully.
template <typename T>
class Result {
 public:
  Result(Call call, std::shared_ptr<T> value) : call_(std::move(call)), value_(std::move(value)) {}

  const Call& call() const { return call_; }
  bool done() const { return call_.done(); }
  absl::Status Wait() const { return call_.Wait(); }
  bool WaitFor(absl::Duration timeout) const { return call_.WaitFor(timeout); }
  // Waits, then moves the result out (once: FAILED_PRECONDITION on a second Take).
  absl::StatusOr<T> Take() {
    if (absl::Status s = call_.Wait(); !s.ok()) return s;
    if (value_ == nullptr) return absl::FailedPreconditionError("the result was already taken");
    T out = std::move(*value_);
    value_.reset();
    return out;
  }

 private:
  Call call_;
  std::shared_ptr<T> value_;
};

}  // namespace tessera

#endif  // TESSERA_CLIENT_CALL_H_
