// A multilayer perceptron classifier: dense layers with ReLU between them and softmax
// cross-entropy on top. The CPU math, with GEMMs through OpenBLAS; the GPU backend must match
// it within float tolerance (docs/worker.md). Parameters are one weight matrix (in x out,
// row-major) and one bias vector per layer: one dense table each on the servers.
#ifndef TESSERA_WORKER_MLP_H_
#define TESSERA_WORKER_MLP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"

namespace tessera {

struct MlpShape {
  std::vector<uint32_t> sizes;  // input, hidden..., classes; at least two entries

  size_t num_layers() const { return sizes.size() - 1; }
  size_t weights(size_t l) const { return size_t{sizes[l]} * sizes[l + 1]; }
  size_t biases(size_t l) const { return sizes[l + 1]; }
  size_t num_params() const;
};

// The model's parameters (or their gradients), layer by layer.
struct MlpParams {
  std::vector<std::vector<float>> w;  // [layer]: sizes[l] x sizes[l+1]
  std::vector<std::vector<float>> b;  // [layer]: sizes[l+1]

  static MlpParams Zeros(const MlpShape& shape);
};

// Activations kept between forward and backward; reused across batches.
struct MlpWorkspace {
  std::vector<std::vector<float>> z;  // pre-activations per layer (batch x out)
  std::vector<std::vector<float>> h;  // layer inputs (h[0] unused: the batch itself)
  std::vector<float> dz, dh;
};

struct MlpBatchStats {
  double loss = 0;       // mean cross-entropy over the batch
  uint32_t correct = 0;  // argmax == label
};

// Forward and backward on `batch` examples (x: batch x sizes[0], labels < classes). Writes the
// gradients of the mean loss into `grads` (same layout as params, overwritten) and, when `dx`
// is not null, with respect to the inputs (batch x sizes[0]).
MlpBatchStats MlpForwardBackward(const MlpShape& shape, const MlpParams& params, const float* x,
                                 const uint8_t* labels, uint32_t batch, MlpParams* grads,
                                 MlpWorkspace* ws, float* dx = nullptr);

// The logits of the last forward pass (batch x classes).
inline const std::vector<float>& MlpLogits(const MlpWorkspace& ws) { return ws.z.back(); }

// Forward only: loss and accuracy counts.
MlpBatchStats MlpEvaluate(const MlpShape& shape, const MlpParams& params, const float* x,
                          const uint8_t* labels, uint32_t batch, MlpWorkspace* ws);

// Keeps OpenBLAS to one thread per call (worker threads parallelize); call once per process.
void SetBlasThreads(int threads);

}  // namespace tessera

#endif  // TESSERA_WORKER_MLP_H_
