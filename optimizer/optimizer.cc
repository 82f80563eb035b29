#include "optimizer/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tessera {

OptimizerParams OptimizerParams::FromConfig(const OptimizerConfig& c) {
  OptimizerParams p;
  p.kind = c.kind;
  p.learning_rate = c.learning_rate.value_or(1.0f);
  p.momentum = c.momentum.value_or(0.0f);
  p.beta1 = c.beta1.value_or(0.0f);
  p.beta2 = c.beta2.value_or(0.0f);
  p.epsilon = c.epsilon.value_or(0.0f);
  p.initial_accumulator = c.initial_accumulator.value_or(0.0f);
  p.l1 = c.l1.value_or(0.0f);
  p.l2 = c.l2.value_or(0.0f);
  p.ftrl_beta = c.ftrl_beta.value_or(0.0f);
  p.num_slots = NumOptimizerSlots(c.kind);
  p.has_step = OptimizerHasStep(c.kind);
  return p;
}

float OptimizerParams::InitialSlotValue(int slot) const {
  if (kind == OptimizerKind::kAdagrad && slot == 0) return initial_accumulator;
  if (kind == OptimizerKind::kFtrl && slot == 1) return initial_accumulator;
  return 0.0f;
}

namespace {

// Saturation (docs/state_machine.md, "Numbers"). With finite operands, +, -, * and / give NaN
// only from inf - inf, 0 * inf or inf / inf; so a value that may have overflowed to +-inf is
// clamped to the finite float range (Sat) before it meets another such value or a zero, and
// every stored value is clamped. Elsewhere an infinity only propagates, into a clamp. For
// values in range a clamp returns its argument bit for bit: the kernels compute exactly what
// they did without it. (Optimizer parameters are validated: 0 <= beta < 1, lr > 0.)
constexpr float kMax = 3.40282347e38f;  // FLT_MAX
inline float Sat(float x) {
  const float y = x < kMax ? x : kMax;
  return y > -kMax ? y : -kMax;
}

// Each kernel is a plain loop over restrict pointers so that the compiler vectorizes it, once
// per instruction set (target_clones: the loader picks the widest the CPU has). The clones give
// the same bits: every operation is an IEEE one applied element by element (no reductions), and
// optimizer.cc is compiled with -ffp-contract=off, so no clone fuses a multiply and an add.
#define TESSERA_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))

TESSERA_KERNEL void Sgd(float lr, float* __restrict w, const float* __restrict g, size_t n) {
  for (size_t i = 0; i < n; ++i) w[i] = Sat(w[i] - lr * g[i]);
}

TESSERA_KERNEL void Momentum(float lr, float mu, float* __restrict w, float* __restrict v,
                             const float* __restrict g, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    v[i] = Sat(mu * v[i] + g[i]);
    w[i] = Sat(w[i] - lr * v[i]);
  }
}

TESSERA_KERNEL void Adagrad(float lr, float eps, float* __restrict w, float* __restrict a,
                            const float* __restrict g, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    a[i] = Sat(a[i] + g[i] * g[i]);  // (sqrt(a) is finite below: lr g / finite is at most inf)
    w[i] = Sat(w[i] - lr * g[i] / (std::sqrt(a[i]) + eps));
  }
}

struct AdamStep {
  float step_size;
  float inv_bc2;
};

AdamStep AdamFactors(const OptimizerParams& p, uint64_t t) {
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(p.beta1), t));
  const float bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(p.beta2), t));
  return {p.learning_rate / bc1, 1.0f / bc2};
}

