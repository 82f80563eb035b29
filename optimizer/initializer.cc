#include "optimizer/initializer.h"

#include <cmath>
#include <cstring>

#include "common/hash.h"

namespace tessera {

Initializer::Initializer(const InitializerConfig& config)
    : kind_(config.kind), a_(0), b_(0), seed_(config.seed) {
  if (kind_ == InitializerKind::kUniform) {
    a_ = *config.low;
    b_ = *config.high - *config.low;
  } else if (kind_ == InitializerKind::kNormal) {
    a_ = *config.mean;
    b_ = *config.stddev;
  }
}

float Initializer::Value(uint64_t key, uint64_t col) const {
  if (kind_ == InitializerKind::kZeros) return 0.0f;
  const uint64_t h = Mix64(Mix64(seed_ + key * 0x9e3779b97f4a7c15ULL) + col);
  if (kind_ == InitializerKind::kUniform) {
    const float u = static_cast<float>(h >> 40) * 0x1.0p-24f;  // [0, 1)
    const float v = a_ + b_ * u;
    // Rounding can land exactly on high; keep the interval half-open.
    return v < a_ + b_ ? v : std::nextafter(a_ + b_, a_);
  }
  // Box-Muller on two 32-bit uniforms: u1 in (0, 1], u2 in [0, 1).
  const double u1 = (static_cast<double>(h >> 32) + 1.0) * 0x1.0p-32;
  const double u2 = static_cast<double>(h & 0xffffffffULL) * 0x1.0p-32;
  const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  return static_cast<float>(a_ + b_ * z);
}

void Initializer::FillRow(uint64_t key, float* out, uint32_t n) const {
  if (kind_ == InitializerKind::kZeros) {
    std::memset(out, 0, n * sizeof(float));
    return;
  }
  for (uint32_t i = 0; i < n; ++i) out[i] = Value(key, i);
}

void Initializer::FillDense(uint64_t first, float* out, uint64_t n) const {
  if (kind_ == InitializerKind::kZeros) {
    std::memset(out, 0, n * sizeof(float));
    return;
  }
  for (uint64_t i = 0; i < n; ++i) out[i] = Value(first + i, 0);
}

}  // namespace tessera
