// Each optimizer against trajectories computed independently, in double precision, from the
// formulas in docs/design.md ("Optimizers"): w0 = {1, -0.5}, three steps of gradients.
#include "optimizer/optimizer.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <vector>

namespace tessera {
namespace {

const float kGrads[3][2] = {{0.5f, -1.0f}, {-0.25f, 2.0f}, {1.5f, 0.125f}};

OptimizerParams Params(OptimizerConfig c) {
  TableConfig t;
  t.name = "t";
  t.dim = 2;
  t.optimizer = c;
  absl::StatusOr<TableConfig> r = ResolveTableConfig(t);
  REQUIRE(r.ok());
  return OptimizerParams::FromConfig(r->optimizer);
}

// Runs three steps and checks w after each against expected[step].
void CheckTrajectory(const OptimizerParams& p, const double expected[3][2]) {
  float w[2] = {1.0f, -0.5f};
  float s0[2] = {p.InitialSlotValue(0), p.InitialSlotValue(0)};
  float s1[2] = {p.InitialSlotValue(1), p.InitialSlotValue(1)};
  uint64_t step = 0;
  for (int t = 0; t < 3; ++t) {
    ApplyUpdate(p, w, s0, s1, &step, kGrads[t], 2);
    for (int i = 0; i < 2; ++i) {
      INFO("step " << t + 1 << " coordinate " << i);
      CHECK(w[i] == Approx(expected[t][i]).margin(1e-6).epsilon(1e-5));
    }
  }
}

TEST_CASE("SGD matches the reference", "[optimizer]") {
  OptimizerConfig c{.kind = OptimizerKind::kSgd, .learning_rate = 0.1f};
  // By hand: 1 - 0.1 * 0.5 = 0.95; -0.5 - 0.1 * -1 = -0.4; ...
  const double expected[3][2] = {{0.95, -0.4}, {0.975, -0.6}, {0.825, -0.6125}};
  CheckTrajectory(Params(c), expected);
}

TEST_CASE("Momentum matches the reference", "[optimizer]") {
  OptimizerConfig c{.kind = OptimizerKind::kMomentum, .learning_rate = 0.1f, .momentum = 0.9f};
  // Step 2, coordinate 0: v = 0.9 * 0.5 - 0.25 = 0.2; w = 0.95 - 0.02 = 0.93.
  const double expected[3][2] = {{0.95, -0.4}, {0.93, -0.51}, {0.762, -0.6215}};
  CheckTrajectory(Params(c), expected);
}

TEST_CASE("Adagrad matches the reference", "[optimizer]") {
  OptimizerConfig c{
      .kind = OptimizerKind::kAdagrad, .learning_rate = 0.1f, .initial_accumulator = 0.1f};
  // Step 1, coordinate 0: a = 0.1 + 0.25 = 0.35; w = 1 - 0.1 * 0.5 / sqrt(0.35) = 0.9154846.
  const double expected[3][2] = {
      {0.915484575, -0.404653741}, {0.954409522, -0.49321523}, {0.86248181, -0.498741863}};
  CheckTrajectory(Params(c), expected);
}

TEST_CASE("Adam matches the reference with bias correction", "[optimizer]") {
  OptimizerConfig c{.kind = OptimizerKind::kAdam, .learning_rate = 0.01f};
  // Step 1: m_hat = g, v_hat = g^2, so w moves by lr * sign(g): 0.99 and -0.49.
  const double expected[3][2] = {
      {0.99, -0.49}, {0.98733663, -0.493661035}, {0.980631624, -0.496843374}};
  CheckTrajectory(Params(c), expected);
}

TEST_CASE("FTRL-proximal matches the reference", "[optimizer]") {
  OptimizerConfig c{.kind = OptimizerKind::kFtrl,
                    .learning_rate = 0.5f,
                    .initial_accumulator = 0.1f,
                    .l1 = 0.1f,
                    .l2 = 0.2f,
                    .ftrl_beta = 1.0f};
  // Step 1, coordinate 0: n = 0.35, sigma = (sqrt(.35) - sqrt(.1)) / .5 = 0.5508,
  // z = 0.5 - 0.5508 * 1 = -0.0508, |z| <= l1 so w = 0.
  const double expected[3][2] = {
      {0.0, 0.038956215}, {0.05761489, -0.229035087}, {-0.180330705, -0.247626457}};
  CheckTrajectory(Params(c), expected);
}

TEST_CASE("add and assign", "[optimizer]") {
  const double add[3][2] = {{1.5, -1.5}, {1.25, 0.5}, {2.75, 0.625}};
  CheckTrajectory(Params({.kind = OptimizerKind::kAdd}), add);
  const double assign[3][2] = {{0.5, -1.0}, {-0.25, 2.0}, {1.5, 0.125}};
  CheckTrajectory(Params({.kind = OptimizerKind::kAssign}), assign);
}

TEST_CASE("written weights are where the next update starts, FTRL included", "[optimizer]") {
  const float values[4] = {0.75f, -1.25f, 0.0f, 0.01f};
  const float zero[4] = {0, 0, 0, 0};
  for (const OptimizerConfig& c :
       {OptimizerConfig{.kind = OptimizerKind::kFtrl, .l1 = 0.1f, .l2 = 0.2f, .ftrl_beta = 1.0f},
        OptimizerConfig{.kind = OptimizerKind::kFtrl},
        OptimizerConfig{.kind = OptimizerKind::kAdagrad},
        OptimizerConfig{.kind = OptimizerKind::kSgd}}) {
    const OptimizerParams p = Params(c);
    INFO("optimizer " << OptimizerKindName(p.kind));
    // Some optimizer state first, then the written weights, then an update with g = 0 (FTRL
    // with l1 = 0.1 zeroes |w| under its threshold only through z, which the write sets).
    float w[4] = {0, 0, 0, 0};
    float s0[4], s1[4];
    for (int i = 0; i < 4; ++i) s0[i] = p.InitialSlotValue(0), s1[i] = p.InitialSlotValue(1);
    uint64_t step = 0;
    ApplyUpdate(p, w, s0, s1, &step, kGrads[1], 2);
    const float kept_s1 = s1[1];
    AssignWeights(p, w, s0, s1, values, 4);
    for (int i = 0; i < 4; ++i) CHECK(w[i] == values[i]);
    CHECK(s1[1] == kept_s1);  // (FTRL's n, Adagrad's unused slot: kept)
    ApplyUpdate(p, w, s0, s1, &step, zero, 4);
    for (int i = 0; i < 4; ++i) CHECK(w[i] == Approx(values[i]).epsilon(1e-5).margin(1e-7));
  }
}

// The kernels are vectorized, once per instruction set (optimizer.cc), and replicas on
// different CPUs must hold the same bits. So a long vector (vector body and scalar tail) is
// checked bit for bit against the formulas evaluated here in plain scalar float (this file is
// compiled for the baseline instruction set: no fused multiply-add can creep in), and, for every
// optimizer, against the same update applied one element at a time.
TEST_CASE("vectorized updates equal the scalar formulas bit for bit", "[optimizer]") {
  constexpr size_t n = 1031;
  std::vector<float> g(n), w0(n), a0(n), b0(n);
  uint32_t x = 12345;
  auto next = [&x] {  // (a fixed LCG: values across many magnitudes and both signs)
    x = x * 1664525u + 1013904223u;
    return (static_cast<float>(x >> 8) / 16777216.0f - 0.5f) * 8.0f;
  };
  for (size_t i = 0; i < n; ++i) {
    g[i] = next() * (i % 5 == 0 ? 1e-3f : 1.0f);
    w0[i] = next();
    a0[i] = std::abs(next());
    b0[i] = std::abs(next());
  }
  // The documented formulas (docs/design.md, "Optimizers"), in the kernels' order of operations;
  // every value stays in range, so the kernels' saturation changes nothing.
  auto scalar = [](const OptimizerParams& p, uint64_t t, float& w, float& s0, float& s1, float gi) {
    switch (p.kind) {
      case OptimizerKind::kSgd:
        w = w - p.learning_rate * gi;
        break;
      case OptimizerKind::kMomentum:
        s0 = p.momentum * s0 + gi;
        w = w - p.learning_rate * s0;
        break;
      case OptimizerKind::kAdagrad:
        s0 = s0 + gi * gi;
        w = w - p.learning_rate * gi / (std::sqrt(s0) + p.epsilon);
        break;
      case OptimizerKind::kAdam: {
        const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(p.beta1), t));
        const float bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(p.beta2), t));
        const float step_size = p.learning_rate / bc1, inv_bc2 = 1.0f / bc2;
        s0 = p.beta1 * s0 + (1.0f - p.beta1) * gi;
        s1 = p.beta2 * s1 + (1.0f - p.beta2) * gi * gi;
        w = w - step_size * s0 / (std::sqrt(s1 * inv_bc2) + p.epsilon);
        break;
      }
      default:
        w = w + gi;  // (kAdd)
    }
  };
  for (OptimizerKind kind : {OptimizerKind::kSgd, OptimizerKind::kMomentum, OptimizerKind::kAdagrad,
                             OptimizerKind::kAdam, OptimizerKind::kAdd, OptimizerKind::kFtrl}) {
    const OptimizerParams p =
        kind == OptimizerKind::kFtrl
            ? Params({.kind = kind, .l1 = 0.05f, .l2 = 0.1f, .ftrl_beta = 1.0f})
            : Params({.kind = kind});
    INFO("optimizer " << OptimizerKindName(kind));
    std::vector<float> w = w0, s0 = a0, s1 = b0;   // the vectorized kernel
    std::vector<float> we = w0, e0 = a0, e1 = b0;  // one element at a time
    std::vector<float> wr = w0, r0 = a0, r1 = b0;  // the formulas above
    uint64_t step = 3, step_e = 3;
    for (int round = 0; round < 3; ++round) {
      ApplyUpdate(p, w.data(), s0.data(), s1.data(), &step, g.data(), n);
      ++step_e;
      for (size_t i = 0; i < n; ++i) {
        uint64_t st = step_e - 1;  // (Adam: every element at the same step)
        ApplyUpdate(p, &we[i], &e0[i], &e1[i], &st, &g[i], 1);
        scalar(p, step_e, wr[i], r0[i], r1[i], g[i]);
      }
    }
    CHECK(std::memcmp(w.data(), we.data(), n * sizeof(float)) == 0);
    CHECK(std::memcmp(s0.data(), e0.data(), n * sizeof(float)) == 0);
    CHECK(std::memcmp(s1.data(), e1.data(), n * sizeof(float)) == 0);
    if (kind != OptimizerKind::kFtrl) {  // (FTRL: element by element only)
      CHECK(std::memcmp(w.data(), wr.data(), n * sizeof(float)) == 0);
      CHECK(std::memcmp(s0.data(), r0.data(), n * sizeof(float)) == 0);
      CHECK(std::memcmp(s1.data(), r1.data(), n * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("Adam advances its step counter once per update", "[optimizer]") {
  OptimizerParams p = Params({.kind = OptimizerKind::kAdam});
  float w = 0, m = 0, v = 0, g = 1;
  uint64_t step = 41;
  ApplyUpdate(p, &w, &m, &v, &step, &g, 1);
  CHECK(step == 42);
}

}  // namespace
}  // namespace tessera