TESSERA_KERNEL void Adam(const OptimizerParams& p, const AdamStep& f, float* __restrict w,
                         float* __restrict m, float* __restrict v, const float* __restrict g,
                         size_t n) {
  const float b1 = p.beta1, b2 = p.beta2;
  const float step_size = f.step_size;
  const float inv_bc2 = f.inv_bc2;
  for (size_t i = 0; i < n; ++i) {
    m[i] = Sat(b1 * m[i] + (1.0f - b1) * g[i]);
    v[i] = Sat(b2 * v[i] + (1.0f - b2) * g[i] * g[i]);
    // (the denominator is kept finite: a possibly infinite numerator over it stays +-inf)
    w[i] = Sat(w[i] - step_size * m[i] / (std::sqrt(Sat(v[i] * inv_bc2)) + p.epsilon));
  }
}

TESSERA_KERNEL void Ftrl(const OptimizerParams& p, float* __restrict w, float* __restrict z,
                         float* __restrict nacc, const float* __restrict g, size_t n) {
  const float inv_alpha = 1.0f / p.learning_rate;
  for (size_t i = 0; i < n; ++i) {
    const float n_new = Sat(nacc[i] + g[i] * g[i]);
    const float sqrt_new = std::sqrt(n_new);
    const float sigma = Sat((sqrt_new - std::sqrt(nacc[i])) * inv_alpha);  // (meets w, maybe 0)
    z[i] = Sat(z[i] + (g[i] - sigma * w[i]));
    nacc[i] = n_new;
    const float zi = z[i];
    if (std::fabs(zi) <= p.l1) {
      w[i] = 0.0f;
    } else {
      const float sign = zi < 0 ? -1.0f : 1.0f;
      w[i] = Sat(-(zi - sign * p.l1) / ((p.ftrl_beta + sqrt_new) * inv_alpha + p.l2));
    }
  }
}

TESSERA_KERNEL void Add(float* __restrict dst, const float* __restrict src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = Sat(dst[i] + src[i]);
}

}  // namespace

void AddSaturating(float* dst, const float* src, size_t n) {
  if (dst == src) {  // (restrict: the kernel may not alias)
    for (size_t i = 0; i < n; ++i) dst[i] = Sat(dst[i] + dst[i]);
    return;
  }
  Add(dst, src, n);
}

void ApplyUpdate(const OptimizerParams& p, float* w, float* slot0, float* slot1, uint64_t* step,
                 const float* g, size_t n) {
  switch (p.kind) {
    case OptimizerKind::kSgd:
      Sgd(p.learning_rate, w, g, n);
      break;
    case OptimizerKind::kMomentum:
      Momentum(p.learning_rate, p.momentum, w, slot0, g, n);
      break;
    case OptimizerKind::kAdagrad:
      Adagrad(p.learning_rate, p.epsilon, w, slot0, g, n);
      break;
    case OptimizerKind::kAdam:
      Adam(p, AdamFactors(p, ++*step), w, slot0, slot1, g, n);
      break;
    case OptimizerKind::kFtrl:
      Ftrl(p, w, slot0, slot1, g, n);
      break;
    case OptimizerKind::kAdd:
      AddSaturating(w, g, n);
      break;
    case OptimizerKind::kAssign:
      std::memcpy(w, g, n * sizeof(float));
      break;
  }
}

void AssignWeights(const OptimizerParams& p, float* w, float* slot0, float* slot1,
                   const float* values, size_t n) {
  std::memcpy(w, values, n * sizeof(float));
  if (p.kind != OptimizerKind::kFtrl) return;
  // Ftrl() gives w = -(z - sign(z) l1) / d with d = (beta + sqrt(n)) / alpha + l2 when
  // |z| > l1, else 0; so z = -(w d + sign(w) l1) gives back w.
  float* z = slot0;
  const float* nacc = slot1;
  for (size_t i = 0; i < n; ++i) {
    const float d = (p.ftrl_beta + std::sqrt(nacc[i])) / p.learning_rate + p.l2;
    const float sign = w[i] < 0 ? -1.0f : 1.0f;
    z[i] = w[i] == 0.0f ? 0.0f : Sat(-(Sat(w[i] * Sat(d)) + sign * p.l1));
  }
}

}  // namespace tessera
