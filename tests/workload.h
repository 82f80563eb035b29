// Writers for the fault tests (replication_test, control_plane_test, nemesis_test): clients
// push `add` updates of small integers (exact in float) to a sparse and a dense table and
// keep the sum of what was acknowledged to them, and of what is in doubt (a push that
// returned an error may or may not have been applied). At the end every value must lie
// between the acknowledged sum and that plus the in-doubt sum.
#ifndef TESSERA_TESTS_WORKLOAD_H_
#define TESSERA_TESTS_WORKLOAD_H_

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "tests/test_cluster.h"

namespace tessera::testing {

constexpr uint32_t kWorkloadKeys = 256;
constexpr uint32_t kWorkloadDim = 2;
constexpr uint64_t kWorkloadDenseSize = 2048;
constexpr uint32_t kKeysPerPush = 24;

struct WorkloadOptions {
  int clients = 4;
  // false: a failed push fails the test (WaitForMore, Verify). true: it is counted in doubt,
  // and the client goes on.
  bool tolerate_errors = false;
  // The sparse table's lifecycle (docs/embedding_lifecycle.md); default: none.
  LifecycleConfig sum_lifecycle;
};

// Thread-safe where it matters: Start/Stop/Verify from the test's thread; WaitForMore and
// the counters from any.
class Workload {
 public:
  Workload(const LocalCluster& cluster, WorkloadOptions options = {})
      : cluster_(cluster), options_(options) {
    std::unique_ptr<Client> admin = ConnectCoordinated(cluster);
    TableConfig sparse{.name = "sum", .kind = TableKind::kSparse, .dim = kWorkloadDim};
    sparse.optimizer.kind = OptimizerKind::kAdd;
    sparse.lifecycle = options.sum_lifecycle;
    TESSERA_REQUIRE_OK(admin->CreateTable(sparse).status());
    TableConfig dense{.name = "dsum",
                      .kind = TableKind::kDense,
                      .dense_size = kWorkloadDenseSize,
                      .dense_block_elems = 256};
    dense.optimizer.kind = OptimizerKind::kAdd;
    TESSERA_REQUIRE_OK(admin->CreateTable(dense).status());
    for (int c = 0; c < options.clients; ++c) {
      clients_.push_back(std::make_unique<PerClient>());
      clients_.back()->client = ConnectCoordinated(cluster);
    }
  }
  ~Workload() { Stop(); }

  void Start() {
    for (size_t c = 0; c < clients_.size(); ++c) threads_.emplace_back([this, c] { Run(c); });
  }

  void Stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  uint64_t acked() const { return acked_.load(); }
  uint64_t failed() const { return failed_.load(); }

  // Waits until `n` more pushes were acknowledged: the cluster serves.
  void WaitForMore(uint64_t n, absl::Duration timeout = absl::Seconds(60)) {
    const uint64_t target = acked() + n;
    const absl::Time deadline = absl::Now() + timeout;
    absl::MutexLock lock(&mu_);
    auto reached = [this, target]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return acked_.load() >= target || (!options_.tolerate_errors && !failures_.empty());
    };
    mu_.AwaitWithDeadline(absl::Condition(&reached), deadline);
    INFO(absl::StrFormat("acknowledged %u of %u; failures: %s", acked(), target,
                         failures_.empty() ? "none" : failures_.front()));
    if (!options_.tolerate_errors) REQUIRE(failures_.empty());
    REQUIRE(acked() >= target);
  }

