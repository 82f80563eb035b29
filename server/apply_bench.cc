// In-process benchmark of a shard's apply path (docs/state_machine.md, "Sequencing and
// applying"): sparse pushes to disjoint vshards, submitted asynchronously to one ServerCore,
// applied by 1, 2, ... executors. Prints one JSON line per executor count and the ratios to
// one executor, measured in the same run. Not a test: nothing here is asserted.
//
//   build/server/tessera-apply-bench [--threads=1,2] [--dim=64] [--keys=1024] [--pushes=3000]
//                                    [--rounds=3] [--optimizer=adam]
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/process_setup.h"
#include "server/core_test_util.h"

ABSL_FLAG(std::string, threads, "1,2", "executor counts to measure");
ABSL_FLAG(uint32_t, dim, 64, "row dimension");
ABSL_FLAG(uint32_t, keys, 1024, "keys per push");
ABSL_FLAG(uint32_t, pushes, 3000, "pushes per round");
ABSL_FLAG(uint32_t, rounds, 3, "rounds per executor count (the best is reported)");
ABSL_FLAG(std::string, optimizer, "adam", "sgd, adagrad or adam");

namespace tessera {
namespace {

using namespace tessera::testing;  // NOLINT

constexpr uint32_t kVshards = 1024;

// Push i holds keys of vshards v with v % 2 == i % 2 only: consecutive pushes touch disjoint
// vshards, so two executors can apply them at once.
std::vector<v1::PushSparseRequest> MakePushes(uint32_t n, uint32_t keys, uint32_t dim) {
  std::mt19937_64 rng(1);
  std::vector<v1::PushSparseRequest> out;
  std::vector<float> grads(size_t{keys} * dim);
  for (float& g : grads) g = std::uniform_real_distribution<float>(-1, 1)(rng);
  for (uint32_t i = 0; i < n; ++i) {
    std::vector<uint64_t> k;
    while (k.size() < keys) {
      const uint64_t key = rng() % (uint64_t{1} << 20);
      if (VshardOfKey(key, kVshards) % 2 == i % 2) k.push_back(key);
    }
    std::sort(k.begin(), k.end());
    k.erase(std::unique(k.begin(), k.end()), k.end());
    std::vector<float> g(grads.begin(), grads.begin() + k.size() * dim);
    out.push_back(SparsePushReq("t", dim, k, g, 1, i + 1));
  }
  return out;
}

double Round(uint32_t threads, const std::vector<v1::PushSparseRequest>& pushes, uint32_t dim,
             OptimizerKind opt, uint64_t* keys_total) {
  ServerCoreOptions o;
  o.num_vshards = kVshards;
  o.apply_threads = threads;
  std::unique_ptr<ServerCore> core = *ServerCore::Create(o);
  v1::CreateTableResponse cr;
  if (!core->CreateTable(CreateReq(SparseConfig("t", dim, opt)), &cr).ok()) std::abort();
  // Warm-up: every row exists before the timed pass (rows are created once in a table's life).
  auto run = [&](uint64_t client) {
    std::vector<std::shared_ptr<v1::PushSparseRequest>> reqs;
    for (const auto& p : pushes) {
      auto r = std::make_shared<v1::PushSparseRequest>(p);
      r->mutable_id()->set_client_id(client);
      reqs.push_back(std::move(r));
    }
    std::vector<v1::PushResponse> resps(reqs.size());
    std::atomic<size_t> left{reqs.size()};
    absl::Notification all;
    const absl::Time start = absl::Now();
    for (size_t i = 0; i < reqs.size(); ++i) {
      core->PushSparse(reqs[i], &resps[i], nullptr, [&](absl::Status st) {
        if (!st.ok()) {
          std::fprintf(stderr, "push failed: %s\n", st.ToString().c_str());
          std::abort();
        }
        if (left.fetch_sub(1) == 1) all.Notify();
      });
    }
    all.WaitForNotification();
    return absl::ToDoubleSeconds(absl::Now() - start);
  };
  run(1);
  *keys_total = 0;
  for (const auto& p : pushes) *keys_total += p.num_keys();
  return run(2);
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  tessera::SetUpProcess();
  using tessera::OptimizerKind;
  const std::string opt_name = absl::GetFlag(FLAGS_optimizer);
  const OptimizerKind opt = opt_name == "sgd"       ? OptimizerKind::kSgd
                            : opt_name == "adagrad" ? OptimizerKind::kAdagrad
                                                    : OptimizerKind::kAdam;
  const uint32_t dim = absl::GetFlag(FLAGS_dim);
  const auto pushes =
      tessera::MakePushes(absl::GetFlag(FLAGS_pushes), absl::GetFlag(FLAGS_keys), dim);
  double base = 0;
  for (absl::string_view t : absl::StrSplit(absl::GetFlag(FLAGS_threads), ',')) {
    uint32_t threads = 0;
    if (!absl::SimpleAtoi(t, &threads) || threads == 0) {
      std::fprintf(stderr, "--threads: '%s' is not a positive count\n", std::string(t).c_str());
      return 2;
    }
    double best = 1e30;
    uint64_t keys = 0;
    for (uint32_t r = 0; r < std::max(1u, absl::GetFlag(FLAGS_rounds)); ++r) {
      best = std::min(best, tessera::Round(threads, pushes, dim, opt, &keys));
    }
    const double mkeys = keys / best / 1e6;
    if (base == 0) base = mkeys;
    std::printf(
        "{\"benchmark\":\"apply_sparse_push\",\"optimizer\":\"%s\",\"dim\":%u,\"executors\":%u,"
        "\"pushes\":%zu,\"keys\":%llu,\"seconds\":%.4f,\"mkeys_per_s\":%.3f,"
        "\"ratio_to_first\":%.3f}\n",
        opt_name.c_str(), dim, threads, pushes.size(), static_cast<unsigned long long>(keys), best,
        mkeys, mkeys / base);
  }
  return 0;
}
