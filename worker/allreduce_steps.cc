#include "worker/allreduce_steps.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "proto/cluster.grpc.pb.h"

namespace tessera {

namespace {

// One AllReduce call with this worker's identity; `op` fills the operation.
absl::StatusOr<v1::AllReduceResponse> Call(v1::Coordinator::Stub& stub,
                                           const AllReduceStepsOptions& o,
                                           const std::function<void(v1::AllReduceRequest*)>& op) {
  v1::AllReduceRequest req;
  req.set_job(o.job);
  req.set_worker(o.worker);
  req.set_worker_incarnation(o.incarnation);
  op(&req);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + o.group.timeout));
  v1::AllReduceResponse resp;
  absl::Status s = FromGrpcStatus(stub.AllReduce(&ctx, req, &resp));
  if (!s.ok()) return s;
  return resp;
}

// Gloo's rendezvous on the coordinator's keys of one generation: gets poll until every key is
// set or the timeout passed.
class CoordinatorStore : public RendezvousStore {
 public:
  CoordinatorStore(v1::Coordinator::Stub* stub, const AllReduceStepsOptions* options,
                   uint64_t generation)
      : stub_(stub), options_(options), generation_(generation) {}

  absl::Status Set(const std::string& key, const std::string& value) override {
    return Call(*stub_, *options_,
                [&](v1::AllReduceRequest* req) {
                  req->mutable_set()->set_generation(generation_);
                  req->mutable_set()->set_key(key);
                  req->mutable_set()->set_value(value);
                })
        .status();
  }

  absl::StatusOr<std::vector<std::string>> Get(const std::vector<std::string>& keys,
                                               absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      absl::StatusOr<v1::AllReduceResponse> r = Call(*stub_, *options_, [&](auto* req) {
        req->mutable_get()->set_generation(generation_);
        for (const std::string& k : keys) req->mutable_get()->add_keys(k);
      });
      if (!r.ok()) return r.status();
      if (r->ready()) return std::vector<std::string>(r->values().begin(), r->values().end());
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrFormat("rendezvous of generation %u: %u key(s) not set within %s", generation_,
                            keys.size(), absl::FormatDuration(timeout)));
      }
      absl::SleepFor(options_->poll);
    }
  }

 private:
  v1::Coordinator::Stub* const stub_;
  const AllReduceStepsOptions* const options_;
  const uint64_t generation_;
};

}  // namespace

struct AllReduceSteps::Impl {
  AllReduceStepsOptions options;
  std::unique_ptr<v1::Coordinator::Stub> stub;
  bool holds = true;
  uint64_t generation = 0;  // of `group`
  std::unique_ptr<AllReduceGroup> group;
};

absl::StatusOr<std::unique_ptr<AllReduceSteps>> AllReduceSteps::Create(
    const AllReduceStepsOptions& options) {
  if (options.job.empty() || options.incarnation == 0) {
    return absl::InvalidArgumentError(
        "all-reduce steps need the job and this worker's incarnation (join the job first)");
  }
  if (absl::Status s = CheckCredentials(options.credentials); !s.ok()) return s;
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->holds = options.holds;
  impl->stub = v1::Coordinator::NewStub(MakeChannel(options.coordinator, options.credentials));
  return std::unique_ptr<AllReduceSteps>(new AllReduceSteps(std::move(impl)));
}

