// The MLP classifier trained through a real cluster (coordinator, servers, workers' clocks) on
// Debian's Fashion-MNIST (docs/worker.md).
#include <catch2/catch.hpp>
#include <cmath>
#include <thread>

#include "absl/strings/str_format.h"
#include "tests/test_cluster.h"
#include "worker/mlp_trainer.h"

namespace tessera {
namespace {

IdxDataset Load(const std::string& which) {
  const std::string dir = kFashionMnistDir;
  absl::StatusOr<IdxDataset> d = ReadIdxDataset(dir + "/" + which + "-images-idx3-ubyte.gz",
                                                dir + "/" + which + "-labels-idx1-ubyte.gz");
  INFO(d.status().ToString() << " (tools/setup.sh installs dataset-fashion-mnist)");
  REQUIRE(d.ok());
  return *std::move(d);
}

IdxDataset Head(const IdxDataset& d, uint32_t n) {
  IdxDataset h = d;
  h.num_examples = n;
  h.features.resize(size_t{n} * d.num_features);
  h.labels.resize(n);
  return h;
}

std::unique_ptr<LocalCluster> StartCluster() { return testing::StartCoordinated(2, 1, 2); }

std::unique_ptr<Client> ConnectTo(const LocalCluster& cluster) {
  return testing::ConnectCoordinated(cluster);
}

TEST_CASE("BSP with one worker reproduces the server-less reference", "[mlp][cluster]") {
  SetBlasThreads(1);
  const IdxDataset train = Head(Load("train"), 2048);
  MlpTrainOptions o;
  o.shape = {{784, 64, 10}};
  o.batch_size = 64;
  o.epochs = 1;
  absl::StatusOr<MlpReferenceResult> reference = TrainMlpReference(train, Head(train, 64), o);
  REQUIRE(reference.ok());

  auto cluster = StartCluster();
  std::unique_ptr<Client> client = ConnectTo(*cluster);
  absl::StatusOr<std::unique_ptr<WorkerClock>> clock =
      WorkerClock::Join({.coordinator = cluster->coordinator_address(), .job = "bsp1"});
  REQUIRE(clock.ok());
  absl::StatusOr<WorkerReport> report = TrainMlpWorker(*client, clock->get(), train, o, {});
  INFO(report.status().ToString());
  REQUIRE(report.ok());
  CHECK(report->steps == 32);
  absl::StatusOr<MlpParams> trained = PullMlpParams(*client, o);
  REQUIRE(trained.ok());
  double worst = 0;
  for (size_t l = 0; l < o.shape.num_layers(); ++l) {
    for (const auto& [got, want] : {std::pair{&trained->w[l], &reference->params.w[l]},
                                    std::pair{&trained->b[l], &reference->params.b[l]}}) {
      for (size_t i = 0; i < want->size(); ++i) {
        const double rel = std::abs((*got)[i] - (*want)[i]) / std::max(std::abs((*want)[i]), 1e-3f);
        worst = std::max(worst, rel);
      }
    }
  }
  INFO("largest relative difference " << worst);
  CHECK(worst <= 1e-5);
}

// The largest difference between two parameter sets, relative to max(|want|, floor).
double LargestRelativeDifference(const MlpShape& shape, const MlpParams& got, const MlpParams& want,
                                 float floor) {
  double worst = 0;
  for (size_t l = 0; l < shape.num_layers(); ++l) {
    for (const auto& [g, w] :
         {std::pair{&got.w[l], &want.w[l]}, std::pair{&got.b[l], &want.b[l]}}) {
      for (size_t i = 0; i < w->size(); ++i) {
        worst = std::max<double>(worst,
                                 std::abs((*g)[i] - (*w)[i]) / std::max(std::abs((*w)[i]), floor));
      }
    }
  }
  return worst;
}

// Two worker threads (each its own client and clock) train `o` on `train` in `mode`; returns
// the parameters the cluster holds afterwards.
MlpParams TrainTwo(const LocalCluster& cluster, const IdxDataset& train, const MlpTrainOptions& o,
                   ConsistencyMode mode, uint32_t staleness, const std::string& job,
                   const TrainLoopOptions& loop = {}) {
  testing::RunWorkerThreads(cluster, 2, job, mode, staleness,
                            [&](Client& client, WorkerClock* clock, uint32_t w) {
                              TrainLoopOptions mine = loop;
                              mine.worker = w;
                              mine.num_workers = 2;
                              return TrainMlpWorker(client, clock, train, o, mine).status();
                            });
  std::unique_ptr<Client> client = ConnectTo(cluster);
  absl::StatusOr<MlpParams> trained = PullMlpParams(*client, o);
  REQUIRE(trained.ok());
  return *std::move(trained);
}

TEST_CASE("two BSP workers apply each step once: they equal one worker with twice the batch",
          "[mlp][cluster]") {
  SetBlasThreads(1);
  const IdxDataset train = Head(Load("train"), 2048);
  MlpTrainOptions o;
  o.shape = {{784, 32, 10}};
  o.optimizer = {.kind = OptimizerKind::kSgd, .learning_rate = 0.1f};
  o.epochs = 1;
  o.batch_size = 128;  // the reference's step: both workers' batches together
  absl::StatusOr<MlpReferenceResult> reference = TrainMlpReference(train, Head(train, 64), o);
  REQUIRE(reference.ok());
  auto cluster = StartCluster();
  o.batch_size = 64;
  o.prefix = "bsp";
  const MlpParams bsp = TrainTwo(*cluster, train, o, ConsistencyMode::kBsp, 0, "bsp");
  const double worst = LargestRelativeDifference(o.shape, bsp, reference->params, 1e-2f);
  INFO("BSP: largest relative difference " << worst);
  CHECK(worst <= 1e-4);
  // The control: SSP(0) waits the same way but applies each worker's gradient on its own.
  o.prefix = "ssp0";
  const MlpParams ssp0 = TrainTwo(*cluster, train, o, ConsistencyMode::kSsp, 0, "ssp0");
  const double apart = LargestRelativeDifference(o.shape, ssp0, reference->params, 1e-2f);
  INFO("SSP(0): largest relative difference " << apart);
  CHECK(apart > 1e-3);
}

// Trains the Fashion-MNIST MLP (784-256-10, 5 epochs) with two worker threads (each its own
// client and clock) in `mode`; returns the test accuracy.
double TrainTwoWorkers(const LocalCluster& cluster, const IdxDataset& train, const IdxDataset& test,
                       ConsistencyMode mode, uint32_t staleness, const std::string& name,
                       const OptimizerConfig& optimizer, const TrainLoopOptions& loop = {}) {
  MlpTrainOptions o;
  o.shape = {{784, 256, 10}};
  o.optimizer = optimizer;
  o.epochs = 5;
  o.prefix = name;
  const MlpParams trained = TrainTwo(cluster, train, o, mode, staleness, name, loop);
  const double accuracy = MlpAccuracy(o.shape, trained, test);
  WARN(absl::StrFormat("%s: test accuracy after %d epochs with 2 workers: %.4f", name, o.epochs,
                       accuracy));
  return accuracy;
}

TEST_CASE("two BSP workers train the Fashion-MNIST MLP to 0.85 test accuracy", "[mlp][cluster]") {
  SetBlasThreads(1);
  const IdxDataset train = Load("train");
  const IdxDataset test = Load("t10k");
  auto cluster = StartCluster();
  const OptimizerConfig adam = {.kind = OptimizerKind::kAdam, .learning_rate = 1e-3f};
  CHECK(TrainTwoWorkers(*cluster, train, test, ConsistencyMode::kBsp, 0, "bsp", adam) >= 0.85);
}

// SSP(2) and async against BSP: the "within 0.5 points", on the mean of three runs each
// (BSP is deterministic; the others depend on thread timing, about 0.2 points from run to run).
// The recipe: momentum SGD with its rate decayed linearly to 2% by the end (through the
// gradients' scale), without prefetching; docs/worker.md has the figures and what breaks it
// (higher rates, prefetching). About 100 s here, so not in the default suite; run it with:
//   build/tests/mlp_cluster_test "[.modes]"
TEST_CASE("SSP(2) and async reach BSP's accuracy within half a point on Fashion-MNIST",
          "[.modes]") {
  SetBlasThreads(1);
  const IdxDataset train = Load("train");
  const IdxDataset test = Load("t10k");
  auto cluster = StartCluster();
  const OptimizerConfig momentum = {.kind = OptimizerKind::kMomentum, .learning_rate = 0.06f};
  const TrainLoopOptions loop = {.prefetch = false, .final_gradient_scale = 0.02f};
  const double bsp =
      TrainTwoWorkers(*cluster, train, test, ConsistencyMode::kBsp, 0, "bsp", momentum, loop);
  constexpr int kRuns = 3;
  double ssp = 0, async = 0;
  for (int run = 0; run < kRuns; ++run) {
    ssp += TrainTwoWorkers(*cluster, train, test, ConsistencyMode::kSsp, 2,
                           absl::StrCat("ssp2-", run), momentum, loop) /
           kRuns;
    async += TrainTwoWorkers(*cluster, train, test, ConsistencyMode::kAsync, 0,
                             absl::StrCat("async-", run), momentum, loop) /
             kRuns;
  }
  WARN(absl::StrFormat("BSP %.4f, SSP(2) mean %.4f (%+.2f points), async mean %.4f (%+.2f points)",
                       bsp, ssp, 100 * (ssp - bsp), async, 100 * (async - bsp)));
  CHECK(std::abs(ssp - bsp) <= 0.005);
  CHECK(std::abs(async - bsp) <= 0.005);
}

}  // namespace
}  // namespace tessera
