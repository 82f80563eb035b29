// Each optimizer against trajectories computed independently, in double precision, from the
// formulas in docs/design.md ("Optimizers"): w0 = {1, -0.5}, three steps of gradients.
#include "optimizer/optimizer.h"

#include <catch2/catch.hpp>
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

TEST_CASE("Adam advances its step counter once per update", "[optimizer]") {
  OptimizerParams p = Params({.kind = OptimizerKind::kAdam});
  float w = 0, m = 0, v = 0, g = 1;
  uint64_t step = 41;
  ApplyUpdate(p, &w, &m, &v, &step, &g, 1);
  CHECK(step == 42);
}

}  // namespace
}  // namespace tessera
