#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/auth.h"
#include "common/logging.h"
#include "common/process_metrics.h"
#include "server/data_plane.h"
#include "server/grpc_service.h"
#include "server/metrics.h"
#include "server/replicator.h"

namespace tessera {

struct Server::Impl {
  ServerOptions options;
  std::unique_ptr<ServerCore> core;
  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<ServerMetrics> metrics;
  std::shared_ptr<TableCollector> table_collector;
  std::shared_ptr<ReplicationCollector> replication_collector;
  std::shared_ptr<ProcessCollector> process_collector = std::make_shared<ProcessCollector>();
  std::unique_ptr<MetricsServer> metrics_server;  // null: no /metrics
  std::unique_ptr<Authenticator> auth;
  std::unique_ptr<TlsMaterial> tls;
  std::unique_ptr<CallLimiter> limiter;
  std::unique_ptr<Replicator> replicator;
  std::unique_ptr<GrpcService> service;
  std::unique_ptr<DataPlane> data_plane;  // null: disabled
  std::unique_ptr<grpc::Server> grpc_server;
  int port = 0;
  int metrics_port = -1;

  absl::Mutex mu;
  bool shut_down ABSL_GUARDED_BY(mu) = false;
  // The replica role this server has now (coordinated), for the health service.
  std::string role ABSL_GUARDED_BY(mu) = "none";

