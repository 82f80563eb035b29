// The server-less reference path on real data: Debian's Fashion-MNIST (tools/setup.sh installs
// dataset-fashion-mnist).
#include "worker/models/mlp_reference.h"

#include <catch2/catch.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tessera {
namespace {

TEST_CASE("the reference MLP reaches 0.85 test accuracy on Fashion-MNIST in three epochs",
          "[mlp][data]") {
  const std::string dir = kFashionMnistDir;
  absl::StatusOr<IdxDataset> train =
      ReadIdxDataset(dir + "/train-images-idx3-ubyte.gz", dir + "/train-labels-idx1-ubyte.gz");
  absl::StatusOr<IdxDataset> test =
      ReadIdxDataset(dir + "/t10k-images-idx3-ubyte.gz", dir + "/t10k-labels-idx1-ubyte.gz");
  INFO(train.status().ToString() << " / " << test.status().ToString()
                                 << " (tools/setup.sh installs dataset-fashion-mnist)");
  REQUIRE(train.ok());
  REQUIRE(test.ok());
  REQUIRE(train->num_examples == 60000);
  REQUIRE(test->num_examples == 10000);
  SetBlasThreads(1);
  MlpTrainOptions o;
  o.shape = {{784, 256, 10}};
  o.epochs = 3;
  const absl::Time start = absl::Now();
  absl::StatusOr<MlpReferenceResult> r =
      TrainMlpReference(*train, *test, o, [&](const MlpEpochReport& e) {
        WARN(absl::StrCat("epoch ", e.epoch, ": train loss ", e.train_loss, ", test accuracy ",
                          e.test_accuracy, " (", absl::FormatDuration(absl::Now() - start), ")"));
      });
  REQUIRE(r.ok());
  REQUIRE(r->epochs.size() == 3);
  CHECK(r->epochs[2].train_loss < r->epochs[0].train_loss);
  CHECK(r->epochs[2].test_accuracy >= 0.85);
}

}  // namespace
}  // namespace tessera
