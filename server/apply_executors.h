// The threads that apply a shard's sequenced entries (docs/state_machine.md, "Sequencing and
// applying"): executor i owns the vshards v with v % size() == i and runs its tasks in the
// order they were enqueued.
#ifndef TESSERA_SERVER_APPLY_EXECUTORS_H_
#define TESSERA_SERVER_APPLY_EXECUTORS_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace tessera {

class ApplyExecutors {
 public:
  static constexpr uint32_t kMaxThreads = 16;

  // threads: 1..kMaxThreads (clamped).
  explicit ApplyExecutors(uint32_t threads);
  ~ApplyExecutors();  // runs what is queued, then joins

  uint32_t size() const { return static_cast<uint32_t>(queues_.size()); }
  uint32_t ExecutorOf(uint32_t vshard) const { return vshard % size(); }

  // A task applies its part and returns what to run once it counts as done (may be empty):
  // completions (acknowledgements) run after that point, so Drain never waits for them.
  using Task = std::function<std::function<void()>()>;
  // Queues `task` on executor `executor`; tasks of one executor run in enqueue order.
  void Enqueue(uint32_t executor, Task task);
  // Returns once every task enqueued before the call has run and been destroyed (on every
  // executor); their completions may still be running.
  void Drain();

 private:
  struct Queue {
    absl::Mutex mu;
    std::deque<Task> tasks ABSL_GUARDED_BY(mu);
    uint64_t enqueued ABSL_GUARDED_BY(mu) = 0;
    uint64_t done ABSL_GUARDED_BY(mu) = 0;
    bool stop ABSL_GUARDED_BY(mu) = false;
  };
  void Loop(Queue* q);

  std::vector<std::unique_ptr<Queue>> queues_;
  std::vector<std::thread> threads_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_APPLY_EXECUTORS_H_
