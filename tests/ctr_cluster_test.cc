// The embedding + MLP CTR model trained through a real cluster (coordinator, two servers, two
// workers with their clocks) on the synthetic problem with a planted model (docs/worker.md).
#include <catch2/catch.hpp>
#include <thread>
#include <tuple>

#include "absl/strings/str_format.h"
#include "tests/test_cluster.h"
#include "worker/ctr_trainer.h"
#include "worker/models/mlp.h"
#include "worker/data/synthetic_ctr.h"

namespace tessera {
namespace {

// Two worker threads (each its own client and clock) train `o` in `mode`, worker w on the
// batches w, w + 2, ...; returns the test AUC of what the cluster holds afterwards.
double TrainTwo(const LocalCluster& cluster, const PlantedCtrProblem& p, const CtrTrainOptions& o,
                ConsistencyMode mode, const std::string& job, const TrainLoopOptions& loop) {
  testing::RunWorkerThreads(cluster, 2, job, mode, mode == ConsistencyMode::kSsp ? 2u : 0u,
                            [&](Client& client, WorkerClock* clock, uint32_t w) {
                              CtrStepModel model(p.train, o);
                              TrainLoopOptions mine = loop;
                              mine.epochs = o.epochs;
                              mine.worker = w;
                              mine.num_workers = 2;
                              return RunTrainLoop(client, clock, model, mine).status();
                            });
  std::unique_ptr<Client> client = testing::ConnectCoordinated(cluster);
  absl::StatusOr<double> auc = CtrAuc(*client, o, p.test);
  TESSERA_REQUIRE_OK(auc.status());
  return *auc;
}

TEST_CASE("the CTR model reaches the planted model's AUC within 0.02 through a cluster",
          "[ctr][cluster]") {
  SetBlasThreads(1);
  const PlantedCtrOptions po;  // 8 fields of 50 Zipf ids, 4 dense features, 200k examples
  const PlantedCtrProblem p = MakePlantedCtrProblem(po);
  const double planted = Auc(p.test_logits, p.test.labels);
  auto cluster = testing::StartCoordinated(2, 1, 2);
  CtrTrainOptions o;
  o.shape = {.fields = po.num_fields, .dim = 8, .dense = po.num_dense, .hidden = {64, 32}};
  TESSERA_REQUIRE_OK(CheckCtrData(p.train, o.shape));
  // Async with the next batch's pull overlapping this one's compute, and BSP.
  for (const auto& [mode, name, prefetch] : {std::tuple{ConsistencyMode::kAsync, "async", true},
                                             std::tuple{ConsistencyMode::kBsp, "bsp", false}}) {
    o.prefix = name;
    const double auc = TrainTwo(*cluster, p, o, mode, name, {.prefetch = prefetch});
    WARN(absl::StrFormat("CTR %s, 2 workers, %d epochs: test AUC %.4f, planted model %.4f", name,
                         o.epochs, auc, planted));
    CHECK(auc >= planted - 0.02);
    CHECK(auc <= planted + 0.01);  // (above the planted model's would mean a leak)
  }
}

}  // namespace
}  // namespace tessera
