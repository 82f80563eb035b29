#include "worker/data/synthetic_ctr.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

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

}  // namespace

PlantedCtrProblem MakePlantedCtrProblem(const PlantedCtrOptions& o) {
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<float> planted(0, o.planted_stddev);
  std::normal_distribution<float> unit(0, 1);
  const uint32_t f = o.num_fields, v = o.vocabulary, d = o.planted_dim;
  std::vector<float> w(size_t{f} * v), e(size_t{f} * v * d), dense_w(o.num_dense);
  for (float& x : w) x = planted(rng);
  for (float& x : e) x = planted(rng);
  for (float& x : dense_w) x = planted(rng);
  const Zipf zipf(v, o.zipf_exponent);
  PlantedCtrProblem p;
  std::vector<uint32_t> ids(f);
  std::vector<float> dense(o.num_dense);
  auto make = [&](uint64_t n, SparseDataset* out, std::vector<float>* logits) {
    out->num_dense = o.num_dense;
    for (uint64_t i = 0; i < n; ++i) {
      double logit = o.bias;
      for (uint32_t a = 0; a < f; ++a) {
        ids[a] = zipf(rng);
        logit += w[size_t{a} * v + ids[a]];
      }
      for (uint32_t a = 0; a < f; ++a) {
        const float* ea = &e[(size_t{a} * v + ids[a]) * d];
        for (uint32_t b = a + 1; b < f; ++b) {
          const float* eb = &e[(size_t{b} * v + ids[b]) * d];
          for (uint32_t k = 0; k < d; ++k) logit += ea[k] * eb[k];
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
