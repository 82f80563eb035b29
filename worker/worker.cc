#include "worker/worker.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <cstdio>
#include <exception>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/admin.h"
#include "client/client.h"
#include "client/worker_clock.h"
#include "common/process_metrics.h"
#include "common/tls.h"
#include "proto/job.pb.h"
#include "worker/job.h"
#include "worker/models/mlp.h"

namespace tessera {
namespace {

constexpr char kWorkerService[] = "tessera.v1.Worker";

struct Mode {
  ConsistencyMode mode;
  std::string name;  // for the start line
};

Mode ModeOf(const v1::JobConfig& c) {
  if (c.mode() == v1::CONSISTENCY_MODE_SSP) {
    return {ConsistencyMode::kSsp, absl::StrFormat("SSP(%u)", c.staleness())};
  }
  if (c.mode() == v1::CONSISTENCY_MODE_ASYNC) return {ConsistencyMode::kAsync, "async"};
  return {ConsistencyMode::kBsp, "BSP"};
}

}  // namespace

struct Worker::Impl {
  WorkerOptions options;
  std::unique_ptr<v1::JobConfig> config;
  PreparedJob job;

  // Metrics (docs/operations.md, "Metrics").
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Counter* steps = nullptr;
  prometheus::Counter* samples = nullptr;
  prometheus::Counter* phases[4] = {};  // wait, pull, compute, push
  prometheus::Gauge* loss = nullptr;
  prometheus::Gauge* staleness = nullptr;
  prometheus::Counter* checkpoints_ok = nullptr;
  prometheus::Counter* checkpoints_failed = nullptr;
  prometheus::Gauge* last_checkpoint = nullptr;
  std::shared_ptr<ProcessCollector> process_collector = std::make_shared<ProcessCollector>();
  std::unique_ptr<MetricsServer> metrics_server;  // null: no /metrics
  int metrics_port = -1;

  // gRPC health: the process, and tessera.v1.Worker while the worker trains. (gRPC needs one
  // service of its own beside health: a generic one answering UNIMPLEMENTED.)
  grpc::CallbackGenericService unimplemented;
  std::unique_ptr<TlsMaterial> health_tls;  // (outlives health_server)
  std::unique_ptr<grpc::Server> health_server;
  int health_port = -1;

  ~Impl() {
    if (health_server != nullptr) health_server->Shutdown(absl::ToChronoTime(absl::Now()));
    metrics_server.reset();
  }

  void RegisterMetrics() {
    auto counter = [&](const char* name,
                       const char* help) -> prometheus::Family<prometheus::Counter>& {
      return prometheus::BuildCounter().Name(name).Help(help).Register(*registry);
    };
    auto gauge = [&](const char* name, const char* help) -> prometheus::Gauge& {
      return prometheus::BuildGauge().Name(name).Help(help).Register(*registry).Add({});
    };
    steps = &counter("tessera_worker_steps_total", "Training steps this worker finished.").Add({});
    samples = &counter("tessera_worker_samples_total", "Training examples this worker processed.")
                   .Add({});
    auto& phase = counter("tessera_worker_step_phase_seconds_total",
                          "Time spent per phase of a step: wait (clock), pull, compute, push (and "
                          "applying a BSP step).");
    const char* names[4] = {"wait", "pull", "compute", "push"};
    for (int i = 0; i < 4; ++i) phases[i] = &phase.Add({{"phase", names[i]}});
    loss = &gauge("tessera_worker_loss", "Training loss of the last step's batch.");
    staleness = &gauge("tessera_worker_staleness_steps",
                       "This worker's clock minus the slowest live worker's.");
    auto& checkpoints = counter("tessera_worker_checkpoints_total",
                                "Checkpoint rounds this worker ran (worker 0), by result.");
    checkpoints_ok = &checkpoints.Add({{"result", "ok"}});
    checkpoints_failed = &checkpoints.Add({{"result", "error"}});
    last_checkpoint = &gauge("tessera_worker_last_checkpoint_success_timestamp_seconds",
                             "When this worker's last checkpoint round succeeded.");
  }

