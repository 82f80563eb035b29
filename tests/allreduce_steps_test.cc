// Dense all-reduce steps through a real tessera-coordinator (docs/dense_allreduce.md): workers
// (threads with their own job clocks) form generations, sum over Gloo with the rendezvous on the
// coordinator's keys, and apply only what the coordinator decided; a worker that goes silent is
// left behind once its lease ends and the others go on, their replicas equal bit for bit.
#include "worker/allreduce_steps.h"

#include <grpcpp/grpcpp.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <thread>

#include "client/worker_clock.h"
#include "common/grpc_channel.h"
#include "proto/cluster.grpc.pb.h"
#include "tests/test_cluster.h"

namespace tessera {
namespace {

constexpr size_t kFloats = 5000;  // the all-reduced "table"
constexpr float kLr = 0.1f;

// The toy model: gradient from the state, different per worker.
void Gradients(uint32_t worker, absl::Span<const float> state, absl::Span<float> grads) {
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = 0.5f * state[i] + 0.01f * (worker + 1);
}

std::vector<float> Initial() {
  std::vector<float> s(kFloats);
  for (size_t i = 0; i < kFloats; ++i) s[i] = 0.001f * static_cast<float>(i);
  return s;
}

struct Trace {
  std::vector<std::vector<float>> after;  // the state after each step applied
  std::vector<uint32_t> members;          // of each step's sum
  absl::Status status;
};

// Worker `w` runs steps 1..`steps` (then stops: its clock's lease lapses).
void RunWorker(const LocalCluster& cluster, uint32_t w, uint32_t num_workers, int steps,
               Trace* trace) {
  WorkerClockOptions co{.coordinator = cluster.coordinator_address(),
                        .job = "dense",
                        .num_workers = num_workers,
                        .worker = w,
                        .mode = ConsistencyMode::kBsp,
                        .lease_ms = 1000,
                        .credentials = testing::JobCredentials(cluster)};
  absl::StatusOr<std::unique_ptr<WorkerClock>> clock = WorkerClock::Join(co);
  if (!clock.ok()) {
    trace->status = clock.status();
    return;
  }
  AllReduceStepsOptions o{.coordinator = cluster.coordinator_address(),
                          .credentials = testing::JobCredentials(cluster),
                          .job = "dense",
                          .worker = w,
                          .incarnation = (*clock)->incarnation()};
  o.group.timeout = absl::Seconds(3);
  o.group.bucket_bytes = 4096;  // several buckets a step
  absl::StatusOr<std::unique_ptr<AllReduceSteps>> steps_or = AllReduceSteps::Create(o);
  if (!steps_or.ok()) {
    trace->status = steps_or.status();
    return;
  }
  std::vector<float> state = Initial();
  for (int step = 1; step <= steps; ++step) {
    absl::Status s = (*steps_or)->Step(
        step, absl::MakeSpan(state), kFloats,
        [&](absl::Span<const float> st, absl::Span<float> g) { Gradients(w, st, g); },
        [&](absl::Span<const float> sum, uint32_t members) {
          for (size_t i = 0; i < kFloats; ++i) state[i] -= kLr * sum[i] / members;
          trace->members.push_back(members);
        },
        absl::Seconds(30));
    if (!s.ok()) {
      trace->status = s;
      return;
    }
    trace->after.push_back(state);
  }
}

TEST_CASE("all-reduce steps keep every replica equal and go on without a silent worker",
          "[clocks][allreduce]") {
  auto cluster = testing::StartCoordinated(1, 1, 1);
  std::vector<Trace> traces(3);
  std::vector<std::thread> threads;
  // Workers 0 and 1 run 10 steps; worker 2 stops after 4 (as if frozen: its lease lapses).
  for (uint32_t w = 0; w < 3; ++w) {
    threads.emplace_back([&, w] { RunWorker(*cluster, w, 3, w == 2 ? 4 : 10, &traces[w]); });
  }
  for (std::thread& t : threads) t.join();
  for (uint32_t w = 0; w < 3; ++w) {
    INFO("worker " << w << ": " << traces[w].status.ToString());
    REQUIRE(traces[w].status.ok());
  }
  REQUIRE(traces[0].after.size() == 10);
  REQUIRE(traces[2].after.size() == 4);
  // A1: the same replica after every step, bit for bit, on every worker that applied it.
  for (size_t s = 0; s < 10; ++s) {
    CHECK(std::memcmp(traces[0].after[s].data(), traces[1].after[s].data(), kFloats * 4) == 0);
    if (s < 4) {
      CHECK(std::memcmp(traces[0].after[s].data(), traces[2].after[s].data(), kFloats * 4) == 0);
    }
  }
  // Three members while worker 2 took part, two after.
  CHECK(traces[0].members == std::vector<uint32_t>{3, 3, 3, 3, 2, 2, 2, 2, 2, 2});
  // A3: the sums are the members' gradients: a serial replay agrees within float rounding.
  std::vector<float> want = Initial();
  std::vector<float> g(kFloats), sum(kFloats);
  for (size_t s = 0; s < 10; ++s) {
    const uint32_t members = traces[0].members[s];
    std::fill(sum.begin(), sum.end(), 0.0f);
    for (uint32_t w = 0; w < members; ++w) {
      Gradients(w, want, absl::MakeSpan(g));
      for (size_t i = 0; i < kFloats; ++i) sum[i] += g[i];
    }
    for (size_t i = 0; i < kFloats; ++i) want[i] -= kLr * sum[i] / members;
  }
  double worst = 0;
  for (size_t i = 0; i < kFloats; ++i) {
    worst = std::max(worst, std::abs(double(want[i]) - traces[0].after[9][i]) /
                                std::max(1e-3, std::abs(double(want[i]))));
  }
  CHECK(worst < 1e-5);
}

TEST_CASE("the coordinator refuses bad all-reduce calls with clear errors", "[clocks][allreduce]") {
  auto cluster = testing::StartCoordinated(1, 1, 1);
  WorkerClockOptions co{.coordinator = cluster->coordinator_address(),
                        .job = "bad",
                        .num_workers = 2,
                        .credentials = testing::JobCredentials(*cluster)};
  absl::StatusOr<std::unique_ptr<WorkerClock>> clock = WorkerClock::Join(co);
  REQUIRE(clock.ok());
  auto stub = v1::Coordinator::NewStub(
      MakeChannel(cluster->coordinator_address(), testing::JobCredentials(*cluster)));
  auto call = [&](const v1::AllReduceRequest& req) {
    grpc::ClientContext ctx;
    v1::AllReduceResponse resp;
    return stub->AllReduce(&ctx, req, &resp);
  };
  v1::AllReduceRequest req;
  req.set_job("bad");
  req.set_worker(0);
  req.set_worker_incarnation((*clock)->incarnation());
  CHECK(call(req).error_code() == grpc::StatusCode::INVALID_ARGUMENT);  // no operation
  req.mutable_set()->set_key("k");
  req.mutable_set()->set_value(std::string(65 << 10, 'v'));
  CHECK(call(req).error_code() == grpc::StatusCode::INVALID_ARGUMENT);  // a value too large
  for (int i = 0; i < 1025; ++i) req.mutable_get()->add_keys("k");
  CHECK(call(req).error_code() == grpc::StatusCode::INVALID_ARGUMENT);  // too many keys
  req.mutable_group()->set_step(1);
  req.set_worker_incarnation(12345);
  const grpc::Status stranger = call(req);
  CHECK(stranger.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(stranger.error_message().find("rejoin") != std::string::npos);
  req.set_job("nope");
  CHECK(call(req).error_code() == grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace tessera
