// GPU and CPU forward/backward must agree. Exits 77 (CTest: skipped) with the reason when no
// CUDA device is present; fails when the GPU result differs from the CPU one.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "worker/models/lr_kernels.h"

int main() {
  std::string why;
  if (tessera::CudaDeviceCount(&why) == 0) {
    std::printf("SKIPPED: lr_kernels_gpu_test needs a CUDA device: %s\n", why.c_str());
    return 77;
  }
  absl::StatusOr<std::unique_ptr<tessera::LrGpu>> gpu = tessera::LrGpu::Create();
  if (!gpu.ok()) {
    std::printf("FAILED: a device is present but LrGpu::Create failed: %s\n",
                gpu.status().ToString().c_str());
    return 1;
  }
  std::mt19937 rng(7);
  int failures = 0;
  for (uint32_t samples : {1u, 100u, 4096u, 50000u}) {
    tessera::LrBatch b;
    b.num_keys = 3000;
    b.offsets.push_back(0);
    std::uniform_int_distribution<uint32_t> slot(0, b.num_keys - 1);
    for (uint32_t i = 0; i < samples; ++i) {
      for (int j = 0; j < 11; ++j) b.slots.push_back(slot(rng));
      b.offsets.push_back(static_cast<uint32_t>(b.slots.size()));
      b.labels.push_back(static_cast<float>(rng() % 2));
    }
    std::vector<float> w(b.num_keys), g_cpu(b.num_keys), g_gpu(b.num_keys, NAN);
    std::normal_distribution<float> n(0, 0.3f);
    for (float& x : w) x = n(rng);
    const double l_cpu = tessera::LrForwardBackwardCpu(b, w, absl::MakeSpan(g_cpu));
    absl::StatusOr<double> l_gpu = (*gpu)->ForwardBackward(b, w, absl::MakeSpan(g_gpu));
    if (!l_gpu.ok()) {
      std::printf("FAILED: %s\n", l_gpu.status().ToString().c_str());
      return 1;
    }
    double max_diff = 0;
    for (uint32_t k = 0; k < b.num_keys; ++k) {
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(g_cpu[k] - g_gpu[k])));
      if (!std::isfinite(g_gpu[k])) max_diff = INFINITY;
    }
    const bool ok = std::fabs(l_cpu - *l_gpu) <= 1e-5 * std::fabs(l_cpu) + 1e-6 && max_diff < 1e-6;
    std::printf("%s: %u samples: loss cpu %.8f gpu %.8f, max |grad diff| %.3g\n",
                ok ? "ok" : "MISMATCH", samples, l_cpu, *l_gpu, max_diff);
    failures += !ok;
  }
  return failures == 0 ? 0 : 1;
}
