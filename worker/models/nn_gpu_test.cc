// The GPU backend of the MLP and CTR models must compute what the CPU backend computes:
// gradients, input gradients, losses, accuracy counts and the batch's distinct keys. Exits 77
// (CTest: skipped) with the reason when no CUDA device is present; fails (naming the tensor and
// the worst element) when the two differ beyond float tolerance. Then prints samples/s of both
// backends on the same batches (a comparison in one run, not a pass/fail figure).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "worker/models/backend.h"
#include "worker/models/lr_kernels.h"

namespace tessera {
namespace {

int failures = 0;

// Largest |a - b| / max(|b|, floor); reports and counts a failure above `tolerance`.
void Compare(const char* what, const std::vector<float>& gpu, const std::vector<float>& cpu,
             double tolerance = 1e-4, float floor = 1e-3f) {
  double worst = gpu.size() == cpu.size() ? 0 : INFINITY;
  size_t at = 0;
  for (size_t i = 0; i < std::min(gpu.size(), cpu.size()); ++i) {
    const double rel = std::fabs(gpu[i] - cpu[i]) / std::max(std::fabs(cpu[i]), floor);
    if (!(rel <= worst)) {  // (NaN too)
      worst = std::isfinite(rel) ? rel : INFINITY;
      at = i;
    }
  }
  const bool ok = worst <= tolerance;
  std::printf("%s: %s: largest relative difference %.3g (element %zu of %zu)\n",
              ok ? "ok" : "MISMATCH", what, worst, at, cpu.size());
  failures += !ok;
}

MlpParams Random(const MlpShape& shape, std::mt19937& rng) {
  MlpParams p = MlpParams::Zeros(shape);
  for (size_t l = 0; l < shape.num_layers(); ++l) {
    std::normal_distribution<float> n(0, std::sqrt(2.0f / shape.sizes[l]));
    for (float& v : p.w[l]) v = n(rng);
    for (float& v : p.b[l]) v = n(rng) * 0.1f;
  }
  return p;
}

void CompareStats(const char* what, const MlpBatchStats& gpu, const MlpBatchStats& cpu) {
  const bool ok = std::fabs(gpu.loss - cpu.loss) <= 1e-5 * std::fabs(cpu.loss) + 1e-6 &&
                  gpu.correct == cpu.correct;
  std::printf("%s: %s: loss cpu %.7f gpu %.7f, correct cpu %u gpu %u\n", ok ? "ok" : "MISMATCH",
              what, cpu.loss, gpu.loss, cpu.correct, gpu.correct);
  failures += !ok;
}

template <typename F>
double SamplesPerSecond(uint32_t batch, F&& step) {
  step();  // warm-up (allocations, cuBLAS plans)
  const auto start = std::chrono::steady_clock::now();
  int steps = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(1) && steps < 100000) {
    step();
    ++steps;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return steps * static_cast<double>(batch) / s;
}

int Run() {
  std::string why;
  if (CudaDeviceCount(&why) == 0) {
    std::printf("SKIPPED: nn_gpu_test needs a CUDA device: %s\n", why.c_str());
    return 77;
  }
  absl::StatusOr<std::unique_ptr<NnBackend>> gpu = MakeGpuBackend();
  if (!gpu.ok()) {
    std::printf("FAILED: a device is present but the GPU backend failed: %s\n",
                gpu.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<NnBackend> cpu = MakeCpuBackend();
  SetBlasThreads(1);
  std::mt19937 rng(11);

  // The MLP, with the input gradient.
  for (uint32_t batch : {1u, 37u, 256u}) {
    const MlpShape shape{{50, 32, 16, 10}};
    const MlpParams params = Random(shape, rng);
    std::vector<float> x(size_t{batch} * 50);
    std::normal_distribution<float> n(0, 1);
    for (float& v : x) v = n(rng);
    std::vector<uint8_t> labels(batch);
    for (uint8_t& y : labels) y = static_cast<uint8_t>(rng() % 10);
    MlpParams g_cpu, g_gpu;
    std::vector<float> dx_cpu(x.size()), dx_gpu(x.size(), NAN);
    absl::StatusOr<MlpBatchStats> s_cpu = cpu->MlpForwardBackward(
        shape, params, x.data(), labels.data(), batch, &g_cpu, dx_cpu.data());
    absl::StatusOr<MlpBatchStats> s_gpu = (*gpu)->MlpForwardBackward(
        shape, params, x.data(), labels.data(), batch, &g_gpu, dx_gpu.data());
    if (!s_gpu.ok()) {
      std::printf("FAILED: %s\n", s_gpu.status().ToString().c_str());
      return 1;
    }
    std::printf("MLP 50-32-16-10, batch %u\n", batch);
    CompareStats("  loss", *s_gpu, *s_cpu);
    for (size_t l = 0; l < shape.num_layers(); ++l) {
      Compare(("  dW" + std::to_string(l)).c_str(), g_gpu.w[l], g_cpu.w[l]);
      Compare(("  db" + std::to_string(l)).c_str(), g_gpu.b[l], g_cpu.b[l]);
    }
    Compare("  dx", dx_gpu, dx_cpu);
  }

  // The CTR model: distinct keys, then forward/backward; embedding gradients compared per key
  // (the backends order distinct keys differently).
  const EmbMlpShape shape{.fields = 6, .dim = 4, .dense = 3, .hidden = {16, 8}};
  for (uint32_t batch : {1u, 100u, 512u}) {
    std::vector<uint64_t> keys(size_t{batch} * shape.fields);
    for (size_t i = 0; i < keys.size(); ++i) keys[i] = (i % shape.fields) * 1000 + rng() % 40;
    absl::StatusOr<BatchKeys> k_cpu = cpu->UniqueKeys(keys.data(), keys.size());
    absl::StatusOr<BatchKeys> k_gpu = (*gpu)->UniqueKeys(keys.data(), keys.size());
    if (!k_gpu.ok()) {
      std::printf("FAILED: %s\n", k_gpu.status().ToString().c_str());
      return 1;
    }
    bool keys_ok = k_gpu->unique.size() == k_cpu->unique.size() &&
                   std::is_sorted(k_gpu->unique.begin(), k_gpu->unique.end());
    for (size_t i = 0; keys_ok && i < keys.size(); ++i) {
      keys_ok = k_gpu->row[i] < k_gpu->unique.size() && k_gpu->unique[k_gpu->row[i]] == keys[i];
    }
    std::printf("%s: CTR batch %u: %zu distinct keys of %zu (GPU: sorted, every row right)\n",
                keys_ok ? "ok" : "MISMATCH", batch, k_cpu->unique.size(), keys.size());
    failures += !keys_ok;
    if (!keys_ok) continue;
    // Embeddings by key, laid out in each backend's order.
    absl::flat_hash_map<uint64_t, std::vector<float>> table;
    std::normal_distribution<float> n(0, 0.3f);
    for (uint64_t key : k_cpu->unique) {
      std::vector<float>& e = table[key];
      for (uint32_t d = 0; d < shape.dim; ++d) e.push_back(n(rng));
    }
    auto rows_of = [&](const BatchKeys& k) {
      std::vector<float> rows;
      for (uint64_t key : k.unique) rows.insert(rows.end(), table[key].begin(), table[key].end());
      return rows;
    };
    const std::vector<float> rows_cpu = rows_of(*k_cpu), rows_gpu = rows_of(*k_gpu);
    std::vector<float> dense(size_t{batch} * shape.dense);
    for (float& v : dense) v = n(rng);
    std::vector<uint8_t> labels(batch);
    for (uint8_t& y : labels) y = static_cast<uint8_t>(rng() % 2);
    const MlpParams params = Random(shape.Mlp(), rng);
    MlpParams g_cpu, g_gpu;
    std::vector<float> e_cpu, e_gpu;
    absl::StatusOr<MlpBatchStats> s_cpu = cpu->EmbMlpForwardBackward(
        shape, params, *k_cpu, rows_cpu.data(), dense.data(), labels.data(), batch, &g_cpu, &e_cpu);
    absl::StatusOr<MlpBatchStats> s_gpu = (*gpu)->EmbMlpForwardBackward(
        shape, params, *k_gpu, rows_gpu.data(), dense.data(), labels.data(), batch, &g_gpu, &e_gpu);
    if (!s_gpu.ok()) {
      std::printf("FAILED: %s\n", s_gpu.status().ToString().c_str());
      return 1;
    }
    CompareStats("  loss", *s_gpu, *s_cpu);
    for (size_t l = 0; l < g_cpu.w.size(); ++l) {
      Compare(("  dW" + std::to_string(l)).c_str(), g_gpu.w[l], g_cpu.w[l]);
      Compare(("  db" + std::to_string(l)).c_str(), g_gpu.b[l], g_cpu.b[l]);
    }
    // GPU embedding gradients in the CPU's key order.
    absl::flat_hash_map<uint64_t, size_t> gpu_index;
    for (size_t u = 0; u < k_gpu->unique.size(); ++u) gpu_index[k_gpu->unique[u]] = u;
    std::vector<float> e_gpu_in_cpu_order;
    for (uint64_t key : k_cpu->unique) {
      const float* g = e_gpu.data() + gpu_index[key] * shape.dim;
      e_gpu_in_cpu_order.insert(e_gpu_in_cpu_order.end(), g, g + shape.dim);
    }
    Compare("  embedding gradients", e_gpu_in_cpu_order, e_cpu);
  }

  // Throughput of the same step on both (one run, same machine).
  {
    const MlpShape mlp{{784, 256, 10}};
    const uint32_t batch = 512;
    const MlpParams params = Random(mlp, rng);
    std::vector<float> x(size_t{batch} * 784, 0.5f);
    std::vector<uint8_t> labels(batch, 3);
    MlpParams g;
    const double c = SamplesPerSecond(batch, [&] {
      (void)cpu->MlpForwardBackward(mlp, params, x.data(), labels.data(), batch, &g);
    });
    const double d = SamplesPerSecond(batch, [&] {
      (void)(*gpu)->MlpForwardBackward(mlp, params, x.data(), labels.data(), batch, &g);
    });
    std::printf(
        "throughput: MLP 784-256-10 forward/backward, batch %u: CPU %.0f samples/s, GPU "
        "%.0f samples/s (%.1fx; parameters and gradients cross PCIe every step)\n",
        batch, c, d, d / c);
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace tessera

int main() { return tessera::Run(); }
