#include "serving/serving_server.h"

#include <atomic>
#include <chrono>
#include <cstring>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/auth.h"
#include "common/logging.h"
#include "common/wire.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "serving.grpc.pb.h"
#include "serving/serving_store.h"
#include "serving/sources.h"
#include "serving/stream_codec.h"

namespace tessera::serving {
namespace {

namespace pb = tessera::serving::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  return s.ok() ? grpc::Status::OK
                : grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

double Staleness(const StoreStatus& s) {
  if (s.version == 0) return 0;
  return std::max(
      0.0, static_cast<double>(absl::ToUnixMillis(absl::Now()) - s.created_unix_ms) / 1000.0);
}

// Gauges read from the store when scraped.
class StoreCollector : public prometheus::Collectable {
 public:
  StoreCollector(const ServingStore* store, const Source* source)
      : store_(store), source_(source) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    const StoreStatus served = store_->Status();
    auto gauge = [](const char* name, const char* help, double v) {
      prometheus::MetricFamily f{name, help, prometheus::MetricType::Gauge, {}};
      prometheus::ClientMetric m;
      m.gauge.value = v;
      f.metric.push_back(m);
      return f;
    };
    auto counter = [](const char* name, const char* help, double v) {
      prometheus::MetricFamily f{name, help, prometheus::MetricType::Counter, {}};
      prometheus::ClientMetric m;
      m.counter.value = v;
      f.metric.push_back(m);
      return f;
    };
    std::vector<prometheus::MetricFamily> out;
    out.push_back(gauge("tessera_serving_version", "The version lookups are answered from.",
                        static_cast<double>(served.version)));
    out.push_back(gauge("tessera_serving_newest_version", "The newest version received.",
                        static_cast<double>(served.newest_version)));
    out.push_back(gauge("tessera_serving_staleness_seconds",
                        "Seconds since the served version's cut was taken (its checkpoint).",
                        Staleness(served)));
    out.push_back(gauge("tessera_serving_pinned", "1 while rolled back (pinned to a version).",
                        served.pinned ? 1 : 0));
    out.push_back(gauge("tessera_serving_memory_bytes",
                        "Bytes held by the kept versions' rows and deltas.",
                        static_cast<double>(store_->bytes())));
    out.push_back(counter("tessera_serving_versions_applied_total", "Versions applied.",
                          static_cast<double>(store_->applied_total())));
    out.push_back(counter("tessera_serving_versions_refused_total",
                          "Versions refused (a gap, a digest that differs, the memory limit).",
                          static_cast<double>(store_->refused_total())));
    out.push_back(counter("tessera_serving_source_errors_total",
                          "Failures reading the source (checkpoint directory or upstream).",
                          static_cast<double>(source_->errors_total())));
    prometheus::MetricFamily rows{"tessera_serving_table_rows",
                                  "Rows (dense: blocks) of each table at the served version.",
                                  prometheus::MetricType::Gauge,
                                  {}};
    for (const ServedTable& t : served.tables) {
      prometheus::ClientMetric m;
      m.gauge.value = static_cast<double>(t.rows);
      m.label = {{"table", t.config.name}};
      rows.metric.push_back(m);
    }
    out.push_back(std::move(rows));
    return out;
  }

 private:
  const ServingStore* store_;
  const Source* source_;
};

class ServingService final : public pb::Serving::Service {
 public:
  ServingService(ServingStore* store, const Source* source, const Authenticator* auth,
                 prometheus::Registry* registry)
      : store_(store), source_(source), auth_(auth) {
    auto& lookups = prometheus::BuildCounter()
                        .Name("tessera_serving_lookups_total")
                        .Help("Lookup and LookupDense calls, by result.")
                        .Register(*registry);
    lookups_ok_ = &lookups.Add({{"result", "ok"}});
    lookups_error_ = &lookups.Add({{"result", "error"}});
    keys_ = &prometheus::BuildCounter()
                 .Name("tessera_serving_lookup_keys_total")
                 .Help("Keys looked up.")
                 .Register(*registry)
                 .Add({});
    prometheus::Histogram::BucketBoundaries bounds;
    for (double b = 25e-6; b < 2; b *= 2) bounds.push_back(b);
    latency_ = &prometheus::BuildHistogram()
                    .Name("tessera_serving_lookup_seconds")
                    .Help("Time to answer a Lookup, from the request parsed to the response built.")
                    .Register(*registry)
                    .Add({}, bounds);
    subscribers_ = &prometheus::BuildGauge()
                        .Name("tessera_serving_subscribers")
                        .Help("Subscribe streams served now (replicas relaying from this one).")
                        .Register(*registry)
                        .Add({});
  }

