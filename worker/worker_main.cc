// tessera-worker: runs one worker of a training job described in a config file (a
// tessera.v1.JobConfig in protobuf text format, proto/job.proto; docs/worker.md).
//
//   tessera-worker --config=job.textproto --coordinator=host:port --worker=i --num_workers=n
//
// Prints a progress line every second (step, samples/s, loss, time split, staleness) and, on
// worker 0, the test accuracy at the end; serves /metrics. Exit codes: 0 done, 1 the job failed
// (the message says why, e.g. which worker died), 2 bad flags or config.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <cstdio>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/admin.h"
#include "client/client.h"
#include "client/worker_clock.h"
#include "common/logging.h"
#include "common/process_metrics.h"
#include "common/process_setup.h"
#include "proto/job.pb.h"
#include "proto/tessera.pb.h"
#include "worker/job.h"
#include "worker/mlp.h"

ABSL_FLAG(std::string, config, "", "The job: a tessera.v1.JobConfig in text format. Required.");
ABSL_FLAG(std::string, coordinator, "", "host:port of tessera-coordinator. Required.");
ABSL_FLAG(uint32_t, worker, 0, "This worker's index in [0, num_workers).");
ABSL_FLAG(uint32_t, num_workers, 1, "Workers in the job.");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1", "Address of the /metrics endpoint.");
ABSL_FLAG(int, metrics_port, 0, "Port of /metrics; 0 picks a free one, -1 disables.");
ABSL_FLAG(int, health_port, -1,
          "Port of a gRPC health service (tessera.v1.Worker: SERVING while the worker trains); "
          "0 picks a free one (printed), -1: none.");
ABSL_FLAG(double, report_every_s, 1.0, "Seconds between progress lines.");

namespace {
constexpr char kWorkerService[] = "tessera.v1.Worker";
}  // namespace

