// Dense all-reduce steps through a real tessera-coordinator (docs/dense_allreduce.md): workers
// (threads with their own job clocks) form generations, sum over Gloo with the rendezvous on the
// coordinator's keys, and apply only what the coordinator decided; a worker that goes silent is
// left behind once its lease ends and the others go on; restarted, it is given the weights and
// joins; every replica equal bit for bit.
#include "worker/allreduce_steps.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "client/worker_clock.h"
#include "common/grpc_channel.h"
#include "proto/cluster.grpc.pb.h"
#include "tests/test_cluster.h"
#include "worker/dense_replica.h"

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
  std::map<uint64_t, std::vector<float>> after;  // the state after each step applied
  std::map<uint64_t, uint32_t> members;          // of each step's sum
  std::atomic<uint64_t> applied{0};
  absl::Status status;
};

// Worker `w` joins the job and applies steps until step `last` (a worker restarted into the
// running job starts without the weights and joins the group's step); stops after `last`: its
// clock's lease lapses.
void RunWorker(const LocalCluster& cluster, uint32_t w, uint64_t last, bool holds, Trace* trace) {
  WorkerClockOptions co{.coordinator = cluster.coordinator_address(),
                        .job = "dense",
                        .num_workers = 3,
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
                          .incarnation = (*clock)->incarnation(),
                          .holds = holds};
  o.group.timeout = absl::Seconds(3);
  o.group.bucket_bytes = 4096;  // several buckets a step
  absl::StatusOr<std::unique_ptr<AllReduceSteps>> steps = AllReduceSteps::Create(o);
  if (!steps.ok()) {
    trace->status = steps.status();
    return;
  }
  std::vector<float> state = holds ? Initial() : std::vector<float>(kFloats, -1.0f);
  for (uint64_t step = 1; step <= last;) {
    uint32_t members = 0;
    absl::StatusOr<uint64_t> applied = (*steps)->Step(
        step, absl::MakeSpan(state), kFloats,
        [&](absl::Span<const float> st, absl::Span<float> g) { Gradients(w, st, g); },
        [&](absl::Span<const float> sum, uint32_t n) {
          for (size_t i = 0; i < kFloats; ++i) state[i] -= kLr * sum[i] / n;
          members = n;
        },
        absl::Seconds(30));
    if (!applied.ok()) {
      trace->status = applied.status();
      return;
    }
    trace->after[*applied] = state;
    trace->members[*applied] = members;
    trace->applied = *applied;
    step = *applied + 1;
  }
}

TEST_CASE("all-reduce steps keep every replica equal through a worker gone silent and restarted",
          "[clocks][allreduce]") {
  auto cluster = testing::StartCoordinated(1, 1, 1);
  std::vector<Trace> traces(4);  // workers 0, 1, 2, and 2 restarted
  std::vector<std::thread> threads;
  // Workers 0 and 1 run 14 steps; worker 2 stops after 4 (as if frozen: its lease lapses).
  for (uint32_t w = 0; w < 3; ++w) {
    threads.emplace_back([&, w] { RunWorker(*cluster, w, w == 2 ? 4 : 14, true, &traces[w]); });
  }
  // Once the others are two steps past it, worker 2 comes back (a new process: a new
  // incarnation, no weights) and joins the group's step, given the weights.
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (traces[0].applied < 7 && absl::Now() < deadline && traces[0].status.ok()) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  threads.emplace_back([&] { RunWorker(*cluster, 2, 14, false, &traces[3]); });
  for (std::thread& t : threads) t.join();
  for (uint32_t w = 0; w < 4; ++w) {
    INFO("trace " << w << ": " << traces[w].status.ToString());
    REQUIRE(traces[w].status.ok());
  }
  REQUIRE(traces[0].after.size() == 14);
  REQUIRE(traces[2].after.size() == 4);
  const uint64_t joined = traces[3].after.begin()->first;
  CHECK(joined > 7);
  // A1: the same replica after every step, bit for bit, on every worker that applied it.
  for (uint32_t w = 1; w < 4; ++w) {
    for (const auto& [step, state] : traces[w].after) {
      INFO("worker trace " << w << " step " << step);
      CHECK(std::memcmp(traces[0].after[step].data(), state.data(), kFloats * 4) == 0);
    }
  }
  // Three members while worker 2 took part, two while it was gone, three once it was back.
  for (const auto& [step, members] : traces[0].members) {
    INFO("step " << step);
    CHECK(members == (step <= 4 || step >= joined ? 3u : 2u));
  }
  // A3: the sums are the members' gradients: a serial replay agrees within float rounding.
  std::vector<float> want = Initial();
  std::vector<float> g(kFloats), sum(kFloats);
  for (const auto& [step, members] : traces[0].members) {
    std::fill(sum.begin(), sum.end(), 0.0f);
    for (uint32_t w = 0; w < members; ++w) {
      Gradients(w, want, absl::MakeSpan(g));
      for (size_t i = 0; i < kFloats; ++i) sum[i] += g[i];
    }
    for (size_t i = 0; i < kFloats; ++i) want[i] -= kLr * sum[i] / members;
  }
  double worst = 0;
  for (size_t i = 0; i < kFloats; ++i) {
    worst = std::max(worst, std::abs(double(want[i]) - traces[0].after[14][i]) /
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

// "The same optimizer code the servers use": a replica fed the gradients a server's dense
// table is fed holds the same weights, bit for bit: plain pushes, and a BSP step's mean.
TEST_CASE("a dense replica equals the server's table fed the same gradients bit for bit",
          "[allreduce]") {
  auto cluster = testing::StartCoordinated(1, 1, 1);
  std::unique_ptr<Client> c = testing::ConnectCoordinated(*cluster);
  TableConfig config{.name = "w",
                     .kind = TableKind::kDense,
                     .dense_size = 1000,
                     .dense_block_elems = 384};  // blocks of 384, 384 and 232
  config.optimizer.kind = OptimizerKind::kAdam;
  config.initializer = {.kind = InitializerKind::kNormal, .seed = 5};
  REQUIRE(c->CreateTable(config).ok());
  absl::StatusOr<DenseReplica> replica = DenseReplica::Create(config);
  REQUIRE(replica.ok());
  auto same = [&] {
    std::vector<float> pulled(1000);
    REQUIRE(c->PullDense("w", 0, absl::MakeSpan(pulled)).ok());
    return std::memcmp(pulled.data(), replica->weights().data(), 1000 * 4) == 0;
  };
  CHECK(same());  // the initializer's values
  std::mt19937 rng(3);
  std::normal_distribution<float> d;
  std::vector<float> g1(1000), g2(1000), g3(1000), sum(1000);
  for (int round = 0; round < 4; ++round) {
    for (float& x : g1) x = d(rng);
    REQUIRE(c->PushDense("w", 0, g1).ok());
    replica->ApplyMean(g1, 1);
    CHECK(same());
  }
  for (uint64_t step = 1; step <= 3; ++step) {  // three workers' gradients, as their mean
    for (auto* g : {&g1, &g2, &g3}) {
      for (float& x : *g) x = d(rng);
      REQUIRE(c->PushDense("w", 0, *g, {.accumulate_step = step}).ok());
    }
    REQUIRE(c->ApplyStep("w", step, 1.0f / 3).ok());
    for (size_t i = 0; i < 1000; ++i) sum[i] = g1[i] + g2[i] + g3[i];
    replica->ApplyMean(sum, 3);
    CHECK(same());
  }
  CHECK(DenseReplica::Create({.name = "s", .kind = TableKind::kSparse, .dim = 4}).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tessera
