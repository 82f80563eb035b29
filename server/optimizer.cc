#include "server/optimizer.h"

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

// Each kernel is a plain loop over restrict pointers so that the compiler vectorizes it.
void Sgd(float lr, float* __restrict w, const float* __restrict g, size_t n) {
  for (size_t i = 0; i < n; ++i) w[i] -= lr * g[i];
}

void Momentum(float lr, float mu, float* __restrict w, float* __restrict v,
              const float* __restrict g, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    v[i] = mu * v[i] + g[i];
    w[i] -= lr * v[i];
  }
}

void Adagrad(float lr, float eps, float* __restrict w, float* __restrict a,
             const float* __restrict g, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    a[i] += g[i] * g[i];
    w[i] -= lr * g[i] / (std::sqrt(a[i]) + eps);
  }
}

void Adam(const OptimizerParams& p, uint64_t t, float* __restrict w, float* __restrict m,
          float* __restrict v, const float* __restrict g, size_t n) {
  const float b1 = p.beta1, b2 = p.beta2;
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(b1), t));
  const float bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(b2), t));
  const float step_size = p.learning_rate / bc1;
  const float inv_bc2 = 1.0f / bc2;
  for (size_t i = 0; i < n; ++i) {
    m[i] = b1 * m[i] + (1.0f - b1) * g[i];
    v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    w[i] -= step_size * m[i] / (std::sqrt(v[i] * inv_bc2) + p.epsilon);
  }
}

void Ftrl(const OptimizerParams& p, float* __restrict w, float* __restrict z,
          float* __restrict nacc, const float* __restrict g, size_t n) {
  const float inv_alpha = 1.0f / p.learning_rate;
  for (size_t i = 0; i < n; ++i) {
    const float n_new = nacc[i] + g[i] * g[i];
    const float sqrt_new = std::sqrt(n_new);
    const float sigma = (sqrt_new - std::sqrt(nacc[i])) * inv_alpha;
    z[i] += g[i] - sigma * w[i];
    nacc[i] = n_new;
    const float zi = z[i];
    if (std::fabs(zi) <= p.l1) {
      w[i] = 0.0f;
    } else {
      const float sign = zi < 0 ? -1.0f : 1.0f;
      w[i] = -(zi - sign * p.l1) / ((p.ftrl_beta + sqrt_new) * inv_alpha + p.l2);
    }
  }
}

}  // namespace

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
      Adam(p, ++*step, w, slot0, slot1, g, n);
      break;
    case OptimizerKind::kFtrl:
      Ftrl(p, w, slot0, slot1, g, n);
      break;
    case OptimizerKind::kAdd:
      for (size_t i = 0; i < n; ++i) w[i] += g[i];
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
    z[i] = w[i] == 0.0f ? 0.0f : -(w[i] * d + sign * p.l1);
  }
}

}  // namespace tessera