  // Per-service health (docs/operations.md, "Health"): the data service serves on a static
  // server and on a shard's primary; the replication service on a live replica (primary or
  // caught-up backup: NOT_SERVING while catching up or unplaced); "" while the process serves.
  void UpdateHealth() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (grpc_server == nullptr || shut_down) return;
    grpc::HealthCheckServiceInterface* health = grpc_server->GetHealthCheckService();
    const bool coordinated = replicator != nullptr;
    health->SetServingStatus(kDataService, !coordinated || role == "primary");
    if (coordinated) {
      health->SetServingStatus(kReplicationService, role == "primary" || role == "backup");
    }
  }
  static constexpr char kDataService[] = "tessera.v1.ParameterServer";
  static constexpr char kReplicationService[] = "tessera.v1.Replication";
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (!options.coordinator.empty() && options.restore_checkpoint >= 0) {
    return absl::InvalidArgumentError(
        "--restore does not apply with --coordinator yet: a coordinated server receives its "
        "state from its shard's primary");
  }
  ServerCoreOptions core_options = options.core;
  core_options.coordinated = !options.coordinator.empty();
  absl::StatusOr<std::unique_ptr<ServerCore>> core = ServerCore::Create(core_options);
  if (!core.ok()) return core.status();
  impl->core = std::move(*core);
  if (options.restore_checkpoint >= 0) {
    v1::RestoreCheckpointRequest req;
    req.mutable_header()->set_shard_map_epoch(options.core.shard_map_epoch);
    req.set_checkpoint_id(static_cast<uint64_t>(options.restore_checkpoint));
    req.set_phase(v1::RESTORE_PHASE_PREPARE_AND_COMMIT);
    v1::RestoreCheckpointResponse resp;
    if (absl::Status s = impl->core->RestoreCheckpoint(req, &resp); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("cannot restore: ", s.message()));
    }
  }

  impl->registry = std::make_shared<prometheus::Registry>();
  impl->metrics = std::make_unique<ServerMetrics>(impl->registry.get());
  absl::StatusOr<std::unique_ptr<Authenticator>> auth =
      Authenticator::Create(options.auth_token_file);
  if (!auth.ok()) return auth.status();
  impl->auth = *std::move(auth);
  ExportAuthMetrics(*impl->auth, *impl->registry);
  impl->limiter = std::make_unique<CallLimiter>(options.call_limits);
  ExportCallLimitMetrics(*impl->limiter, *impl->registry);
  absl::StatusOr<std::unique_ptr<TlsMaterial>> tls = TlsMaterial::Create(options.tls);
  if (!tls.ok()) return tls.status();
  impl->tls = *std::move(tls);
  if (impl->tls->enabled() && !options.coordinator.empty() && !impl->tls->mutual()) {
    return absl::InvalidArgumentError(
        "with TLS, a server of a replicated cluster needs --tls_ca_file: it verifies the "
        "coordinator and its backups with it (docs/security.md)");
  }
  if (!impl->auth->enabled()) {
    LogInfo("no --auth_token_file: every call is accepted (docs/security.md)");
  }
  impl->table_collector = std::make_shared<TableCollector>(impl->core.get());
  if (options.metrics_port >= 0) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> metrics = MetricsServer::Start(
        options.metrics_address, options.metrics_port, options.metrics_security);
    if (!metrics.ok()) return metrics.status();
    impl->metrics_server = *std::move(metrics);
    prometheus::Exposer& exposer = impl->metrics_server->exposer();
    exposer.RegisterCollectable(impl->registry);
    exposer.RegisterCollectable(impl->table_collector);
    exposer.RegisterCollectable(impl->process_collector);  // (held weakly: kept in impl)
    impl->metrics_port = impl->metrics_server->port();
  }

  if (!options.coordinator.empty()) {
    ReplicatorOptions r;
    r.coordinator = options.coordinator;
    r.metrics_port = impl->metrics_port;
    r.heartbeat_ms = options.heartbeat_ms;
    r.checkpoint_dir = options.core.checkpoint_dir;
    r.auth = impl->auth.get();
    if (impl->tls->enabled()) r.peer_credentials = impl->tls->PeerCredentials();
    Impl* raw = impl.get();
    r.on_role_change = [raw](const std::string& role) {
      absl::MutexLock lock(&raw->mu);
      raw->role = role;
      raw->UpdateHealth();
    };
    impl->replicator = std::make_unique<Replicator>(r, impl->core.get());
    impl->core->SetUpdateLog(impl->replicator.get());
    if (impl->metrics_server != nullptr) {
      impl->replication_collector =
          std::make_shared<ReplicationCollector>(impl->replicator.get(), impl->core.get());
      impl->metrics_server->exposer().RegisterCollectable(impl->replication_collector);
    }
  }
  impl->service =
      std::make_unique<GrpcService>(impl->core.get(), impl->metrics.get(), impl->replicator.get(),
                                    impl->auth.get(), impl->limiter.get());
  if (options.data_port >= 0) {
    DataPlaneOptions d;
    d.address = options.address;
    d.port = options.data_port;
    d.max_connections = options.max_data_connections;
    d.max_frame_bytes = static_cast<uint32_t>(std::max(options.max_request_bytes, 0));
    if (impl->tls->enabled()) {
      TlsMaterial* tls = impl->tls.get();
      d.tls_context = [tls] { return tls->DataPlaneContext(); };
    }
    absl::StatusOr<std::unique_ptr<DataPlane>> plane =
        DataPlane::Start(d, impl->service.get(), &impl->core->budget(), impl->registry.get(),
                         impl->auth.get(), impl->limiter.get());
    if (!plane.ok()) return plane.status();
    impl->data_plane = std::move(*plane);
    impl->service->set_data_port(impl->data_plane->port());
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string addr = absl::StrFormat("%s:%d", options.address, options.port);
  builder.AddListeningPort(addr, impl->tls->ServerCredentials(), &impl->port);
  builder.RegisterService(impl->service.get());
  if (impl->replicator != nullptr) builder.RegisterService(impl->replicator->service());
  builder.SetMaxReceiveMessageSize(options.max_request_bytes);
  builder.SetMaxSendMessageSize(-1);
  impl->grpc_server = builder.BuildAndStart();
  if (impl->grpc_server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot listen for gRPC on %s", addr));
  }
  impl->grpc_server->GetHealthCheckService()->SetServingStatus(true);
  {
    absl::MutexLock lock(&impl->mu);
    impl->UpdateHealth();
  }
  if (impl->replicator != nullptr) {
    // The advertised address is the server's identity in the cluster.
    impl->replicator->Start(options.advertise_address.empty()
                                ? absl::StrFormat("%s:%d", options.address, impl->port)
                                : options.advertise_address);
    LogInfo(
        "serving on %s:%d (data plane on port %d), metrics on port %d; coordinator %s "
        "places this server",
        options.address, impl->port, impl->data_plane != nullptr ? impl->data_plane->port() : 0,
        impl->metrics_port, options.coordinator);
  } else {
    LogInfo(
        "serving shard %u/%u (epoch %u, %u vshards) on %s:%d (data plane on port %d), "
        "metrics on port %d",
        options.core.shard_index, options.core.num_shards, options.core.shard_map_epoch,
        options.core.num_vshards, options.address, impl->port,
        impl->data_plane != nullptr ? impl->data_plane->port() : 0, impl->metrics_port);
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }
absl::Status Server::ReloadCredentials() {
  absl::Status tokens = impl_->auth->Reload();
  absl::Status tls = impl_->tls->Reload();
  return tokens.ok() ? tls : tokens;
}
int Server::metrics_port() const { return impl_->metrics_port; }
int Server::data_port() const {
  return impl_->data_plane != nullptr ? impl_->data_plane->port() : 0;
}
ServerCore* Server::core() { return impl_->core.get(); }
Replicator* Server::replicator() { return impl_->replicator.get(); }

void Server::Shutdown() {
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  impl_->grpc_server->GetHealthCheckService()->SetServingStatus(false);
  const absl::Time start = absl::Now();
  // Pushes waiting for their backups fail (UNAVAILABLE: the client retries them elsewhere).
  if (impl_->replicator != nullptr) impl_->replicator->Stop();
  // Both transports drain at once: no new requests, those in flight answered until the
  // deadline (data-plane clients then see their connection close and retry elsewhere).
  const absl::Time drain_deadline = start + absl::Milliseconds(impl_->options.drain_timeout_ms);
  if (impl_->data_plane != nullptr) impl_->data_plane->Drain();
  impl_->grpc_server->Shutdown(absl::ToChronoTime(drain_deadline));
  impl_->grpc_server->Wait();
  if (impl_->data_plane != nullptr) impl_->data_plane->Stop(drain_deadline);
  LogInfo("drained and stopped in %.1f ms", absl::ToDoubleMilliseconds(absl::Now() - start));
  impl_->metrics_server.reset();
}

}  // namespace tessera
