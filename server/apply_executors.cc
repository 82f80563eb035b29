#include "server/apply_executors.h"

#include <algorithm>
#include <utility>

namespace tessera {

ApplyExecutors::ApplyExecutors(uint32_t threads) {
  threads = std::clamp<uint32_t>(threads, 1, kMaxThreads);
  for (uint32_t i = 0; i < threads; ++i) queues_.push_back(std::make_unique<Queue>());
  for (uint32_t i = 0; i < threads; ++i)
    threads_.emplace_back(&ApplyExecutors::Loop, this, queues_[i].get());
}

ApplyExecutors::~ApplyExecutors() {
  for (auto& q : queues_) {
    absl::MutexLock lock(&q->mu);
    q->stop = true;
  }
  for (auto& t : threads_) t.join();
}

void ApplyExecutors::Enqueue(uint32_t executor, Task task) {
  Queue& q = *queues_[executor];
  absl::MutexLock lock(&q.mu);
  q.tasks.push_back(std::move(task));
  ++q.enqueued;
}

void ApplyExecutors::Drain() {
  for (auto& q : queues_) {
    absl::MutexLock lock(&q->mu);
    std::pair<Queue*, uint64_t> wait{q.get(), q->enqueued};
    q->mu.Await(absl::Condition(
        +[](std::pair<Queue*, uint64_t>* a)
             ABSL_NO_THREAD_SAFETY_ANALYSIS { return a->first->done >= a->second; },
        &wait));
  }
}

void ApplyExecutors::Loop(Queue* q) {
  for (;;) {
    Task task;
    {
      absl::MutexLock lock(&q->mu);
      q->mu.Await(absl::Condition(
          +[](Queue* q) ABSL_NO_THREAD_SAFETY_ANALYSIS { return q->stop || !q->tasks.empty(); },
          q));
      if (q->tasks.empty()) return;  // stopping, and nothing left
      task = std::move(q->tasks.front());
      q->tasks.pop_front();
    }
    std::function<void()> then = task();
    task = nullptr;  // what the task held (its entry, the table, a reservation) goes first
    {
      absl::MutexLock lock(&q->mu);
      ++q->done;
    }
    if (then) then();
  }
}

}  // namespace tessera
