#include "server/optimizer.h"

#include <cmath>
#include <algorithm>
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

struct AdamStep {
  float step_size;
  float inv_bc2;
  double bc1, bc2;
};

AdamStep AdamFactors(const OptimizerParams& p, uint64_t t) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(p.beta1), t);
  const double bc2 = 1.0 - std::pow(static_cast<double>(p.beta2), t);
  const float bc1f = static_cast<float>(bc1), bc2f = static_cast<float>(bc2);
  return {p.learning_rate / bc1f, 1.0f / bc2f, bc1, bc2};
}

void Adam(const OptimizerParams& p, const AdamStep& f, float* __restrict w, float* __restrict m,
          float* __restrict v, const float* __restrict g, size_t n) {
  const float b1 = p.beta1, b2 = p.beta2;
  const float step_size = f.step_size;
  const float inv_bc2 = f.inv_bc2;
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

// The float kernels: the fast path.
void Kernel(const OptimizerParams& p, const AdamStep& f, float* w, float* slot0, float* slot1,
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
      Adam(p, f, w, slot0, slot1, g, n);
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

// The same updates in double precision, every stored value saturated: the slow path, for a
// chunk whose float results overflowed.
void KernelSaturating(const OptimizerParams& p, const AdamStep& f, float* w, float* s0,
                      float* s1, const float* g, size_t n) {
  const double lr = p.learning_rate;
  for (size_t i = 0; i < n; ++i) {
    const double gi = g[i];
    switch (p.kind) {
      case OptimizerKind::kSgd:
        w[i] = SaturateToFloat(w[i] - lr * gi);
        break;
      case OptimizerKind::kMomentum: {
        const double v = SaturateToFloat(p.momentum * double{s0[i]} + gi);
        s0[i] = static_cast<float>(v);
        w[i] = SaturateToFloat(w[i] - lr * v);
        break;
      }
      case OptimizerKind::kAdagrad: {
        const double a = SaturateToFloat(double{s0[i]} + gi * gi);
        s0[i] = static_cast<float>(a);
        w[i] = SaturateToFloat(w[i] - lr * gi / (std::sqrt(a) + p.epsilon));
        break;
      }
      case OptimizerKind::kAdam: {
        const double m = SaturateToFloat(p.beta1 * double{s0[i]} + (1.0 - p.beta1) * gi);
        const double v = SaturateToFloat(p.beta2 * double{s1[i]} + (1.0 - p.beta2) * gi * gi);
        s0[i] = static_cast<float>(m);
        s1[i] = static_cast<float>(v);
        w[i] = SaturateToFloat(w[i] - lr / f.bc1 * m / (std::sqrt(v / f.bc2) + p.epsilon));
        break;
      }
      case OptimizerKind::kFtrl: {
        const double n_old = s1[i];
        const double n_new = SaturateToFloat(n_old + gi * gi);
        const double sigma = (std::sqrt(n_new) - std::sqrt(n_old)) / lr;
        const double z = SaturateToFloat(s0[i] + gi - sigma * w[i]);
        s0[i] = static_cast<float>(z);
        s1[i] = static_cast<float>(n_new);
        w[i] = std::fabs(z) <= p.l1 ? 0.0f
                                    : SaturateToFloat(-(z - (z < 0 ? -1.0 : 1.0) * p.l1) /
                                                      ((p.ftrl_beta + std::sqrt(n_new)) / lr + p.l2));
        break;
      }
      case OptimizerKind::kAdd:
        w[i] = SaturateToFloat(double{w[i]} + gi);
        break;
      case OptimizerKind::kAssign:
        w[i] = g[i];
        break;
    }
  }
}

bool AllFinite(const float* v, size_t n) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(v);
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad |= (bits[i] & 0x7f800000u) == 0x7f800000u;
  return bad == 0;
}

}  // namespace

void AddSaturating(float* dst, const float* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] += src[i];
  if (AllFinite(dst, n)) return;
  // Finite inputs overflow only to +-inf (never NaN): those become the largest float.
  for (size_t i = 0; i < n; ++i) {
    if (std::isinf(dst[i])) dst[i] = SaturateToFloat(dst[i] > 0 ? 1e300 : -1e300);
  }
}

void ApplyUpdate(const OptimizerParams& p, float* w, float* slot0, float* slot1, uint64_t* step,
                 const float* g, size_t n) {
  const AdamStep f = p.has_step ? AdamFactors(p, ++*step) : AdamStep{};
  // In chunks: each is saved before the fast path, checked after it, and recomputed by the
  // slow path from the saved values when any result is not finite.
  constexpr size_t kChunk = 256;
  float saved[3][kChunk];
  float* parts[3] = {w, slot0, slot1};
  const int arrays = 1 + p.num_slots;
  for (size_t c = 0; c < n; c += kChunk) {
    const size_t len = std::min(kChunk, n - c);
    for (int a = 0; a < arrays; ++a) std::memcpy(saved[a], parts[a] + c, len * sizeof(float));
    float* cs0 = slot0 != nullptr ? slot0 + c : nullptr;
    float* cs1 = slot1 != nullptr ? slot1 + c : nullptr;
    Kernel(p, f, w + c, cs0, cs1, g + c, len);
    bool finite = true;
    for (int a = 0; a < arrays; ++a) finite = finite && AllFinite(parts[a] + c, len);
    if (finite) continue;
    for (int a = 0; a < arrays; ++a) std::memcpy(parts[a] + c, saved[a], len * sizeof(float));
    KernelSaturating(p, f, w + c, cs0, cs1, g + c, len);
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
    z[i] = w[i] == 0.0f ? 0.0f : SaturateToFloat(-(double{w[i]} * d + sign * p.l1));
  }
}

}  // namespace tessera
