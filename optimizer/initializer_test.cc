#include "optimizer/initializer.h"

#include <catch2/catch.hpp>
#include <cmath>

namespace tessera {
namespace {

InitializerConfig Resolved(InitializerConfig c) {
  TableConfig t{.name = "t", .dim = 4, .initializer = c};
  absl::StatusOr<TableConfig> r = ResolveTableConfig(t);
  REQUIRE(r.ok());
  return r->initializer;
}

TEST_CASE("initial values are a pure function of seed and key and column", "[initializer]") {
  const Initializer a(Resolved({.kind = InitializerKind::kNormal, .seed = 7}));
  const Initializer b(Resolved({.kind = InitializerKind::kNormal, .seed = 7}));
  const Initializer other(Resolved({.kind = InitializerKind::kNormal, .seed = 8}));
  float ra[8], rb[8], rc[8];
  // Touch keys in different orders: values do not depend on order.
  a.FillRow(123, ra, 8);
  b.FillRow(999, rb, 8);
  b.FillRow(123, rb, 8);
  other.FillRow(123, rc, 8);
  int differ = 0;
  for (int i = 0; i < 8; ++i) {
    CHECK(ra[i] == rb[i]);
    differ += ra[i] != rc[i];
  }
  CHECK(differ == 8);
  // Columns differ from each other and from the neighbouring key.
  CHECK(a.Value(123, 0) != a.Value(123, 1));
  CHECK(a.Value(123, 0) != a.Value(124, 0));
}

TEST_CASE("uniform values stay between low and high with the right mean", "[initializer]") {
  const Initializer init(
      Resolved({.kind = InitializerKind::kUniform, .low = -2.0f, .high = 3.0f, .seed = 1}));
  double sum = 0;
  const int n = 100000;
  for (int k = 0; k < n; ++k) {
    const float v = init.Value(k, 0);
    REQUIRE(v >= -2.0f);
    REQUIRE(v < 3.0f);
    sum += v;
  }
  CHECK(sum / n == Approx(0.5).margin(0.03));
}

TEST_CASE("normal values have the requested mean and stddev", "[initializer]") {
  const Initializer init(
      Resolved({.kind = InitializerKind::kNormal, .mean = 1.0f, .stddev = 0.5f, .seed = 3}));
  double sum = 0, sq = 0;
  const int n = 200000;
  for (int k = 0; k < n; ++k) {
    const double v = init.Value(k, k % 7);
    sum += v;
    sq += v * v;
  }
  const double mean = sum / n;
  CHECK(mean == Approx(1.0).margin(0.01));
  CHECK(std::sqrt(sq / n - mean * mean) == Approx(0.5).margin(0.01));
}

TEST_CASE("zeros and dense fills", "[initializer]") {
  const Initializer zeros(Resolved({.kind = InitializerKind::kZeros}));
  float row[5] = {1, 1, 1, 1, 1};
  zeros.FillRow(5, row, 5);
  for (float v : row) CHECK(v == 0.0f);
  const Initializer u(Resolved({.kind = InitializerKind::kUniform, .seed = 9}));
  float dense[6];
  u.FillDense(100, dense, 6);
  for (int i = 0; i < 6; ++i) CHECK(dense[i] == u.Value(100 + i, 0));
}

}  // namespace
}  // namespace tessera
