// CoordinatorServer: the gRPC service, the lease checker and RocksDB persistence.
#include "server/coordinator/coordinator.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <rocksdb/db.h>

#include <algorithm>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/process_metrics.h"
#include "proto/cluster.grpc.pb.h"
#include "server/coordinator/job_clocks.h"

namespace tessera {
namespace {

constexpr char kStateKey[] = "state";

}  // namespace

struct CoordinatorServer::Impl : public v1::Coordinator::CallbackService {
  CoordinatorServerOptions options;
  std::unique_ptr<rocksdb::DB> db;

  absl::Mutex mu;
  ClusterState state ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;

  // Training clocks (docs/worker.md): Clock calls that wait for their step park here.
  struct ClockWaiter {
    std::string job;
    uint64_t step;
    absl::Time deadline;
    grpc::ServerUnaryReactor* reactor;
    v1::ClockResponse* resp;
  };
  JobClocks jobs ABSL_GUARDED_BY(mu);
  std::vector<ClockWaiter> waiters ABSL_GUARDED_BY(mu);

  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::thread lease_thread;

  std::shared_ptr<prometheus::Registry> registry;
  std::shared_ptr<ProcessCollector> process_collector = std::make_shared<ProcessCollector>();
  std::unique_ptr<prometheus::Exposer> exposer;
  int metrics_port = -1;
  prometheus::Gauge* epoch_gauge = nullptr;
  prometheus::Counter* failovers_counter = nullptr;
  uint64_t failovers_counted = 0;
  prometheus::Gauge* alive_gauge = nullptr;
  prometheus::Gauge* lost_gauge = nullptr;
  prometheus::Gauge* live_replicas = nullptr;
  prometheus::Gauge* joining_replicas = nullptr;
  prometheus::Gauge* degraded_shards = nullptr;

  explicit Impl(const CoordinatorServerOptions& o) : options(o), state(o.cluster) {}

