// One worker of a training job (docs/worker.md): what tessera-worker runs, so that its main()
// only parses flags. Create() loads and checks the job and opens the /metrics endpoint and the
// gRPC health service; Run() joins the job's clock, trains, runs worker 0's checkpoint rounds
// and evaluation, and prints a progress line every report_every_s.
#ifndef TESSERA_WORKER_WORKER_H_
#define TESSERA_WORKER_WORKER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/credentials.h"
#include "common/process_metrics.h"

namespace tessera {

struct WorkerOptions {
  std::string config_path;  // a tessera.v1.JobConfig in text format (proto/job.proto)
  std::string coordinator;  // host:port of tessera-coordinator
  uint32_t worker = 0;      // this worker's index in [0, num_workers)
  uint32_t num_workers = 1;
  std::string metrics_address = "127.0.0.1";  // also where the health service listens
  int metrics_port = 0;                       // 0: a free one; -1: no /metrics
  int health_port = -1;                       // 0: a free one; -1: no health service
  double report_every_s = 1.0;
  // HTTPS and basic authentication on /metrics (docs/security.md, "/metrics").
  MetricsSecurity metrics_security;
  // Presented to the daemons (docs/security.md): a worker token (with admin too when the job
  // creates its tables; worker 0's checkpoint rounds need admin).
  Credentials credentials;
};

class Worker {
 public:
  // INVALID_ARGUMENT for bad options or a bad job config; UNAVAILABLE when /metrics or the
  // health service cannot listen. Nothing is contacted yet.
  static absl::StatusOr<std::unique_ptr<Worker>> Create(const WorkerOptions& options);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // The bound ports (-1 when disabled).
  int metrics_port() const;
  int health_port() const;

  // Trains to the end of the job. An error says why the job stopped (the coordinator is
  // unreachable, a worker died under WORKER_DEATH_POLICY_FAIL, the evaluation failed, ...).
  absl::Status Run();

 private:
  Worker();
  struct Impl;  // worker/worker.cc
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_WORKER_WORKER_H_
