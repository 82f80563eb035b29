// Deterministic initial values for rows created on first touch.
#ifndef TESSERA_OPTIMIZER_INITIALIZER_H_
#define TESSERA_OPTIMIZER_INITIALIZER_H_

#include <cstdint>

#include "common/table_config.h"

namespace tessera {

// The initial value of column `col` of row `key` (or of dense element `key`, col 0) is a pure
// function of (config, key, col): identical on every server and in every process, whatever the
// order in which rows are first touched. So replicas and re-created rows agree without any
// coordination. Thread-safe (immutable).
class Initializer {
 public:
  // REQUIRES: `config` came out of ResolveTableConfig.
  explicit Initializer(const InitializerConfig& config);

  float Value(uint64_t key, uint64_t col) const;
  // Fills out[0..n) with Value(key, 0..n).
  void FillRow(uint64_t key, float* out, uint32_t n) const;
  // Fills out[0..n) with Value(first + i, 0): dense elements [first, first + n).
  void FillDense(uint64_t first, float* out, uint64_t n) const;

 private:
  InitializerKind kind_;
  float a_;  // uniform: low;  normal: mean
  float b_;  // uniform: high - low;  normal: stddev
  uint64_t seed_;
};

}  // namespace tessera

#endif  // TESSERA_OPTIMIZER_INITIALIZER_H_