  // Persists the state (synced) before anyone learns of it.
  absl::Status Persist() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    v1::CoordinatorState s;
    state.Save(&s);
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status st = db->Put(wo, kStateKey, s.SerializeAsString());
    if (!st.ok()) {
      LogError("cannot persist the cluster state: %s", st.ToString());
      return absl::InternalError(absl::StrCat("cannot persist the cluster state: ", st.ToString()));
    }
    UpdateGauges();
    return absl::OkStatus();
  }

  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (epoch_gauge == nullptr) return;
    const v1::ClusterMap& m = state.map();
    epoch_gauge->Set(static_cast<double>(m.epoch()));
    if (state.failovers() > failovers_counted) {
      failovers_counter->Increment(static_cast<double>(state.failovers() - failovers_counted));
      failovers_counted = state.failovers();
    }
    int lost = 0, live = 0, joining = 0, degraded = 0;
    for (const auto& s : m.shards()) {
      lost += s.lost();
      int shard_live = 0;
      for (const auto& r : s.replicas()) {
        if (r.state() == v1::REPLICA_STATE_LIVE) {
          ++live;
          ++shard_live;
        } else {
          ++joining;
        }
      }
      degraded += static_cast<uint32_t>(shard_live) < m.replication();
    }
    lost_gauge->Set(lost);
    live_replicas->Set(live);
    joining_replicas->Set(joining);
    degraded_shards->Set(degraded);
    v1::GetClusterStatusResponse status;
    state.Status(absl::Now(), &status);
    int alive = 0;
    for (const auto& member : status.members()) alive += member.alive();
    alive_gauge->Set(alive);
  }

  void LeaseLoop() {
    while (true) {
      absl::MutexLock lock(&mu);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return stopping; };
      mu.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(100));
      if (stopping) return;
      const absl::Time now = absl::Now();
      if (state.ExpireLeases(now)) (void)Persist();
      for (const std::string& job : jobs.ExpireLeases(now)) WakeWaiters(job, now);
      WakeWaiters("", now);  // (time-outs)
    }
  }

  // Answers the parked Clock calls of `job` (every job when empty) that may go on now, failed,
  // or timed out.
  void WakeWaiters(const std::string& job, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::vector<ClockWaiter> keep;
    for (ClockWaiter& w : waiters) {
      if (!job.empty() && w.job != job && w.deadline > now) {
        keep.push_back(w);
        continue;
      }
      absl::StatusOr<v1::ClockResponse> r = jobs.Check(w.job, w.step);
      if (r.ok() && !r->ready() && w.deadline > now) {
        keep.push_back(w);
        continue;
      }
      if (r.ok()) *w.resp = *r;
      w.reactor->Finish(ToGrpcStatus(r.status()));
    }
    waiters = std::move(keep);
  }

  grpc::ServerUnaryReactor* JoinJob(grpc::CallbackServerContext* ctx, const v1::JoinJobRequest* req,
                                    v1::JoinJobResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    absl::Status st;
    {
      absl::MutexLock lock(&mu);
      absl::StatusOr<v1::JoinJobResponse> r = jobs.Join(*req, absl::Now());
      if (r.ok()) {
        *resp = *r;
        WakeWaiters(req->spec().job(), absl::Now());
      }
      st = r.status();
    }
    reactor->Finish(ToGrpcStatus(st));
    return reactor;
  }

  grpc::ServerUnaryReactor* Clock(grpc::CallbackServerContext* ctx, const v1::ClockRequest* req,
                                  v1::ClockResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    absl::MutexLock lock(&mu);
    const absl::Time now = absl::Now();
    absl::StatusOr<v1::ClockResponse> r = jobs.Clock(*req, now);
    if (r.ok()) WakeWaiters(req->job(), now);  // the clock may let others go on
    if (!r.ok() || r->ready() || stopping) {
      if (r.ok()) *resp = *r;
      reactor->Finish(ToGrpcStatus(r.status()));
      return reactor;
    }
    const uint32_t timeout_ms = std::clamp<uint32_t>(req->timeout_ms(), 1, 10000);
    waiters.push_back(
        {req->job(), req->wait_for(), now + absl::Milliseconds(timeout_ms), reactor, resp});
    return reactor;
  }

  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const v1::HeartbeatRequest* req,
                                      v1::HeartbeatResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    absl::Status st;
    if (req->status().address().empty()) {
      st = absl::InvalidArgumentError("a heartbeat needs the server's address");
    } else {
      absl::MutexLock lock(&mu);
      if (state.Heartbeat(req->status(), absl::Now())) st = Persist();
      *resp->mutable_map() = state.map();
      resp->set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(options.cluster.lease)));
    }
    reactor->Finish(ToGrpcStatus(st));
    return reactor;
  }

  grpc::ServerUnaryReactor* GetClusterMap(grpc::CallbackServerContext* ctx,
                                          const v1::GetClusterMapRequest*,
                                          v1::GetClusterMapResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    {
      absl::MutexLock lock(&mu);
      *resp->mutable_map() = state.map();
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ReportCaughtUp(grpc::CallbackServerContext* ctx,
                                           const v1::ReportCaughtUpRequest* req,
                                           v1::ReportCaughtUpResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    absl::Status st;
    {
      absl::MutexLock lock(&mu);
      absl::StatusOr<bool> changed = state.CaughtUp(req->shard(), req->primary(), req->replica());
      if (!changed.ok()) {
        st = changed.status();
      } else if (*changed) {
        st = Persist();
      }
      *resp->mutable_map() = state.map();
    }
    reactor->Finish(ToGrpcStatus(st));
    return reactor;
  }

  grpc::ServerUnaryReactor* GetClusterStatus(grpc::CallbackServerContext* ctx,
                                             const v1::GetClusterStatusRequest*,
                                             v1::GetClusterStatusResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    {
      absl::MutexLock lock(&mu);
      state.Status(absl::Now(), resp);
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

CoordinatorServer::CoordinatorServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CoordinatorServer::~CoordinatorServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const CoordinatorServerOptions& options) {
  const CoordinatorOptions& c = options.cluster;
  if (c.num_shards == 0 || c.replication < 1 || c.replication > 3 || c.num_vshards == 0 ||
      c.num_shards > c.num_vshards) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "need 1 <= num_shards <= num_vshards and 1 <= replication <= 3 (got %u shards, %u "
        "vshards, replication %u)",
        c.num_shards, c.num_vshards, c.replication));
  }
  if (options.state_dir.empty()) {
    return absl::InvalidArgumentError("the coordinator needs --state_dir for its state");
  }
  auto impl = std::make_unique<Impl>(options);
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  rocksdb::DB* db = nullptr;
  rocksdb::Status st = rocksdb::DB::Open(db_options, options.state_dir, &db);
  if (!st.ok()) {
    return absl::UnavailableError(
        absl::StrFormat("cannot open the state in %s: %s", options.state_dir, st.ToString()));
  }
  impl->db.reset(db);
  {
    absl::MutexLock lock(&impl->mu);
    std::string bytes;
    st = impl->db->Get(rocksdb::ReadOptions(), kStateKey, &bytes);
    if (st.ok()) {
      v1::CoordinatorState saved;
      if (!saved.ParseFromString(bytes)) {
        return absl::DataLossError(
            absl::StrFormat("the state in %s does not parse", options.state_dir));
      }
      if (absl::Status s = impl->state.Load(saved, absl::Now()); !s.ok()) return s;
      LogInfo("resumed at shard-map epoch %u with %u members", impl->state.map().epoch(),
              saved.members_size());
    } else if (!st.IsNotFound()) {
      return absl::UnavailableError(
          absl::StrFormat("cannot read the state in %s: %s", options.state_dir, st.ToString()));
    } else if (absl::Status s = impl->Persist(); !s.ok()) {
      return s;
    }
  }

  impl->registry = std::make_shared<prometheus::Registry>();
  auto gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(*impl->registry).Add({});
  };
  impl->epoch_gauge = gauge("tessera_coordinator_shard_map_epoch", "Epoch of the shard map.");
  impl->failovers_counter = &prometheus::BuildCounter()
                                 .Name("tessera_coordinator_failovers_total")
                                 .Help(
                                     "Primaries replaced by a backup since the cluster was "
                                     "created.")
                                 .Register(*impl->registry)
                                 .Add({});
  impl->alive_gauge = gauge("tessera_coordinator_servers_alive", "Servers holding a lease.");
  impl->lost_gauge = gauge("tessera_coordinator_shards_lost",
                           "Shards whose every LIVE replica died (restore a checkpoint).");
  impl->live_replicas = gauge("tessera_coordinator_replicas_live", "LIVE replicas, all shards.");
  impl->joining_replicas =
      gauge("tessera_coordinator_replicas_joining", "Replicas catching up, all shards.");
  impl->degraded_shards =
      gauge("tessera_coordinator_shards_degraded", "Shards with fewer LIVE replicas than R.");
  {
    absl::MutexLock lock(&impl->mu);
    impl->UpdateGauges();
  }
  if (options.metrics_port >= 0) {
    const std::string bind = absl::StrFormat("%s:%d", options.address, options.metrics_port);
    try {
      impl->exposer = std::make_unique<prometheus::Exposer>(bind, 1);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrFormat("cannot serve /metrics on %s: %s", bind, e.what()));
    }
    impl->exposer->RegisterCollectable(impl->registry);
    impl->exposer->RegisterCollectable(impl->process_collector);  // (held weakly: kept in impl)
    const std::vector<int> ports = impl->exposer->GetListeningPorts();
    impl->metrics_port = ports.empty() ? -1 : ports.front();
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string addr = absl::StrFormat("%s:%d", options.address, options.port);
  builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), &impl->port);
  builder.RegisterService(impl.get());
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot listen for gRPC on %s", addr));
  }
  impl->server->GetHealthCheckService()->SetServingStatus("tessera.v1.Coordinator", true);
  Impl* raw = impl.get();
  impl->lease_thread = std::thread([raw] { raw->LeaseLoop(); });
  LogInfo("coordinating %u shards x %u replicas on %s:%d (lease %d ms), metrics on port %d",
          c.num_shards, c.replication, options.address, impl->port,
          static_cast<int>(absl::ToInt64Milliseconds(c.lease)), impl->metrics_port);
  return std::unique_ptr<CoordinatorServer>(new CoordinatorServer(std::move(impl)));
}

int CoordinatorServer::port() const { return impl_->port; }
int CoordinatorServer::metrics_port() const { return impl_->metrics_port; }

void CoordinatorServer::Shutdown() {
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->stopping) return;
    impl_->stopping = true;
  }
  if (impl_->lease_thread.joinable()) impl_->lease_thread.join();
  {
    absl::MutexLock lock(&impl_->mu);
    for (auto& w : impl_->waiters) {
      w.reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator stopping"));
    }
    impl_->waiters.clear();
  }
  // Every other RPC here answers at once, under mu, so in-flight calls need microseconds. The
  // deadline still matters: with any client channel connected (even idle) gRPC 1.51's Shutdown
  // ran to it (measured: 2 s to stop with a deadline of 2 s, 80 ms with nothing connected).
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(250));
  impl_->server->Wait();
  StopExposer(impl_->exposer, impl_->options.address);
}

}  // namespace tessera
