#include "worker/data/synthetic.h"

#include <cmath>
#include <random>

namespace tessera {
namespace {

void Generate(const PlantedLrProblem& p, uint32_t k, uint64_t n, std::mt19937_64& rng,
              LrDataset* out) {
  std::uniform_int_distribution<uint64_t> feature(0, p.num_features - 1);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  out->k = k;
  out->features.resize(n * k);
  out->labels.resize(n);
  for (uint64_t i = 0; i < n; ++i) {
    double score = p.weights[p.bias_key()];
    for (uint32_t j = 0; j < k; ++j) {
      const uint64_t f = feature(rng);
      out->features[i * k + j] = f;
      score += p.weights[f];
    }
    out->labels[i] = coin(rng) < 1.0 / (1.0 + std::exp(-score)) ? 1.0f : 0.0f;
  }
}

}  // namespace

PlantedLrProblem MakePlantedLrProblem(const PlantedLrOptions& o) {
  PlantedLrProblem p;
  p.num_features = o.num_features;
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<float> w(0.0f, o.weight_stddev);
  p.weights.resize(o.num_features + 1);
  for (float& v : p.weights) v = w(rng);
  Generate(p, o.features_per_sample, o.train_samples, rng, &p.train);
  Generate(p, o.features_per_sample, o.test_samples, rng, &p.test);
  return p;
}

LrEval EvaluateLr(const LrDataset& data, absl::Span<const float> weights, uint64_t bias_key) {
  LrEval e;
  if (data.size() == 0) return e;
  uint64_t correct = 0;
  double loss = 0;
  for (size_t i = 0; i < data.size(); ++i) {
    double score = weights[bias_key];
    for (uint32_t j = 0; j < data.k; ++j) score += weights[data.features[i * data.k + j]];
    const bool y = data.labels[i] > 0.5f;
    correct += (score > 0) == y;
    // log(1 + exp(-s)) for y = 1, log(1 + exp(s)) for y = 0, computed stably.
    const double m = y ? -score : score;
    loss += m > 0 ? m + std::log1p(std::exp(-m)) : std::log1p(std::exp(m));
  }
  e.accuracy = static_cast<double>(correct) / data.size();
  e.logloss = loss / data.size();
  return e;
}

}  // namespace tessera
