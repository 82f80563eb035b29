#include "client/worker_clock.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "proto/cluster.grpc.pb.h"

namespace tessera {

struct TESSERA_HIDDEN WorkerClock::Impl {
  WorkerClockOptions options;
  std::unique_ptr<v1::Coordinator::Stub> stub;
  uint64_t incarnation = 0;
  std::atomic<uint64_t> clock{0};

  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::thread renewer;

  // One Clock call: reports the clock, waits (up to timeout) for step `wait_for`.
  absl::StatusOr<v1::ClockResponse> Call(uint64_t wait_for, absl::Duration timeout) {
    v1::ClockRequest req;
    req.set_job(options.job);
    req.set_worker(options.worker);
    req.set_worker_incarnation(incarnation);
    req.set_clock(clock.load());
    req.set_wait_for(wait_for);
    req.set_timeout_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(timeout)));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout + absl::Seconds(5)));
    v1::ClockResponse resp;
    absl::Status s = FromGrpcStatus(stub->Clock(&ctx, req, &resp));
    if (!s.ok()) return s;
    return resp;
  }

  // Renews the lease (and reports the clock) three times per lease.
  void Renew() {
    const absl::Duration every = absl::Milliseconds(std::max<int64_t>(options.lease_ms / 3, 10));
    while (true) {
      {
        absl::MutexLock lock(&mu);
        auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return stopping; };
        if (mu.AwaitWithTimeout(absl::Condition(&stop), every)) return;
      }
      (void)Call(0, absl::Milliseconds(1));
    }
  }
};

WorkerClock::WorkerClock(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

uint64_t WorkerClock::incarnation() const { return impl_->incarnation; }

WorkerClock::~WorkerClock() {
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  if (impl_->renewer.joinable()) impl_->renewer.join();
}

absl::StatusOr<std::unique_ptr<WorkerClock>> WorkerClock::Join(const WorkerClockOptions& o) {
  if (o.coordinator.empty() || o.job.empty()) {
    return absl::InvalidArgumentError("WorkerClockOptions: coordinator and job are required");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = o;
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  impl->stub = v1::Coordinator::NewStub(MakeChannel(o.coordinator, o.credentials, args));
  v1::JoinJobRequest req;
  v1::JobSpec* spec = req.mutable_spec();
  spec->set_job(o.job);
  spec->set_num_workers(o.num_workers);
  spec->set_mode(o.mode == ConsistencyMode::kBsp   ? v1::CONSISTENCY_MODE_BSP
                 : o.mode == ConsistencyMode::kSsp ? v1::CONSISTENCY_MODE_SSP
                                                   : v1::CONSISTENCY_MODE_ASYNC);
  spec->set_staleness(o.staleness);
  spec->set_worker_lease_ms(static_cast<uint32_t>(o.lease_ms));
  spec->set_on_worker_death(o.fail_on_worker_death ? v1::WORKER_DEATH_POLICY_FAIL
                                                   : v1::WORKER_DEATH_POLICY_CONTINUE);
  req.set_worker(o.worker);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  ctx.set_wait_for_ready(true);
  v1::JoinJobResponse resp;
  if (absl::Status s = FromGrpcStatus(impl->stub->JoinJob(&ctx, req, &resp)); !s.ok()) {
    return absl::Status(s.code(), absl::StrFormat("cannot join job '%s' at %s: %s", o.job,
                                                  o.coordinator, s.message()));
  }
  impl->incarnation = resp.worker_incarnation();
  impl->clock = resp.clock();
  Impl* raw = impl.get();
  impl->renewer = std::thread([raw] { raw->Renew(); });
  return std::unique_ptr<WorkerClock>(new WorkerClock(std::move(impl)));
}

uint64_t WorkerClock::clock() const { return impl_->clock.load(); }
const WorkerClockOptions& WorkerClock::options() const { return impl_->options; }

absl::StatusOr<JobProgress> WorkerClock::WaitToStart(absl::Duration timeout) {
  return WaitFor(impl_->clock.load() + 1, timeout);
}

absl::StatusOr<JobProgress> WorkerClock::WaitFor(uint64_t step, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status last;
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return last.ok() ? absl::DeadlineExceededError(
                             absl::StrFormat("step %u of job '%s' did not become ready in time",
                                             step, impl_->options.job))
                       : last;
    }
    absl::StatusOr<v1::ClockResponse> r = impl_->Call(step, std::min(left, absl::Seconds(1)));
    if (r.ok() && r->ready()) {
      JobProgress p;
      p.min_clock = r->min_clock();
      p.live_workers = r->live_workers();
      p.dead_workers.assign(r->dead_workers().begin(), r->dead_workers().end());
      return p;
    }
    if (!r.ok()) {
      if (r.status().code() != absl::StatusCode::kUnavailable &&
          r.status().code() != absl::StatusCode::kDeadlineExceeded) {
        return r.status();  // the job failed, or this worker was replaced
      }
      last = r.status();
      absl::SleepFor(absl::Milliseconds(50));  // the coordinator is away: retry
    }
  }
}

absl::StatusOr<JobProgress> WorkerClock::WaitForAll(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<JobProgress> p = WaitFor(impl_->clock.load() + 1, deadline - absl::Now());
    if (!p.ok() || p->min_clock >= impl_->clock.load()) return p;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrFormat("the slowest worker of job '%s' is at step %u of %u", impl_->options.job,
                          p->min_clock, impl_->clock.load()));
    }
    absl::SleepFor(absl::Milliseconds(20));  // (SSP and async answer at once: poll)
  }
}

absl::Status WorkerClock::Finish() {
  impl_->clock.fetch_add(1);
  absl::StatusOr<v1::ClockResponse> r = impl_->Call(0, absl::Milliseconds(1));
  // The lease thread reports the clock again; only a failed job is an error here.
  if (!r.ok() && r.status().code() == absl::StatusCode::kFailedPrecondition) return r.status();
  return absl::OkStatus();
}

}  // namespace tessera
