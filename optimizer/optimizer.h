// Optimizer kernels applied on the server. A row's weights and its optimizer slots are always
// updated together, under the lock of the row's vshard. Formulas: docs/design.md, "Optimizers".
#ifndef TESSERA_OPTIMIZER_OPTIMIZER_H_
#define TESSERA_OPTIMIZER_OPTIMIZER_H_

#include <cstddef>
#include <cstdint>

#include "common/table_config.h"

namespace tessera {

// Resolved hyper-parameters in the form the kernels use. A value type.
struct OptimizerParams {
  OptimizerKind kind = OptimizerKind::kSgd;
  float learning_rate = 0;
  float momentum = 0;
  float beta1 = 0;
  float beta2 = 0;
  float epsilon = 0;
  float initial_accumulator = 0;
  float l1 = 0;
  float l2 = 0;
  float ftrl_beta = 0;
  int num_slots = 0;      // slot vectors beside the weights (0, 1 or 2)
  bool has_step = false;  // keeps a step counter (Adam)

  // REQUIRES: `config` came out of ResolveTableConfig.
  static OptimizerParams FromConfig(const OptimizerConfig& config);

  // Initial value of every element of slot `slot` (the Adagrad accumulator and FTRL's n start
  // at initial_accumulator; everything else at zero).
  float InitialSlotValue(int slot) const;
};

// The nearest finite float to x (NaN is not expected: callers pass finite inputs).
inline float SaturateToFloat(double x) {
  constexpr double kMax = 3.4028234663852886e38;  // FLT_MAX
  return static_cast<float>(x > kMax ? kMax : (x < -kMax ? -kMax : x));
}
// dst[i] += src[i], saturating at the largest finite float (BSP step sums).
void AddSaturating(float* dst, const float* src, size_t n);

// Applies one update with gradient g to n coordinates. slot0 and slot1 may be null when the
// optimizer has fewer slots; step may be null unless has_step, and is incremented first (the
// first update uses t = 1). For kAssign, g holds the new values.
// Numeric safety (docs/state_machine.md, "Numbers"): with finite inputs the results are
// finite: every intermediate that could overflow is clamped to the finite float range.
void ApplyUpdate(const OptimizerParams& p, float* w, float* slot0, float* slot1, uint64_t* step,
                 const float* g, size_t n);

// Writes `values` over the weights (a push with `assign`), keeping the optimizer's state. For
// FTRL, whose weights are a function of its z and n slots, z is set so that the next update
// starts from the written weights (n is kept).
void AssignWeights(const OptimizerParams& p, float* w, float* slot0, float* slot1,
                   const float* values, size_t n);

}  // namespace tessera

#endif  // TESSERA_OPTIMIZER_OPTIMIZER_H_
