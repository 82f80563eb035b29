// The CTR model (docs/worker.md), DLRM-like: one embedding per categorical field, looked up by
// key in a sparse table; the MLP's input is the embeddings, the dot product of every pair of
// them (an MLP learns products poorly, so they are given), and the dense features; two outputs
// (no click, click) trained with softmax cross-entropy, which is logistic regression on the
// difference of the two logits. CPU math; the GPU backend must match it.
#ifndef TESSERA_WORKER_EMB_MLP_H_
#define TESSERA_WORKER_EMB_MLP_H_

#include <cstdint>
#include <vector>

#include "worker/models/mlp.h"

namespace tessera {

struct EmbMlpShape {
  uint32_t fields = 8;  // keys per example, one per field
  uint32_t dim = 8;     // embedding width
  uint32_t dense = 4;   // dense features per example
  std::vector<uint32_t> hidden = {64, 32};

  bool interactions = true;  // the pairwise dot products as inputs

  size_t pairs() const { return interactions ? size_t{fields} * (fields - 1) / 2 : 0; }
  size_t input() const { return size_t{fields} * dim + pairs() + dense; }
  MlpShape Mlp() const;  // input(), the hidden layers, 2 outputs
};

// The distinct keys of a batch (what is pulled) and, per (example, field), the row it uses.
struct BatchKeys {
  std::vector<uint64_t> unique;
  std::vector<uint32_t> row;  // batch x fields
};
BatchKeys UniqueKeys(const uint64_t* keys, size_t n);

struct EmbMlpWorkspace {
  std::vector<float> x, dx;  // the MLP's input and its gradient (batch x input)
  MlpWorkspace mlp;
};

// Forward and backward: `rows` holds the embedding of every key in keys.unique (dim floats
// each), `dense` batch x shape.dense, labels 0 or 1. Writes the MLP's gradients into `grads`
// and each unique key's summed embedding gradient into `emb_grads` (unique x dim).
MlpBatchStats EmbMlpForwardBackward(const EmbMlpShape& shape, const MlpParams& params,
                                    const BatchKeys& keys, const float* rows, const float* dense,
                                    const uint8_t* labels, uint32_t batch, MlpParams* grads,
                                    std::vector<float>* emb_grads, EmbMlpWorkspace* ws);

// Click scores (logit difference) of a batch, for AUC.
void EmbMlpScores(const EmbMlpShape& shape, const MlpParams& params, const BatchKeys& keys,
                  const float* rows, const float* dense, uint32_t batch, std::vector<float>* out,
                  EmbMlpWorkspace* ws);

}  // namespace tessera

#endif  // TESSERA_WORKER_EMB_MLP_H_