  // Every value lies between the sum of the acknowledged pushes and that plus the pushes in
  // doubt; a mismatch is reported per key as lost or extra. Strict: no push failed either.
  void Verify() {
    {
      absl::MutexLock lock(&mu_);
      INFO(absl::StrFormat("%u failed pushes, first: %s", failures_.size(),
                           failures_.empty() ? "" : failures_.front()));
      if (!options_.tolerate_errors) REQUIRE(failures_.empty());
    }
    std::vector<double> lo_sparse(kWorkloadKeys * kWorkloadDim, 0), hi_sparse = lo_sparse;
    std::vector<double> lo_dense(kWorkloadDenseSize, 0), hi_dense = lo_dense;
    uint64_t duplicates = 0;
    for (const auto& c : clients_) {
      for (size_t i = 0; i < lo_sparse.size(); ++i) {
        lo_sparse[i] += c->sparse[i];
        hi_sparse[i] += c->sparse[i] + c->sparse_doubt[i];
      }
      for (size_t i = 0; i < lo_dense.size(); ++i) {
        lo_dense[i] += c->dense[i];
        hi_dense[i] += c->dense[i] + c->dense_doubt[i];
      }
      duplicates += c->client->duplicate_acks();
    }
    std::unique_ptr<Client> reader = ConnectCoordinated(cluster_);
    std::vector<uint64_t> keys(kWorkloadKeys);
    for (uint32_t k = 0; k < kWorkloadKeys; ++k) keys[k] = k;
    std::vector<float> got(kWorkloadKeys * kWorkloadDim);
    TESSERA_REQUIRE_OK(reader->PullSparse("sum", keys, absl::MakeSpan(got)));
    std::vector<float> dense(kWorkloadDenseSize);
    TESSERA_REQUIRE_OK(reader->PullDense("dsum", 0, absl::MakeSpan(dense)));
    std::vector<std::string> wrong;
    auto check = [&](const std::string& what, double lo, double hi, double have) {
      if (have >= lo && have <= hi) return;
      wrong.push_back(absl::StrFormat(
          "%s: %s (the acknowledged pushes sum to %g, %g more were in doubt; the cluster holds "
          "%g)",
          what, have < lo ? "LOST" : "EXTRA (applied twice)", lo, hi - lo, have));
    };
    for (uint32_t k = 0; k < kWorkloadKeys; ++k) {
      for (uint32_t d = 0; d < kWorkloadDim; ++d) {
        const size_t i = k * kWorkloadDim + d;
        check(absl::StrFormat("sparse key %u column %u", k, d), lo_sparse[i], hi_sparse[i], got[i]);
      }
    }
    for (uint64_t i = 0; i < kWorkloadDenseSize; ++i) {
      check(absl::StrFormat("dense element %u", i), lo_dense[i], hi_dense[i], dense[i]);
    }
    if (!wrong.empty()) {
      const size_t n = wrong.size();
      wrong.resize(std::min<size_t>(n, 20));
      FAIL(absl::StrFormat("%u values are wrong:\n  %s", n, absl::StrJoin(wrong, "\n  ")));
    }
    WARN(absl::StrFormat(
        "verified %u acknowledged pushes (%u in doubt; %u acknowledged as duplicates after a "
        "retry)",
        acked(), failed(), duplicates));
  }

 private:
  struct PerClient {
    std::unique_ptr<Client> client;
    std::vector<double> sparse = std::vector<double>(kWorkloadKeys * kWorkloadDim, 0);
    std::vector<double> sparse_doubt = sparse;
    std::vector<double> dense = std::vector<double>(kWorkloadDenseSize, 0);
    std::vector<double> dense_doubt = dense;
  };

  void Run(size_t c) {
    PerClient& me = *clients_[c];
    std::mt19937_64 rng(c + 1);
    std::vector<uint64_t> all(kWorkloadKeys);
    for (uint32_t k = 0; k < kWorkloadKeys; ++k) all[k] = k;
    for (uint64_t n = 0; !stop_; ++n) {
      absl::Status st;
      const float v = static_cast<float>(1 + (c + n) % 3);
      if (n % 8 == 7) {
        std::vector<float> values(kWorkloadDenseSize, v);
        st = me.client->PushDense("dsum", 0, values);
        for (auto& x : st.ok() ? me.dense : me.dense_doubt) x += v;
      } else {
        std::shuffle(all.begin(), all.end(), rng);
        std::vector<uint64_t> keys(all.begin(), all.begin() + kKeysPerPush);
        std::vector<float> values(keys.size() * kWorkloadDim, v);
        st = me.client->PushSparse("sum", keys, values);
        std::vector<double>& sums = st.ok() ? me.sparse : me.sparse_doubt;
        for (uint64_t k : keys) {
          for (uint32_t d = 0; d < kWorkloadDim; ++d) sums[k * kWorkloadDim + d] += v;
        }
      }
      absl::MutexLock lock(&mu_);
      if (!st.ok()) {
        failed_.fetch_add(1);
        failures_.push_back(absl::StrFormat("client %u push %u: %s", c, n, st.ToString()));
        if (!options_.tolerate_errors) return;
        continue;
      }
      acked_.fetch_add(1);
    }
  }

  const LocalCluster& cluster_;
  const WorkloadOptions options_;
  std::vector<std::unique_ptr<PerClient>> clients_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> acked_{0};
  std::atomic<uint64_t> failed_{0};
  absl::Mutex mu_;
  std::vector<std::string> failures_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::testing

#endif  // TESSERA_TESTS_WORKLOAD_H_
