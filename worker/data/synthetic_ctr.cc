#include "worker/data/synthetic_ctr.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/random/zipf_distribution.h"
#include "common/hash.h"

namespace tessera {

uint64_t CtrKey(uint32_t field, uint32_t id) { return Mix64((uint64_t{field} << 32) | id); }

namespace {

// Samples ids 0..n-1 with probability proportional to 1 / (id + 1)^s.
class Zipf {
 public:
  Zipf(uint32_t n, double s) : cdf_(n) {
    double sum = 0;
    for (uint32_t i = 0; i < n; ++i) cdf_[i] = (sum += 1.0 / std::pow(i + 1.0, s));
    for (double& c : cdf_) c /= sum;
  }
  uint32_t operator()(std::mt19937_64& rng) const {
    const double u = std::uniform_real_distribution<double>(0, 1)(rng);
    return static_cast<uint32_t>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
  }

 private:
  std::vector<double> cdf_;
};

// A normal(0, stddev) value that is a pure function of (seed, index): the planted parameters of
// a large vocabulary, which would not fit in memory as tables (Box-Muller on two hashed
// uniforms).
float HashedNormal(uint64_t seed, uint64_t index, float stddev) {
  const uint64_t h1 = Mix64(seed ^ Mix64(2 * index));
  const uint64_t h2 = Mix64(seed ^ Mix64(2 * index + 1));
  const double u1 = (static_cast<double>(h1 >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  const double u2 = static_cast<double>(h2 >> 11) * 0x1.0p-53;
  return static_cast<float>(stddev * std::sqrt(-2.0 * std::log(u1)) *
                            std::cos(2.0 * 3.14159265358979323846 * u2));
}

}  // namespace

PlantedCtrProblem MakePlantedCtrProblem(const PlantedCtrOptions& o) {
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<float> planted(0, o.planted_stddev);
  std::normal_distribution<float> unit(0, 1);
  const uint32_t f = o.num_fields, v = o.vocabulary, d = o.planted_dim;
  // Small vocabularies: tables of planted parameters and a Zipf CDF (the data of every
  // earlier run). Large ones: parameters hashed from (field, id) and absl's Zipf sampler
  // (rejection-inversion): memory independent of the vocabulary.
  const bool large = v > kLargeVocabulary;
  std::vector<float> w(large ? 0 : size_t{f} * v), e(large ? 0 : size_t{f} * v * d),
      dense_w(o.num_dense);
  for (float& x : w) x = planted(rng);
  for (float& x : e) x = planted(rng);
  for (float& x : dense_w) x = planted(rng);
  const uint64_t param_seed = Mix64(o.seed * 0x9E3779B97F4A7C15ull);
  std::vector<float> e_hashed(large ? size_t{f} * d : 0);
  auto weight = [&](uint32_t a, uint32_t id) {
    return large ? HashedNormal(param_seed, (uint64_t{a} << 32 | id) * (d + 1), o.planted_stddev)
                 : w[size_t{a} * v + id];
  };
  auto embedding = [&](uint32_t a, uint32_t id) -> const float* {
    if (!large) return &e[(size_t{a} * v + id) * d];
    float* out = &e_hashed[size_t{a} * d];
    for (uint32_t k = 0; k < d; ++k) {
      out[k] =
          HashedNormal(param_seed, (uint64_t{a} << 32 | id) * (d + 1) + 1 + k, o.planted_stddev);
    }
    return out;
  };
  const Zipf zipf(large ? 1 : v, o.zipf_exponent);
  absl::zipf_distribution<uint32_t> large_zipf(large ? v - 1 : 1, o.zipf_exponent, 1.0);
  auto draw = [&]() { return large ? large_zipf(rng) : zipf(rng); };
  PlantedCtrProblem p;
  std::vector<uint32_t> ids(f);
  std::vector<const float*> embeddings(f);
  std::vector<float> dense(o.num_dense);
  auto make = [&](uint64_t n, SparseDataset* out, std::vector<float>* logits) {
    out->num_dense = o.num_dense;
    for (uint64_t i = 0; i < n; ++i) {
      double logit = o.bias;
      for (uint32_t a = 0; a < f; ++a) {
        ids[a] = draw();
        logit += weight(a, ids[a]);
      }
      std::vector<const float*>& emb = embeddings;
      for (uint32_t a = 0; a < f; ++a) emb[a] = embedding(a, ids[a]);
      for (uint32_t a = 0; a < f; ++a) {
        for (uint32_t b = a + 1; b < f; ++b) {
          for (uint32_t k = 0; k < d; ++k) logit += emb[a][k] * emb[b][k];
        }
      }
      for (uint32_t k = 0; k < o.num_dense; ++k) {
        dense[k] = unit(rng);
        logit += dense_w[k] * dense[k];
      }
      const double prob = 1.0 / (1.0 + std::exp(-logit));
      out->labels.push_back(std::bernoulli_distribution(prob)(rng) ? 1.0f : 0.0f);
      for (uint32_t a = 0; a < f; ++a) {
        out->keys.push_back(CtrKey(a, ids[a]));
        out->values.push_back(1.0f);
      }
      out->offsets.push_back(out->keys.size());
      out->dense.insert(out->dense.end(), dense.begin(), dense.end());
      if (logits != nullptr) logits->push_back(static_cast<float>(logit));
    }
  };
  make(o.train_examples, &p.train, nullptr);
  make(o.test_examples, &p.test, &p.test_logits);
  return p;
}

double Auc(absl::Span<const float> scores, absl::Span<const float> labels) {
  const size_t n = std::min(scores.size(), labels.size());
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  // Mann-Whitney: the sum of the positives' ranks (tied scores share their mean rank).
  double rank_sum = 0;
  uint64_t positives = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && scores[order[j]] == scores[order[i]]) ++j;
    const double mean_rank = (i + 1 + j) / 2.0;  // ranks i+1 .. j
    for (size_t k = i; k < j; ++k) {
      if (labels[order[k]] > 0.5f) {
        rank_sum += mean_rank;
        ++positives;
      }
    }
    i = j;
  }
  const uint64_t negatives = n - positives;
  if (positives == 0 || negatives == 0) return 0.5;
  return (rank_sum - positives * (positives + 1) / 2.0) /
         (static_cast<double>(positives) * static_cast<double>(negatives));
}

}  // namespace tessera
