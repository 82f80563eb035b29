#include "worker/data/synthetic_ctr.h"

#include <catch2/catch.hpp>

namespace tessera {
namespace {

TEST_CASE("AUC ranks positives above negatives, ties count one half", "[ctr]") {
  const std::vector<float> labels = {0, 0, 1, 1};
  CHECK(Auc(std::vector<float>{0.1f, 0.2f, 0.3f, 0.4f}, labels) == 1.0);
  CHECK(Auc(std::vector<float>{0.4f, 0.3f, 0.2f, 0.1f}, labels) == 0.0);
  CHECK(Auc(std::vector<float>{0.5f, 0.5f, 0.5f, 0.5f}, labels) == 0.5);
  CHECK(Auc(std::vector<float>{0.1f, 0.3f, 0.2f, 0.4f}, labels) == 0.75);
  CHECK(Auc(std::vector<float>{0.1f, 0.2f}, std::vector<float>{1, 1}) == 0.5);
}

TEST_CASE("the planted CTR problem is deterministic and learnable", "[ctr]") {
  PlantedCtrOptions o;
  o.train_examples = 20000;
  o.test_examples = 20000;
  const PlantedCtrProblem a = MakePlantedCtrProblem(o);
  const PlantedCtrProblem b = MakePlantedCtrProblem(o);
  CHECK(a.train.keys == b.train.keys);
  CHECK(a.train.labels == b.train.labels);
  REQUIRE(a.test.num_examples() == 20000);
  CHECK(a.test.offsets.back() == 20000 * o.num_fields);
  CHECK(a.test.dense.size() == 20000 * o.num_dense);
  double clicks = 0;
  for (float l : a.test.labels) clicks += l;
  const double rate = clicks / a.test.num_examples();
  INFO("click rate " << rate);
  CHECK(rate > 0.1);
  CHECK(rate < 0.6);
  // The planted model is the best ranking there is: well above chance, below perfect.
  const double planted = Auc(a.test_logits, a.test.labels);
  INFO("planted AUC " << planted);
  CHECK(planted > 0.7);
  CHECK(planted < 0.99);
  // Another seed gives another problem.
  o.seed = 2;
  CHECK(MakePlantedCtrProblem(o).train.labels != a.train.labels);
}

}  // namespace
}  // namespace tessera