int main(int argc, char** argv) {
  tessera::SetUpProcess();
  absl::SetProgramUsageMessage("tessera-worker: one worker of a Tessera training job");
  absl::ParseCommandLine(argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const uint32_t worker = absl::GetFlag(FLAGS_worker);
  const uint32_t num_workers = absl::GetFlag(FLAGS_num_workers);
  tessera::SetLogTag(absl::StrFormat("worker/%u", worker));
  if (absl::GetFlag(FLAGS_coordinator).empty() || num_workers == 0 || worker >= num_workers) {
    std::fprintf(stderr, "tessera-worker: need --coordinator and --worker < --num_workers\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<tessera::v1::JobConfig>> config =
      tessera::LoadJobConfig(absl::GetFlag(FLAGS_config));
  absl::StatusOr<tessera::PreparedJob> job =
      config.ok() ? tessera::PrepareJob(**config, worker, num_workers) : config.status();
  if (!job.ok()) {
    std::fprintf(stderr, "tessera-worker: %s\n", job.status().ToString().c_str());
    return 2;
  }
  tessera::SetBlasThreads(1);

  // Metrics.
  auto registry = std::make_shared<prometheus::Registry>();
  auto& steps = prometheus::BuildCounter()
                    .Name("tessera_worker_steps_total")
                    .Help("Training steps this worker finished.")
                    .Register(*registry)
                    .Add({});
  auto& samples = prometheus::BuildCounter()
                      .Name("tessera_worker_samples_total")
                      .Help("Training examples this worker processed.")
                      .Register(*registry)
                      .Add({});
  auto& phase_family = prometheus::BuildCounter()
                           .Name("tessera_worker_step_phase_seconds_total")
                           .Help(
                               "Time spent per phase of a step: wait (clock), pull, compute, "
                               "push (and applying a BSP step).")
                           .Register(*registry);
  prometheus::Counter* phases[4] = {
      &phase_family.Add({{"phase", "wait"}}), &phase_family.Add({{"phase", "pull"}}),
      &phase_family.Add({{"phase", "compute"}}), &phase_family.Add({{"phase", "push"}})};
  auto& loss = prometheus::BuildGauge()
                   .Name("tessera_worker_loss")
                   .Help("Training loss of the last step's batch.")
                   .Register(*registry)
                   .Add({});
  auto& staleness = prometheus::BuildGauge()
                        .Name("tessera_worker_staleness_steps")
                        .Help("This worker's clock minus the slowest live worker's.")
                        .Register(*registry)
                        .Add({});
  auto& checkpoint_family = prometheus::BuildCounter()
                                .Name("tessera_worker_checkpoints_total")
                                .Help("Checkpoint rounds this worker ran (worker 0), by result.")
                                .Register(*registry);
  prometheus::Counter& checkpoints_ok = checkpoint_family.Add({{"result", "ok"}});
  prometheus::Counter& checkpoints_failed = checkpoint_family.Add({{"result", "error"}});
  auto& last_checkpoint = prometheus::BuildGauge()
                              .Name("tessera_worker_last_checkpoint_success_timestamp_seconds")
                              .Help("When this worker's last checkpoint round succeeded.")
                              .Register(*registry)
                              .Add({});
  auto process_collector = std::make_shared<tessera::ProcessCollector>();
  std::unique_ptr<prometheus::Exposer> exposer;
  if (const int port = absl::GetFlag(FLAGS_metrics_port); port >= 0) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(
          absl::StrFormat("%s:%d", absl::GetFlag(FLAGS_metrics_address), port), 1);
      exposer->RegisterCollectable(registry);
      exposer->RegisterCollectable(process_collector);  // (held weakly)
      const std::vector<int> ports = exposer->GetListeningPorts();
      if (!ports.empty()) {
        std::printf("metrics: http://%s:%d/metrics\n", absl::GetFlag(FLAGS_metrics_address).c_str(),
                    ports[0]);
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tessera-worker: cannot serve /metrics: %s\n", e.what());
      return 2;
    }
  }
  // Runs before the exposer's destructor, on every return below.
  absl::Cleanup stop_metrics = [&exposer] {
    tessera::StopExposer(exposer, absl::GetFlag(FLAGS_metrics_address));
  };

  // gRPC health (docs/operations.md, "Health"): the process, and tessera.v1.Worker while the
  // worker trains.
  // (gRPC needs one service of its own beside health: a generic one answering UNIMPLEMENTED.)
  grpc::CallbackGenericService unimplemented;
  std::unique_ptr<grpc::Server> health_server;
  if (const int port = absl::GetFlag(FLAGS_health_port); port >= 0) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.RegisterCallbackGenericService(&unimplemented);
    int bound = 0;
    builder.AddListeningPort(absl::StrFormat("%s:%d", absl::GetFlag(FLAGS_metrics_address), port),
                             grpc::InsecureServerCredentials(), &bound);
    health_server = builder.BuildAndStart();
    if (health_server == nullptr || bound == 0) {
      std::fprintf(stderr, "tessera-worker: cannot serve gRPC health on port %d\n", port);
      return 2;
    }
    health_server->GetHealthCheckService()->SetServingStatus(kWorkerService, false);
    std::printf("health: grpc %s:%d\n", absl::GetFlag(FLAGS_metrics_address).c_str(), bound);
  }
  auto set_training = [&](bool training) {
    if (health_server != nullptr) {
      health_server->GetHealthCheckService()->SetServingStatus(kWorkerService, training);
    }
  };

  tessera::ClientOptions co;
  co.coordinator = absl::GetFlag(FLAGS_coordinator);
  absl::StatusOr<std::unique_ptr<tessera::Client>> client = tessera::Client::Connect(co);
  if (!client.ok()) {
    std::fprintf(stderr, "tessera-worker: %s\n", client.status().ToString().c_str());
    return 1;
  }
  tessera::WorkerClockOptions wo;
  wo.coordinator = co.coordinator;
  wo.job = (*config)->name();
  wo.num_workers = num_workers;
  wo.worker = worker;
  wo.mode = (*config)->mode() == tessera::v1::CONSISTENCY_MODE_SSP ? tessera::ConsistencyMode::kSsp
            : (*config)->mode() == tessera::v1::CONSISTENCY_MODE_ASYNC
                ? tessera::ConsistencyMode::kAsync
                : tessera::ConsistencyMode::kBsp;
  wo.staleness = (*config)->staleness();
  wo.lease_ms = (*config)->worker_lease_ms() > 0 ? (*config)->worker_lease_ms() : 5000;
  wo.fail_on_worker_death = (*config)->on_worker_death() == tessera::v1::WORKER_DEATH_POLICY_FAIL;
  absl::StatusOr<std::unique_ptr<tessera::WorkerClock>> clock = tessera::WorkerClock::Join(wo);
  if (!clock.ok()) {
    std::fprintf(stderr, "tessera-worker: %s\n", clock.status().ToString().c_str());
    return 1;
  }
  const std::string mode_name = (*config)->mode() == tessera::v1::CONSISTENCY_MODE_SSP
                                    ? absl::StrFormat("SSP(%u)", (*config)->staleness())
                                : (*config)->mode() == tessera::v1::CONSISTENCY_MODE_ASYNC ? "async"
                                                                                           : "BSP";
  std::printf("worker %u/%u of job '%s': %s, %d epochs, %s, backend %s\n", worker, num_workers,
              (*config)->name().c_str(), job->description.c_str(), job->loop.epochs,
              mode_name.c_str(), job->backend.c_str());

  // Worker 0's checkpoint rounds (JobConfig.checkpoint): failures are reported, not fatal.
  const bool checkpoints = worker == 0 && (*config)->has_checkpoint();
  auto checkpoint = [&](uint64_t step) {
    const tessera::v1::CheckpointCadence& cc = (*config)->checkpoint();
    absl::StatusOr<std::vector<std::string>> primaries = tessera::PrimaryAddresses(co.coordinator);
    absl::StatusOr<tessera::CheckpointRoundResult> r =
        primaries.ok() ? tessera::RunCheckpointRound(
                             {.dir = cc.dir(), .servers = *primaries, .keep_last = cc.keep_last()})
                       : primaries.status();
    if (!r.ok()) {
      checkpoints_failed.Increment();
      std::fprintf(stderr, "tessera-worker: checkpoint at step %llu failed: %s\n",
                   static_cast<unsigned long long>(step), r.status().ToString().c_str());
      return;
    }
    checkpoints_ok.Increment();
    last_checkpoint.SetToCurrentTime();
    std::printf("checkpoint %llu (%s) at step %llu: %llu rows, %.1f MB in %.2f s\n",
                static_cast<unsigned long long>(r->id),
                r->parent_id == 0 ? "full"
                                  : absl::StrFormat("incremental on %llu",
                                                    static_cast<unsigned long long>(r->parent_id))
                                        .c_str(),
                static_cast<unsigned long long>(step), static_cast<unsigned long long>(r->rows),
                r->bytes / 1e6, r->seconds);
  };

  const absl::Time start = absl::Now();
  absl::Time last_report = start;
  uint64_t last_samples = 0, total_samples = 0;
  double phase_sum[4] = {0, 0, 0, 0};
  job->loop.worker = worker;
  job->loop.num_workers = num_workers;
  set_training(true);
  absl::StatusOr<tessera::WorkerReport> report = tessera::RunTrainLoop(
      **client, clock->get(), *job->model, job->loop, [&](const tessera::StepReport& r) {
        steps.Increment();
        samples.Increment(r.samples);
        const double p[4] = {r.wait_s, r.pull_s, r.compute_s, r.push_s};
        for (int i = 0; i < 4; ++i) {
          phases[i]->Increment(p[i]);
          phase_sum[i] += p[i];
        }
        loss.Set(r.loss);
        staleness.Set(static_cast<double>(r.staleness));
        total_samples += r.samples;
        const absl::Time now = absl::Now();
        if (now - last_report >= absl::Seconds(absl::GetFlag(FLAGS_report_every_s))) {
          const double dt = absl::ToDoubleSeconds(now - last_report);
          std::printf(
              "  step %6llu  %8.0f samples/s  loss %.4f  wait %.1f%% pull %.1f%% compute "
              "%.1f%% push %.1f%%  staleness %llu\n",
              static_cast<unsigned long long>(r.step), (total_samples - last_samples) / dt, r.loss,
              100 * phase_sum[0] / dt, 100 * phase_sum[1] / dt, 100 * phase_sum[2] / dt,
              100 * phase_sum[3] / dt, static_cast<unsigned long long>(r.staleness));
          last_report = now;
          last_samples = total_samples;
          for (double& v : phase_sum) v = 0;
        }
        const uint32_t every = (*config)->checkpoint().every_steps();
        if (checkpoints && every > 0 && r.step % every == 0) checkpoint(r.step);
      });
  set_training(false);
  if (!report.ok()) {
    std::fprintf(stderr, "tessera-worker: the job stopped: %s\n",
                 report.status().ToString().c_str());
    return 1;
  }
  std::printf("worker %u done: %llu steps in %.1f s, mean train loss %.4f\n", worker,
              static_cast<unsigned long long>(report->steps),
              absl::ToDoubleSeconds(absl::Now() - start), report->train_loss);
  if (worker == 0 && (job->evaluate || checkpoints)) {
    // The others may still be finishing their last step: wait for them.
    if (absl::StatusOr<tessera::JobProgress> p = (*clock)->WaitForAll(absl::Seconds(60)); !p.ok()) {
      std::printf("(going on without waiting for every worker: %s)\n",
                  p.status().ToString().c_str());
    }
    if (checkpoints) checkpoint(report->steps);
  }
  if (worker == 0 && job->evaluate) {
    absl::StatusOr<std::string> result = job->evaluate(**client);
    if (!result.ok()) {
      std::fprintf(stderr, "tessera-worker: evaluation: %s\n", result.status().ToString().c_str());
      return 1;
    }
    std::printf("%s\n", result->c_str());
  }
  return 0;
}