  absl::Status ServeMetrics() {
    if (options.metrics_port < 0) return absl::OkStatus();
    absl::StatusOr<std::unique_ptr<MetricsServer>> started = MetricsServer::Start(
        options.metrics_address, options.metrics_port, options.metrics_security);
    if (!started.ok()) return started.status();
    metrics_server = *std::move(started);
    metrics_server->exposer().RegisterCollectable(registry);
    metrics_server->exposer().RegisterCollectable(process_collector);  // (held weakly)
    if (metrics_server->port() > 0) {
      metrics_port = metrics_server->port();
      std::printf("metrics: http://%s:%d/metrics\n", options.metrics_address.c_str(), metrics_port);
    }
    return absl::OkStatus();
  }

  absl::Status ServeHealth() {
    if (options.health_port < 0) return absl::OkStatus();
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.RegisterCallbackGenericService(&unimplemented);
    int bound = 0;
    // (TLS with the worker's own certificate when it has one; its CA then makes it mutual)
    const Credentials& c = options.credentials;
    absl::StatusOr<std::unique_ptr<TlsMaterial>> tls = TlsMaterial::Create(
        {c.tls_cert_file, c.tls_key_file, c.tls_cert_file.empty() ? std::string() : c.tls_ca_file});
    if (!tls.ok()) return tls.status();
    health_tls = *std::move(tls);
    builder.AddListeningPort(absl::StrFormat("%s:%d", options.metrics_address, options.health_port),
                             health_tls->ServerCredentials(), &bound);
    health_server = builder.BuildAndStart();
    if (health_server == nullptr || bound == 0) {
      health_server.reset();
      return absl::UnavailableError(
          absl::StrFormat("cannot serve gRPC health on port %d", options.health_port));
    }
    health_port = bound;
    health_server->GetHealthCheckService()->SetServingStatus(kWorkerService, false);
    std::printf("health: grpc %s:%d\n", options.metrics_address.c_str(), bound);
    return absl::OkStatus();
  }

  void SetTraining(bool training) {
    if (health_server != nullptr) {
      health_server->GetHealthCheckService()->SetServingStatus(kWorkerService, training);
    }
  }

