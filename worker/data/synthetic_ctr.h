// Synthetic click-through data with a planted model (docs/worker.md): categorical fields with
// Zipf-distributed ids, a few dense features, and labels drawn from a planted factorization
// model, so that a CTR model's AUC can be compared with the best achievable one.
#ifndef TESSERA_WORKER_SYNTHETIC_CTR_H_
#define TESSERA_WORKER_SYNTHETIC_CTR_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "worker/data/text_data.h"

namespace tessera {

// Above this many ids per field the planted parameters are hashed from (field, id) instead of
// drawn into tables, and ids come from a Zipf sampler of constant memory: vocabularies of 10^7
// ids and more (docs/embedding_lifecycle.md, the CTR demonstration).
inline constexpr uint32_t kLargeVocabulary = 1u << 20;

struct PlantedCtrOptions {
  uint32_t num_fields = 8;   // categorical fields per example (one id each)
  uint32_t vocabulary = 50;  // ids per field, Zipf-distributed
  double zipf_exponent = 1.1;
  uint32_t num_dense = 4;       // dense features ~ normal(0, 1)
  uint32_t planted_dim = 4;     // planted embedding width
  float planted_stddev = 0.5f;  // of planted weights and embeddings
  float bias = -1.0f;           // planted bias (sets the click rate)
  uint64_t train_examples = 200000;
  uint64_t test_examples = 20000;
  uint64_t seed = 1;
};

// The planted logit of an example: bias + sum_f w[f, id_f] + sum_{f<g} <e[f, id_f], e[g, id_g]>
// + <v, dense>.
struct PlantedCtrProblem {
  SparseDataset train;  // keys: CtrKey(field, id), value 1; labels 0 or 1
  SparseDataset test;
  std::vector<float> test_logits;  // the planted model's logit of every test example
};

// The key of id `id` of field `field`.
uint64_t CtrKey(uint32_t field, uint32_t id);

// Deterministic for a given options.seed. Labels ~ Bernoulli(sigmoid(planted logit)).
PlantedCtrProblem MakePlantedCtrProblem(const PlantedCtrOptions& options);

// Area under the ROC curve of `scores` for binary `labels` (ties count one half). 0.5 when a
// class is missing.
double Auc(absl::Span<const float> scores, absl::Span<const float> labels);

}  // namespace tessera

#endif  // TESSERA_WORKER_SYNTHETIC_CTR_H_
