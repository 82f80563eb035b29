// Synthetic sparse logistic-regression data with a planted model, so that convergence is
// testable: the best achievable accuracy is known (the planted model's own).
#ifndef TESSERA_WORKER_SYNTHETIC_H_
#define TESSERA_WORKER_SYNTHETIC_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace tessera {

struct PlantedLrOptions {
  uint64_t num_features = 20000;  // feature ids 0 .. num_features-1; the bias is id num_features
  uint32_t features_per_sample = 10;  // active (value 1) features per sample, drawn uniformly
  uint64_t train_samples = 400000;
  uint64_t test_samples = 50000;
  float weight_stddev = 0.8f;  // planted weights ~ normal(0, stddev); the bias too
  uint64_t seed = 1;
};

// Samples with binary features: sample i has features[i * k, (i + 1) * k) (repeats allowed).
struct LrDataset {
  uint32_t k = 0;
  std::vector<uint64_t> features;
  std::vector<float> labels;  // 0 or 1
  size_t size() const { return labels.size(); }
};

struct PlantedLrProblem {
  uint64_t num_features = 0;
  std::vector<float> weights;  // planted weight of each feature id, plus the bias at the end
  LrDataset train;
  LrDataset test;
  uint64_t bias_key() const { return num_features; }
};

// Deterministic for a given options.seed. Labels ~ Bernoulli(sigmoid(planted score)).
PlantedLrProblem MakePlantedLrProblem(const PlantedLrOptions& options);

struct LrEval {
  double accuracy = 0;  // fraction with (score > 0) == label
  double logloss = 0;   // mean negative log-likelihood
};

// Evaluates weights (indexed by feature id, bias at index num_features) on a dataset.
LrEval EvaluateLr(const LrDataset& data, absl::Span<const float> weights, uint64_t bias_key);

}  // namespace tessera

#endif  // TESSERA_WORKER_SYNTHETIC_H_
