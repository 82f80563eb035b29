// Prometheus metrics of tessera-server. Names follow Prometheus conventions; see
// docs/operations.md for the list.
#ifndef TESSERA_SERVER_METRICS_H_
#define TESSERA_SERVER_METRICS_H_

#include <grpcpp/support/status.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace tessera {

class ServerCore;
class Replicator;

enum class Method {
  kCreateTable,
  kDropTable,
  kDescribeTable,
  kListTables,
  kPullSparse,
  kPushSparse,
  kPullDense,
  kPushDense,
  kWriteCheckpoint,
  kGetCheckpointState,
  kRestoreCheckpoint,
  kApplyStep,
  kRemoveRows,
};
inline constexpr int kNumMethods = 13;
const char* MethodName(Method m);

// Request metrics per method and status code. Thread-safe; Record() takes no lock once the
// (method, code) series exists.
class ServerMetrics {
 public:
  // `registry` must outlive this object.
  explicit ServerMetrics(prometheus::Registry* registry);

  // keys: sparse keys or dense elements moved; bytes_in/bytes_out: bulk payload bytes received
  // and sent (keys and values).
  void Record(Method method, grpc::StatusCode code, double seconds, uint64_t keys,
              uint64_t bytes_in, uint64_t bytes_out);

  void AddInFlight(double delta) { in_flight_->Increment(delta); }

 private:
  struct Series {
    prometheus::Counter* requests;
    prometheus::Histogram* latency;
  };
  static constexpr int kNumCodes = 17;

  Series* GetSeries(Method method, grpc::StatusCode code) ABSL_LOCKS_EXCLUDED(mu_);

  // Constant after construction.
  prometheus::Family<prometheus::Counter>* requests_family_;
  prometheus::Family<prometheus::Histogram>* latency_family_;
  std::array<prometheus::Counter*, kNumMethods> keys_;
  std::array<prometheus::Counter*, kNumMethods> bytes_in_;
  std::array<prometheus::Counter*, kNumMethods> bytes_out_;
  prometheus::Gauge* in_flight_;

  // Lazily created series, published with release stores; written only under mu_.
  std::array<std::array<std::atomic<Series*>, kNumCodes>, kNumMethods> series_{};
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Series>> owned_series_ ABSL_GUARDED_BY(mu_);
};

// Exposes per-table figures (rows, bytes) and push counters, computed at scrape time.
// Thread-safe.
class TableCollector : public prometheus::Collectable {
 public:
  // `core` must outlive this object.
  explicit TableCollector(const ServerCore* core) : core_(core) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const ServerCore* core_;
};

// Exposes the replication state of a coordinated server (docs/replication.md): epoch, role,
// LSN, and per backup its lag and catch-up progress. Thread-safe.
class ReplicationCollector : public prometheus::Collectable {
 public:
  // `replicator` and `core` must outlive this object.
  ReplicationCollector(const Replicator* replicator, const ServerCore* core)
      : replicator_(replicator), core_(core) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const Replicator* replicator_;
  const ServerCore* core_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_METRICS_H_
