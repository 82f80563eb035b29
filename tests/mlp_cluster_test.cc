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

std::unique_ptr<LocalCluster> StartCluster() {
  LocalClusterOptions o;
  o.server_binary = TESSERA_SERVER_BINARY;
  o.coordinator_binary = TESSERA_COORDINATOR_BINARY;
  o.num_servers = 2;
  o.replication = 1;
  absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(o);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return std::move(*c);
}

std::unique_ptr<Client> ConnectTo(const LocalCluster& cluster) {
  ClientOptions o;
  o.coordinator = cluster.coordinator_address();
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return std::move(*c);
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
  absl::StatusOr<MlpWorkerReport> report = TrainMlpWorker(*client, clock->get(), train, o, 0, 1);
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

// Trains the Fashion-MNIST MLP with two worker threads (each its own client and clock) in
// `mode`; returns the test accuracy.
double TrainTwoWorkers(const LocalCluster& cluster, const IdxDataset& train, const IdxDataset& test,
                       ConsistencyMode mode, uint32_t staleness, const std::string& name) {
  MlpTrainOptions o;
  o.shape = {{784, 256, 10}};
  o.epochs = 5;
  o.prefix = name;
  std::vector<std::thread> workers;
  std::vector<absl::Status> results(2);
  for (uint32_t w = 0; w < 2; ++w) {
    workers.emplace_back([&, w] {
      absl::StatusOr<std::unique_ptr<Client>> client =
          Client::Connect({.coordinator = cluster.coordinator_address()});
      if (!client.ok()) {
        results[w] = client.status();
        return;
      }
      absl::StatusOr<std::unique_ptr<WorkerClock>> clock =
          WorkerClock::Join({.coordinator = cluster.coordinator_address(),
                             .job = name,
                             .num_workers = 2,
                             .worker = w,
                             .mode = mode,
                             .staleness = staleness});
      if (!clock.ok()) {
        results[w] = clock.status();
        return;
      }
      results[w] = TrainMlpWorker(**client, clock->get(), train, o, w, 2).status();
    });
  }
  for (auto& t : workers) t.join();
  for (const absl::Status& s : results) {
    INFO(name);
    TESSERA_REQUIRE_OK(s);
  }
  std::unique_ptr<Client> client = ConnectTo(cluster);
  absl::StatusOr<MlpParams> trained = PullMlpParams(*client, o);
  REQUIRE(trained.ok());
  const double accuracy = MlpAccuracy(o.shape, *trained, test);
  WARN(absl::StrFormat("%s: test accuracy after %d epochs with 2 workers: %.4f", name, o.epochs,
                       accuracy));
  return accuracy;
}

TEST_CASE("two BSP workers train the Fashion-MNIST MLP to 0.85 test accuracy", "[mlp][cluster]") {
  SetBlasThreads(1);
  const IdxDataset train = Load("train");
  const IdxDataset test = Load("t10k");
  auto cluster = StartCluster();
  CHECK(TrainTwoWorkers(*cluster, train, test, ConsistencyMode::kBsp, 0, "bsp") >= 0.85);
}

// SSP(2) and async against BSP (the "within 0.5 points") is measured, not asserted
// yet: one run each differs by up to 0.6 points from run to run before step aggregation
// (docs/worker.md). Run it with: mlp_cluster_test "[.modes]".
TEST_CASE("SSP(2) and async next to BSP on Fashion-MNIST", "[.modes]") {
  SetBlasThreads(1);
  const IdxDataset train = Load("train");
  const IdxDataset test = Load("t10k");
  auto cluster = StartCluster();
  TrainTwoWorkers(*cluster, train, test, ConsistencyMode::kBsp, 0, "bsp");
  TrainTwoWorkers(*cluster, train, test, ConsistencyMode::kSsp, 2, "ssp2");
  TrainTwoWorkers(*cluster, train, test, ConsistencyMode::kAsync, 0, "async");
}

}  // namespace
}  // namespace tessera
