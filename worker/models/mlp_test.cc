#include "worker/models/mlp.h"

#include <catch2/catch.hpp>
#include <random>

namespace tessera {
namespace {

// Mean loss of the batch at `params`.
double Loss(const MlpShape& shape, const MlpParams& params, const std::vector<float>& x,
            const std::vector<uint8_t>& y) {
  MlpWorkspace ws;
  return MlpEvaluate(shape, params, x.data(), y.data(), static_cast<uint32_t>(y.size()), &ws).loss;
}

TEST_CASE("MLP gradients match finite differences", "[mlp]") {
  const MlpShape shape{{5, 7, 4, 3}};
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0, 0.5f);
  MlpParams p = MlpParams::Zeros(shape);
  for (auto& w : p.w) {
    for (float& v : w) v = n(rng);
  }
  for (auto& b : p.b) {
    for (float& v : b) v = n(rng);
  }
  const uint32_t batch = 6;
  std::vector<float> x(batch * 5);
  for (float& v : x) v = n(rng);
  std::vector<uint8_t> y = {0, 1, 2, 2, 1, 0};
  MlpParams g;
  MlpWorkspace ws;
  MlpForwardBackward(shape, p, x.data(), y.data(), batch, &g, &ws);
  const float eps = 1e-3f;
  const double at = Loss(shape, p, x, y);
  int checked = 0;
  auto check = [&](std::vector<float>& values, const std::vector<float>& grads) {
    for (size_t i = 0; i < values.size(); ++i) {
      const float keep = values[i];
      values[i] = keep + eps;
      const double up = Loss(shape, p, x, y);
      values[i] = keep - eps;
      const double down = Loss(shape, p, x, y);
      values[i] = keep;
      // A step that crosses a ReLU's kink has different slopes on its two sides: skip it.
      if (std::abs((up - at) - (at - down)) > 1e-4) continue;
      ++checked;
      const double numeric = (up - down) / (2 * eps);
      INFO("index " << i << " analytic " << grads[i] << " numeric " << numeric);
      CHECK(std::abs(grads[i] - numeric) <= 2e-3 + 2e-2 * std::abs(numeric));
    }
  };
  for (size_t l = 0; l < shape.num_layers(); ++l) {
    check(p.w[l], g.w[l]);
    check(p.b[l], g.b[l]);
  }
  CHECK(checked >= static_cast<int>(shape.num_params() * 9 / 10));
}

TEST_CASE("MLP learns a separable problem with plain SGD", "[mlp]") {
  const MlpShape shape{{2, 16, 2}};
  std::mt19937 rng(1);
  std::normal_distribution<float> n(0, 1);
  MlpParams p = MlpParams::Zeros(shape);
  for (size_t l = 0; l < shape.num_layers(); ++l) {
    const float scale = std::sqrt(2.0f / shape.sizes[l]);
    for (float& v : p.w[l]) v = n(rng) * scale;
  }
  const uint32_t batch = 256;
  std::vector<float> x(batch * 2);
  std::vector<uint8_t> y(batch);
  for (uint32_t i = 0; i < batch; ++i) {
    x[2 * i] = n(rng);
    x[2 * i + 1] = n(rng);
    y[i] = x[2 * i] * x[2 * i + 1] > 0;  // XOR of the signs: not linearly separable
  }
  MlpParams g;
  MlpWorkspace ws;
  const double first = MlpEvaluate(shape, p, x.data(), y.data(), batch, &ws).loss;
  for (int step = 0; step < 500; ++step) {
    MlpForwardBackward(shape, p, x.data(), y.data(), batch, &g, &ws);
    for (size_t l = 0; l < shape.num_layers(); ++l) {
      for (size_t i = 0; i < p.w[l].size(); ++i) p.w[l][i] -= 0.5f * g.w[l][i];
      for (size_t i = 0; i < p.b[l].size(); ++i) p.b[l][i] -= 0.5f * g.b[l][i];
    }
  }
  const MlpBatchStats last = MlpEvaluate(shape, p, x.data(), y.data(), batch, &ws);
  CHECK(last.loss < 0.5 * first);
  CHECK(last.correct >= batch * 9 / 10);
}

}  // namespace
}  // namespace tessera