AllReduceSteps::AllReduceSteps(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AllReduceSteps::~AllReduceSteps() = default;

bool AllReduceSteps::holds() const { return impl_->holds; }
uint64_t AllReduceSteps::generation() const { return impl_->generation; }

absl::StatusOr<uint64_t> AllReduceSteps::Step(
    uint64_t step, absl::Span<float> state, size_t grad_floats,
    const std::function<void(absl::Span<const float>, absl::Span<float>)>& compute,
    const std::function<void(absl::Span<const float>, uint32_t)>& apply, absl::Duration timeout) {
  Impl& m = *impl_;
  const AllReduceStepsOptions& o = m.options;
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<float> grads(grad_floats), sum(grad_floats);
  bool computed = false;
  while (absl::Now() < deadline) {
    // 1. The group of this step (formed once every live worker asked).
    absl::StatusOr<v1::AllReduceResponse> g = Call(*m.stub, o, [&](v1::AllReduceRequest* req) {
      req->mutable_group()->set_step(step);
      req->mutable_group()->set_holds(m.holds);
    });
    if (!g.ok()) {
      if (g.status().code() == absl::StatusCode::kUnavailable) {
        absl::SleepFor(o.poll);  // (the coordinator restarting or paused: ask again)
        continue;
      }
      return g.status();
    }
    if (!g->ready()) {
      absl::SleepFor(o.poll);
      continue;
    }
    step = g->step();  // (the group's: another only for a worker without the weights)
    // 2. Its Gloo group, connected through the coordinator's keys of the generation.
    bool ok = true;
    if (m.group == nullptr || m.generation != g->generation()) {
      m.group.reset();
      CoordinatorStore store(m.stub.get(), &o, g->generation());
      absl::StatusOr<std::unique_ptr<AllReduceGroup>> created =
          AllReduceGroup::Create(g->rank(), g->members_size(), &store, o.group);
      if (created.ok()) {
        m.group = *std::move(created);
        m.generation = g->generation();
      } else {
        ok = false;
      }
    }
    // 3. Joined members are given the state by the first member holding it (A5).
    if (ok && g->joined_size() > 0) {
      int root = -1;
      for (int r = 0; r < g->members_size() && root < 0; ++r) {
        if (std::find(g->joined().begin(), g->joined().end(), g->members(r)) == g->joined().end()) {
          root = r;
        }
      }
      ok = root >= 0 && m.group->Broadcast(root, state).ok();
      if (ok && !m.holds) {
        m.holds = true;
        computed = false;  // (the gradients of the state given)
      }
    }
    // 4. The sum, held until the decision.
    if (ok) {
      if (!computed) {
        compute(state, absl::MakeSpan(grads));
        computed = true;
      }
      sum = grads;
      ok = m.group->Sum(absl::MakeSpan(sum)).ok();
    }
    if (!ok) m.group.reset();  // (a failed group is never used again)
    absl::StatusOr<v1::AllReduceResponse> r = Call(*m.stub, o, [&](v1::AllReduceRequest* req) {
      req->mutable_report()->set_step(step);
      req->mutable_report()->set_generation(g->generation());
      req->mutable_report()->set_reduced(ok);
    });
    if (!r.ok() && r.status().code() != absl::StatusCode::kFailedPrecondition &&
        r.status().code() != absl::StatusCode::kUnavailable) {
      return r.status();
    }
    // 5. The one decision for every member.
    while (absl::Now() < deadline) {
      absl::StatusOr<v1::AllReduceResponse> d = Call(*m.stub, o, [&](v1::AllReduceRequest* req) {
        req->mutable_decision()->set_step(step);
        req->mutable_decision()->set_generation(g->generation());
      });
      if (!d.ok() && d.status().code() != absl::StatusCode::kUnavailable) return d.status();
      if (!d.ok() || d->outcome() == v1::ALL_REDUCE_OUTCOME_PENDING) {
        absl::SleepFor(o.poll);
        continue;
      }
      if (d->outcome() == v1::ALL_REDUCE_OUTCOME_APPLY) {
        if (!ok) {  // (every member reported reduced: impossible for this one)
          return absl::InternalError("all-reduce: told to apply a sum this worker does not hold");
        }
        apply(sum, static_cast<uint32_t>(g->members_size()));
        return step;
      }
      break;  // redo: ask for the next generation
    }
  }
  return absl::DeadlineExceededError(
      absl::StrFormat("all-reduce: step %u of job '%s' not applied within %s", step, o.job,
                      absl::FormatDuration(timeout)));
}

}  // namespace tessera
