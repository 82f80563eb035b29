#include "worker/models/lr_kernels.h"

#include <cmath>
#include <cstring>

namespace tessera {

double LrForwardBackwardCpu(const LrBatch& batch, absl::Span<const float> weights,
                            absl::Span<float> grads) {
  std::memset(grads.data(), 0, grads.size() * sizeof(float));
  const size_t n = batch.num_samples();
  if (n == 0) return 0;
  const float inv_n = 1.0f / static_cast<float>(n);
  double loss = 0;
  for (size_t i = 0; i < n; ++i) {
    float score = 0;
    for (uint32_t j = batch.offsets[i]; j < batch.offsets[i + 1]; ++j) {
      score += weights[batch.slots[j]];
    }
    const float p = 1.0f / (1.0f + std::exp(-score));
    const float y = batch.labels[i];
    const float m = y > 0.5f ? -score : score;
    loss += m > 0 ? m + std::log1p(std::exp(-m)) : std::log1p(std::exp(m));
    const float g = (p - y) * inv_n;
    for (uint32_t j = batch.offsets[i]; j < batch.offsets[i + 1]; ++j) grads[batch.slots[j]] += g;
  }
  return loss / static_cast<double>(n);
}

}  // namespace tessera