  // Worker 0's checkpoint rounds (JobConfig.checkpoint): failures are reported, not fatal.
  void Checkpoint(uint64_t step) {
    const v1::CheckpointCadence& cc = config->checkpoint();
    absl::StatusOr<std::vector<std::string>> primaries =
        PrimaryAddresses(options.coordinator, options.credentials);
    absl::StatusOr<CheckpointRoundResult> r =
        primaries.ok() ? RunCheckpointRound({.dir = cc.dir(),
                                             .servers = *primaries,
                                             .keep_last = cc.keep_last(),
                                             .credentials = options.credentials})
                       : primaries.status();
    if (!r.ok()) {
      checkpoints_failed->Increment();
      std::fprintf(stderr, "tessera-worker: checkpoint at step %llu failed: %s\n",
                   static_cast<unsigned long long>(step), r.status().ToString().c_str());
      return;
    }
    checkpoints_ok->Increment();
    last_checkpoint->SetToCurrentTime();
    std::printf("checkpoint %llu (%s) at step %llu: %llu rows, %.1f MB in %.2f s\n",
                static_cast<unsigned long long>(r->id),
                r->parent_id == 0 ? "full"
                                  : absl::StrFormat("incremental on %llu",
                                                    static_cast<unsigned long long>(r->parent_id))
                                        .c_str(),
                static_cast<unsigned long long>(step), static_cast<unsigned long long>(r->rows),
                r->bytes / 1e6, r->seconds);
  }
};

Worker::Worker() = default;
Worker::~Worker() = default;
int Worker::metrics_port() const { return impl_->metrics_port; }
int Worker::health_port() const { return impl_->health_port; }

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(const WorkerOptions& options) {
  if (options.coordinator.empty() || options.num_workers == 0 ||
      options.worker >= options.num_workers) {
    return absl::InvalidArgumentError("need --coordinator and --worker < --num_workers");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  absl::StatusOr<std::unique_ptr<v1::JobConfig>> config = LoadJobConfig(options.config_path);
  if (!config.ok()) return config.status();
  impl->config = std::move(*config);
  absl::StatusOr<PreparedJob> job = PrepareJob(*impl->config, options.worker, options.num_workers);
  if (!job.ok()) return job.status();
  impl->job = std::move(*job);
  impl->job.loop.worker = options.worker;
  impl->job.loop.num_workers = options.num_workers;
  SetBlasThreads(1);  // the workers' parallelism is across processes
  impl->RegisterMetrics();
  if (absl::Status s = impl->ServeMetrics(); !s.ok()) return s;
  if (absl::Status s = impl->ServeHealth(); !s.ok()) return s;
  std::unique_ptr<Worker> worker(new Worker());
  worker->impl_ = std::move(impl);
  return worker;
}

absl::Status Worker::Run() {
  Impl& w = *impl_;
  const v1::JobConfig& config = *w.config;
  const uint32_t worker = w.options.worker;
  ClientOptions co;
  co.coordinator = w.options.coordinator;
  co.credentials = w.options.credentials;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(co);
  if (!client.ok()) return client.status();
  WorkerClockOptions wo;
  wo.coordinator = co.coordinator;
  wo.credentials = w.options.credentials;
  wo.job = config.name();
  wo.num_workers = w.options.num_workers;
  wo.worker = worker;
  const Mode mode = ModeOf(config);
  wo.mode = mode.mode;
  wo.staleness = config.staleness();
  wo.lease_ms = config.worker_lease_ms() > 0 ? config.worker_lease_ms() : 5000;
  wo.fail_on_worker_death = config.on_worker_death() == v1::WORKER_DEATH_POLICY_FAIL;
  absl::StatusOr<std::unique_ptr<WorkerClock>> clock = WorkerClock::Join(wo);
  if (!clock.ok()) return clock.status();
  std::printf("worker %u/%u of job '%s': %s, %d epochs, %s, backend %s\n", worker,
              w.options.num_workers, config.name().c_str(), w.job.description.c_str(),
              w.job.loop.epochs, mode.name.c_str(), w.job.backend.c_str());

  const bool checkpoints = worker == 0 && config.has_checkpoint();
  const absl::Time start = absl::Now();
  absl::Time last_report = start;
  uint64_t last_samples = 0, total_samples = 0;
  double phase_sum[4] = {0, 0, 0, 0};
  w.SetTraining(true);
  absl::StatusOr<WorkerReport> report =
      RunTrainLoop(**client, clock->get(), *w.job.model, w.job.loop, [&](const StepReport& r) {
        w.steps->Increment();
        w.samples->Increment(r.samples);
        const double p[4] = {r.wait_s, r.pull_s, r.compute_s, r.push_s};
        for (int i = 0; i < 4; ++i) {
          w.phases[i]->Increment(p[i]);
          phase_sum[i] += p[i];
        }
        w.loss->Set(r.loss);
        w.staleness->Set(static_cast<double>(r.staleness));
        total_samples += r.samples;
        const absl::Time now = absl::Now();
        if (now - last_report >= absl::Seconds(w.options.report_every_s)) {
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
        const uint32_t every = config.checkpoint().every_steps();
        if (checkpoints && every > 0 && r.step % every == 0) w.Checkpoint(r.step);
      });
  w.SetTraining(false);
  if (!report.ok()) {
    return absl::Status(report.status().code(),
                        absl::StrFormat("the job stopped: %s", report.status().message()));
  }
  std::printf("worker %u done: %llu steps in %.1f s, mean train loss %.4f\n", worker,
              static_cast<unsigned long long>(report->steps),
              absl::ToDoubleSeconds(absl::Now() - start), report->train_loss);
  if (worker == 0 && (w.job.evaluate || checkpoints)) {
    // The others may still be finishing their last step: wait for them.
    if (absl::StatusOr<JobProgress> p = (*clock)->WaitForAll(absl::Seconds(60)); !p.ok()) {
      std::printf("(going on without waiting for every worker: %s)\n",
                  p.status().ToString().c_str());
    }
    if (checkpoints) w.Checkpoint(report->steps);
  }
  if (worker == 0 && w.job.evaluate) {
    absl::StatusOr<std::string> result = w.job.evaluate(**client);
    if (!result.ok()) {
      return absl::Status(result.status().code(),
                          absl::StrFormat("evaluation: %s", result.status().message()));
    }
    std::printf("%s\n", result->c_str());
  }
  return absl::OkStatus();
}

}  // namespace tessera
