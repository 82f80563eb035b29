#include "worker/models/lr_kernels.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>

namespace tessera {
namespace {

LrBatch RandomBatch(std::mt19937& rng, uint32_t samples, uint32_t keys, uint32_t per_sample) {
  LrBatch b;
  b.num_keys = keys;
  b.offsets.push_back(0);
  std::uniform_int_distribution<uint32_t> slot(0, keys - 1);
  for (uint32_t i = 0; i < samples; ++i) {
    for (uint32_t j = 0; j < per_sample; ++j) b.slots.push_back(slot(rng));
    b.offsets.push_back(static_cast<uint32_t>(b.slots.size()));
    b.labels.push_back(static_cast<float>(rng() % 2));
  }
  return b;
}

TEST_CASE("the CPU gradient matches finite differences of the loss", "[lr]") {
  std::mt19937 rng(3);
  LrBatch b = RandomBatch(rng, 64, 40, 5);
  std::vector<float> w(40), g(40), unused(40);
  std::normal_distribution<float> n(0, 0.5f);
  for (float& x : w) x = n(rng);
  const double loss = LrForwardBackwardCpu(b, w, absl::MakeSpan(g));
  CHECK(loss > 0);
  for (int k : {0, 7, 39}) {
    const float h = 1e-2f;
    std::vector<float> up = w, down = w;
    up[k] += h;
    down[k] -= h;
    const double lu = LrForwardBackwardCpu(b, up, absl::MakeSpan(unused));
    const double ld = LrForwardBackwardCpu(b, down, absl::MakeSpan(unused));
    CHECK(g[k] == Approx((lu - ld) / (2 * h)).margin(1e-4));
  }
}

TEST_CASE("a zero model has loss log 2 and the known gradient", "[lr]") {
  LrBatch b;
  b.num_keys = 2;
  b.offsets = {0, 2, 3};
  b.slots = {0, 1, 1};
  b.labels = {1, 0};
  std::vector<float> w = {0, 0}, g(2);
  CHECK(LrForwardBackwardCpu(b, w, absl::MakeSpan(g)) == Approx(std::log(2.0)));
  // p = 0.5 for both: sample 0 gives -0.5/2 to keys 0 and 1, sample 1 gives +0.5/2 to key 1.
  CHECK(g[0] == Approx(-0.25));
  CHECK(g[1] == Approx(0.0).margin(1e-7));
}

}  // namespace
}  // namespace tessera
