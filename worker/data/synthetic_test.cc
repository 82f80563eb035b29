#include "worker/data/synthetic.h"

#include <catch2/catch.hpp>

namespace tessera {
namespace {

TEST_CASE("planted problems are deterministic and learnable", "[synthetic]") {
  PlantedLrOptions o{.num_features = 1000, .train_samples = 2000, .test_samples = 5000};
  const PlantedLrProblem a = MakePlantedLrProblem(o);
  const PlantedLrProblem b = MakePlantedLrProblem(o);
  CHECK(a.train.features == b.train.features);
  CHECK(a.test.labels == b.test.labels);
  o.seed = 2;
  CHECK(MakePlantedLrProblem(o).train.features != a.train.features);
  // The planted model beats chance clearly; the zero model is at log 2.
  const LrEval planted = EvaluateLr(a.test, a.weights, a.bias_key());
  CHECK(planted.accuracy > 0.7);
  std::vector<float> zeros(a.weights.size());
  CHECK(EvaluateLr(a.test, zeros, a.bias_key()).logloss == Approx(std::log(2.0)));
}

}  // namespace
}  // namespace tessera
