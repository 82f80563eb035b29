// The standard Prometheus process metrics (process_cpu_seconds_total,
// process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
// process_max_fds, process_start_time_seconds) plus process_threads, read from /proc/self when
// scraped. Every daemon registers one on its /metrics endpoint (docs/operations.md).
#ifndef TESSERA_COMMON_PROCESS_METRICS_H_
#define TESSERA_COMMON_PROCESS_METRICS_H_

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <vector>

namespace tessera {

// Thread-safe. A value that cannot be read (no /proc) is left out, not reported as 0.
class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace tessera

#endif  // TESSERA_COMMON_PROCESS_METRICS_H_