  void Stop() { stopping_.store(true); }

  grpc::Status Lookup(grpc::ServerContext* ctx, const pb::LookupRequest* req,
                      pb::LookupResponse* resp) override {
    if (grpc::Status s = auth_->Check(*ctx, "/tessera.serving.v1.Serving/Lookup"); !s.ok()) {
      return s;
    }
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<LookupResult> r =
        store_->Lookup(req->table(), req->keys().data(), static_cast<size_t>(req->keys_size()),
                       req->version(), resp->mutable_values(), resp->mutable_found());
    return Finish(r, resp, start, static_cast<double>(req->keys_size()));
  }

  grpc::Status LookupDense(grpc::ServerContext* ctx, const pb::LookupDenseRequest* req,
                           pb::LookupDenseResponse* resp) override {
    if (grpc::Status s = auth_->Check(*ctx, "/tessera.serving.v1.Serving/LookupDense"); !s.ok()) {
      return s;
    }
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<LookupResult> r =
        store_->LookupDense(req->table(), req->version(), resp->mutable_values());
    return Finish(r, resp, start, 0);
  }

  grpc::Status Subscribe(grpc::ServerContext* ctx, const pb::SubscribeRequest* req,
                         grpc::ServerWriter<pb::SubscribeEvent>* writer) override {
    if (grpc::Status s = auth_->Check(*ctx, "/tessera.serving.v1.Serving/Subscribe"); !s.ok()) {
      return s;
    }
    subscribers_->Increment();
    struct Done {
      prometheus::Gauge* g;
      ~Done() { g->Decrement(); }
    } done{subscribers_};
    uint64_t held = req->from_version();
    const EventWriter write = [writer](const pb::SubscribeEvent& e) { return writer->Write(e); };
    while (!ctx->IsCancelled() && !stopping_.load()) {
      std::shared_ptr<const VersionDelta> full;
      std::vector<std::shared_ptr<const VersionDelta>> deltas = store_->DeltasAfter(held, &full);
      if (full != nullptr) {
        if (!WriteDelta(*full, write)) break;
        held = full->version;
        continue;
      }
      if (deltas.empty()) {
        store_->WaitNewer(held, absl::Seconds(1));
        // (Versions queued while this replica is pinned are not relayed until it resumes: a
        // heartbeat meanwhile.)
        if (store_->RecordedVersion() > held) continue;
        pb::SubscribeEvent beat;
        beat.mutable_heartbeat()->set_newest_version(store_->newest_version());
        if (!writer->Write(beat)) break;
        continue;
      }
      for (const auto& d : deltas) {
        if (!WriteDelta(*d, write)) return grpc::Status::OK;
        held = d->version;
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status GetServingStatus(grpc::ServerContext* ctx, const pb::GetServingStatusRequest*,
                                pb::ServingStatus* resp) override {
    if (grpc::Status s = auth_->Check(*ctx, "/tessera.serving.v1.Serving/GetServingStatus");
        !s.ok()) {
      return s;
    }
    const StoreStatus served = store_->Status();
    resp->set_newest_version(served.newest_version);
    for (uint64_t v : served.kept_versions) resp->add_held_versions(v);
    resp->set_pinned(served.pinned);
    resp->set_bytes(static_cast<uint64_t>(std::max<int64_t>(0, store_->bytes())));
    resp->set_source(source_->Describe());
    resp->set_last_error(source_->last_error());
    resp->set_version(served.version);
    resp->set_version_created_unix_ms(served.created_unix_ms);
    resp->set_staleness_seconds(Staleness(served));
    for (const ServedTable& t : served.tables) {
      pb::ServedTable* out = resp->add_tables();
      out->set_name(t.config.name);
      const bool sparse = t.config.kind == TableKind::kSparse;
      out->set_kind(sparse ? tessera::v1::TABLE_KIND_SPARSE : tessera::v1::TABLE_KIND_DENSE);
      out->set_dim(sparse ? t.config.dim : 0);
      out->set_dense_size(t.config.dense_size);
      out->set_rows(t.rows);
      out->set_digest(t.digest);
    }
    return grpc::Status::OK;
  }

  grpc::Status Rollback(grpc::ServerContext* ctx, const pb::RollbackRequest* req,
                        pb::RollbackResponse* resp) override {
    if (grpc::Status s = auth_->Check(*ctx, "/tessera.serving.v1.Serving/Rollback"); !s.ok()) {
      return s;
    }
    if (absl::Status s = store_->Rollback(req->version()); !s.ok()) return ToGrpc(s);
    LogInfo("rolled back to version %u (pinned until Resume)", req->version());
    resp->set_version(req->version());
    return grpc::Status::OK;
  }

  grpc::Status Resume(grpc::ServerContext* ctx, const pb::ResumeRequest*,
                      pb::RollbackResponse* resp) override {
    if (grpc::Status s = auth_->Check(*ctx, "/tessera.serving.v1.Serving/Resume"); !s.ok()) {
      return s;
    }
    absl::StatusOr<uint64_t> v = store_->Resume();
    if (!v.ok()) return ToGrpc(v.status());
    resp->set_version(*v);
    LogInfo("resumed at version %u", resp->version());
    return grpc::Status::OK;
  }

 private:
  template <typename Resp>
  grpc::Status Finish(const absl::StatusOr<LookupResult>& r, Resp* resp,
                      std::chrono::steady_clock::time_point start, double keys) {
    if (!r.ok()) {
      lookups_error_->Increment();
      resp->Clear();
      return ToGrpc(r.status());
    }
    resp->set_version(r->version);
    if constexpr (std::is_same_v<Resp, pb::LookupResponse>) resp->set_dim(r->dim);
    lookups_ok_->Increment();
    keys_->Increment(keys);
    latency_->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return grpc::Status::OK;
  }

  ServingStore* const store_;
  const Source* const source_;
  const Authenticator* const auth_;
  std::atomic<bool> stopping_{false};
  prometheus::Counter* lookups_ok_;
  prometheus::Counter* lookups_error_;
  prometheus::Counter* keys_;
  prometheus::Histogram* latency_;
  prometheus::Gauge* subscribers_;
};

}  // namespace

struct ServingServer::Impl {
  std::unique_ptr<ServingStore> store;
  std::unique_ptr<Authenticator> auth;
  std::unique_ptr<TlsMaterial> tls;
  std::unique_ptr<Source> source;
  std::shared_ptr<prometheus::Registry> registry;
  std::shared_ptr<StoreCollector> collector;
  std::unique_ptr<MetricsServer> metrics_server;
  std::unique_ptr<ServingService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  int port = 0;
  int metrics_port = -1;
  absl::Mutex mu;
  bool shut_down ABSL_GUARDED_BY(mu) = false;
};

absl::StatusOr<std::unique_ptr<ServingServer>> ServingServer::Start(
    const ServingServerOptions& options) {
  if (options.checkpoint_dir.empty() == options.upstream.empty()) {
    return absl::InvalidArgumentError(
        "a serving replica needs exactly one source: --checkpoint_dir (a root relay) or "
        "--upstream (another serving replica)");
  }
  auto impl = std::make_unique<Impl>();
  impl->store = std::make_unique<ServingStore>(
      StoreOptions{.keep_versions = options.keep_versions,
                   .max_memory_bytes = options.max_memory_bytes,
                   .max_response_bytes = options.max_response_bytes});
  absl::StatusOr<std::unique_ptr<Authenticator>> auth =
      Authenticator::Create(options.auth_token_file);
  if (!auth.ok()) return auth.status();
  impl->auth = *std::move(auth);
  absl::StatusOr<std::unique_ptr<TlsMaterial>> tls = TlsMaterial::Create(options.tls);
  if (!tls.ok()) return tls.status();
  impl->tls = *std::move(tls);
  impl->registry = std::make_shared<prometheus::Registry>();
  ExportAuthMetrics(*impl->auth, *impl->registry);

  absl::StatusOr<std::unique_ptr<Source>> source;
  if (!options.checkpoint_dir.empty()) {
    source = StartDirectorySource({.checkpoint_dir = options.checkpoint_dir,
                                   .poll_ms = options.poll_ms,
                                   .apply_nice = options.apply_nice},
                                  impl->store.get());
  } else {
    UpstreamSourceOptions u;
    u.addresses = options.upstream;
    u.timeout_ms = options.upstream_timeout_ms;
    u.apply_nice = options.apply_nice;
    u.credentials.tls_ca_file = options.tls.ca_file;
    if (!options.tls.ca_file.empty()) {
      u.credentials.tls_cert_file = options.tls.cert_file;
      u.credentials.tls_key_file = options.tls.key_file;
    }
    u.credentials.auth_token = impl->auth->OutgoingToken(kRoleServer);
    source = StartUpstreamSource(u, impl->store.get());
  }
  if (!source.ok()) return source.status();
  impl->source = *std::move(source);
  impl->service = std::make_unique<ServingService>(impl->store.get(), impl->source.get(),
                                                   impl->auth.get(), impl->registry.get());
  impl->collector = std::make_shared<StoreCollector>(impl->store.get(), impl->source.get());
  if (options.metrics_port >= 0) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> metrics = MetricsServer::Start(
        options.metrics_address, options.metrics_port, options.metrics_security);
    if (!metrics.ok()) return metrics.status();
    impl->metrics_server = *std::move(metrics);
    impl->metrics_server->exposer().RegisterCollectable(impl->registry);
    impl->metrics_server->exposer().RegisterCollectable(impl->collector);
    impl->metrics_port = impl->metrics_server->port();
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string addr = absl::StrFormat("%s:%d", options.address, options.port);
  builder.AddListeningPort(addr, impl->tls->ServerCredentials(), &impl->port);
  builder.RegisterService(impl->service.get());
  builder.SetMaxReceiveMessageSize(options.max_request_bytes);
  builder.SetMaxSendMessageSize(-1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4 << 20);
  impl->grpc_server = builder.BuildAndStart();
  if (impl->grpc_server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot listen for gRPC on %s", addr));
  }
  impl->grpc_server->GetHealthCheckService()->SetServingStatus(true);
  LogInfo("serving lookups on %s:%d, metrics on port %d; versions from %s", options.address,
          impl->port, impl->metrics_port, impl->source->Describe());
  return std::unique_ptr<ServingServer>(new ServingServer(std::move(impl)));
}

ServingServer::ServingServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ServingServer::~ServingServer() { Shutdown(); }

int ServingServer::port() const { return impl_->port; }
int ServingServer::metrics_port() const { return impl_->metrics_port; }

absl::Status ServingServer::ReloadCredentials() {
  absl::Status tokens = impl_->auth->Reload();
  absl::Status tls = impl_->tls->Reload();
  return tokens.ok() ? tls : tokens;
}

void ServingServer::Shutdown() {
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  impl_->grpc_server->GetHealthCheckService()->SetServingStatus(false);
  impl_->service->Stop();
  impl_->grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  impl_->source.reset();
}

}  // namespace tessera::serving
