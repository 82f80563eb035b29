#include "worker/data/synthetic_ctr.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <map>

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

// The problem of `o` with 20,000 training and test examples, made twice: the same both times.
PlantedCtrProblem MakeDeterministic(PlantedCtrOptions o) {
  o.train_examples = 20000;
  o.test_examples = 20000;
  PlantedCtrProblem a = MakePlantedCtrProblem(o);
  const PlantedCtrProblem b = MakePlantedCtrProblem(o);
  CHECK(a.train.keys == b.train.keys);
  CHECK(a.train.labels == b.train.labels);
  return a;
}

TEST_CASE("the planted CTR problem is deterministic and learnable", "[ctr]") {
  PlantedCtrOptions o;
  const PlantedCtrProblem a = MakeDeterministic(o);
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

TEST_CASE("a vocabulary of 10^7 ids is Zipf-distributed, deterministic and learnable", "[ctr]") {
  PlantedCtrOptions o;
  o.vocabulary = 10'000'000;  // (planted parameters hashed: no 10^7-entry tables)
  const PlantedCtrProblem a = MakeDeterministic(o);
  // Zipf(1.1): the most popular id of a field takes a few percent of its draws, and most ids
  // drawn are drawn once.
  std::map<uint64_t, int> field0;
  for (size_t i = 0; i < a.train.num_examples(); ++i) ++field0[a.train.keys[a.train.offsets[i]]];
  int most = 0, once = 0;
  for (const auto& [key, n] : field0) {
    most = std::max(most, n);
    once += n == 1;
  }
  INFO(field0.size() << " distinct ids in field 0, the most popular drawn " << most << " times");
  CHECK(most > 20000 / 50);
  CHECK(once > static_cast<int>(field0.size()) / 2);
  const double planted = Auc(a.test_logits, a.test.labels);
  INFO("planted AUC " << planted);
  CHECK(planted > 0.7);
}

}  // namespace
}  // namespace tessera
