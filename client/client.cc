// Connection setup, table management and the blocking wrappers. The data path is in
// client_data.cc.
#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "client/internal/client_impl.h"
#include "client/internal/rpc.h"
#include "common/byte_stream.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "common/wire.h"

namespace tessera {

namespace client_internal {

uint64_t PushWindow::Issue() {
  absl::MutexLock lock(&mu_);
  const uint64_t seq = next_++;
  in_flight_.insert(seq);
  return seq;
}

uint64_t PushWindow::Floor() const {
  absl::MutexLock lock(&mu_);
  return in_flight_.empty() ? next_ : *in_flight_.begin();
}

void PushWindow::Settle(uint64_t sequence) {
  absl::MutexLock lock(&mu_);
  in_flight_.erase(sequence);
}

void OpTracker::Finish(const absl::Status& status) {
  if (!status.ok()) {
    absl::MutexLock lock(&mu_);
    if (status_.ok()) status_ = status;
  }
  if (pending_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  absl::Status final_status;
  {
    absl::MutexLock lock(&mu_);
    final_status = status_;
  }
  done_(std::move(final_status));
}

}  // namespace client_internal

using client_internal::Endpoint;
using client_internal::ServerConn;

void Client::Impl::RpcStarted() {
  absl::MutexLock lock(&calls_mu);
  ++active_rpcs;
}

void Client::Impl::RpcEnded() {
  absl::MutexLock lock(&calls_mu);
  --active_rpcs;
}

void Client::Impl::WaitForRpcs() {
  absl::MutexLock lock(&calls_mu);
  calls_mu.Await(absl::Condition(
      +[](int64_t* n) { return *n == 0; }, &active_rpcs));
}

absl::Status Client::Impl::Annotate(uint32_t shard, const absl::Status& status) const {
  return absl::Status(status.code(),
                      absl::StrFormat("server %s (shard %u): %s",
                                      servers[shard]->Current() ? servers[shard]->Current()->address
                                                                : std::string("(none)"),
                                      shard, status.message()));
}

int64_t Client::Impl::AttemptTimeoutMs() const {
  return coordinated() ? std::min(options.rpc_timeout_ms, options.coordinated_attempt_timeout_ms)
                       : options.rpc_timeout_ms;
}

bool Client::Impl::MayRetry(int attempt, absl::Time first_attempt) const {
  if (attempt < options.max_attempts) return true;
  return coordinated() &&
         absl::Now() - first_attempt < absl::Milliseconds(options.retry_timeout_ms);
}

absl::Status Client::Impl::CallShard(uint32_t shard, const BlockingCall& call) {
  const absl::Time start = absl::Now();
  for (int attempt = 1;; ++attempt) {
    std::shared_ptr<Endpoint> endpoint = servers[shard]->Current();
    if (endpoint == nullptr) {
      if (std::string down = servers[shard]->Down(); !down.empty()) {
        return absl::UnavailableError(down);  // LOST or RESTORING: fail fast
      }
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(AttemptTimeoutMs()));
    const grpc::Status st = endpoint != nullptr ? call(endpoint->NextStub(), &ctx)
                                                : grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                                               "the shard has no primary");
    if (st.ok()) return absl::OkStatus();
    const bool retryable = endpoint == nullptr || Retryable(st, ctx);
    if (retryable) RequestRefresh();
    if (!retryable || !MayRetry(attempt, start)) return FromGrpcStatus(st);
    retries.fetch_add(1, std::memory_order_relaxed);
    absl::SleepFor(absl::FromChrono(client_internal::Backoff(*this, attempt + 1)));
  }
}

absl::StatusOr<TableConfig> Client::Impl::GetTable(absl::string_view name) {
  {
    absl::MutexLock lock(&tables_mu);
    auto it = tables.find(name);
    if (it != tables.end()) return it->second;
  }
  // Every shard holds every table's config: ask them in turn until one answers (a LOST shard
  // fails at once, so this costs nothing while other shards serve).
  v1::DescribeTableRequest req;
  req.set_table(std::string(name));
  v1::DescribeTableResponse resp;
  absl::Status s;
  uint32_t shard = 0;
  for (; shard < servers.size(); ++shard) {
    s = CallShard(shard, [&](v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx) {
      FillHeader(req.mutable_header());
      return stub->DescribeTable(ctx, req, &resp);
    });
    if (s.ok() || s.code() != absl::StatusCode::kUnavailable) break;
  }
  if (!s.ok()) return Annotate(std::min<uint32_t>(shard, servers.size() - 1), s);
  absl::StatusOr<TableConfig> config = TableConfigFromProto(resp.info().spec());
  if (!config.ok()) return Annotate(shard, config.status());
  absl::MutexLock lock(&tables_mu);
  tables[config->name] = *config;
  return config;
}

void Client::Impl::ForgetTable(absl::string_view name) {
  absl::MutexLock lock(&tables_mu);
  tables.erase(name);
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() {
  impl_->WaitForRpcs();
  impl_->StopRefresher();
}

namespace client_internal {

Endpoint::Endpoint(const std::string& addr, const ClientOptions& options)
    : address(addr), token(options.credentials.auth_token) {
  for (int c = 0; c < options.channels_per_server; ++c) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    // Separate subchannel pools (and a distinct arg) give each channel its own TCP
    // connection, so chunks travel in parallel.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("tessera.channel_index", c);
    // Reconnect about as fast as calls retry, so that a restarted server is found quickly.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::max(options.initial_backoff_ms, 20));
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, std::max(options.initial_backoff_ms, 20));
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, std::max(options.max_backoff_ms, 20));
    auto channel = MakeChannel(address, options.credentials, args);
    stubs.push_back(v1::ParameterServer::NewStub(channel));
    generic_stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
  }
  if (options.data_plane && !options.credentials.tls_ca_file.empty()) {
    // (unusable files were refused by Connect; a context that fails here: gRPC only)
    absl::StatusOr<std::shared_ptr<SSL_CTX>> ctx = ClientTlsContext(options.credentials);
    if (ctx.ok()) tls = *std::move(ctx);
  }
  if (options.data_plane && (options.credentials.tls_ca_file.empty() || tls != nullptr)) {
    const int timeout_ms = static_cast<int>(std::clamp<int64_t>(options.rpc_timeout_ms, 1, 2000));
    const int connections = std::max(1, options.data_connections_per_server);
    data_thread =
        std::thread([this, connections, timeout_ms] { DataLoop(connections, timeout_ms); });
  }
}

Endpoint::~Endpoint() {
  StopData("the client is closing");
  if (data_thread.joinable()) data_thread.join();
}

std::shared_ptr<DataConn> Endpoint::Data() {
  absl::MutexLock lock(&data_mu);
  if (data.empty()) return nullptr;
  const std::shared_ptr<DataConn>& d = data[next_data++ % data.size()];
  return d->broken() ? nullptr : d;
}

bool Endpoint::DataBroken() const {
  for (const auto& d : data) {
    if (d->broken()) return true;
  }
  return false;
}

void Endpoint::StopData(const std::string& why) {
  absl::MutexLock lock(&data_mu);
  data_stop = true;
  if (data_query != nullptr) data_query->TryCancel();
  for (const auto& d : data) d->Close(why);
}

namespace {

// The host part of a "host:port" address ("[v6]:port" too); empty when it is not one.
std::string HostOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || address.find('/') != std::string::npos) {
    return "";
  }
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host;
}

}  // namespace

void Endpoint::DataLoop(int connections, int timeout_ms) {
  const std::string host = HostOf(address);
  if (host.empty()) return;
  for (;;) {
    {
      absl::MutexLock lock(&data_mu);
      if (data_stop) return;
    }
    // Asks for the port every time: a server restarted at the same address has a new one.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    {
      absl::MutexLock lock(&data_mu);
      if (data_stop) return;
      data_query = &ctx;
    }
    v1::GetDataPlaneResponse resp;
    const grpc::Status s = stubs[0]->GetDataPlane(&ctx, v1::GetDataPlaneRequest(), &resp);
    {
      absl::MutexLock lock(&data_mu);
      data_query = nullptr;
    }
    // A server without a data plane (or from before it): gRPC only, for good.
    if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED || (s.ok() && resp.port() == 0)) return;
    std::vector<std::shared_ptr<DataConn>> conns;
    for (int i = 0; s.ok() && i < connections; ++i) {
      absl::StatusOr<std::shared_ptr<DataConn>> conn =
          DataConn::Open(host, static_cast<int>(resp.port()), timeout_ms, token, tls.get());
      if (!conn.ok()) break;
      conns.push_back(*std::move(conn));
    }
    absl::MutexLock lock(&data_mu);
    // The healthy old connections finish the calls they carry (a draining server answers
    // them; closing would fail them); the broken ones already failed theirs.
    for (const auto& d : data) d->Retire("replaced by new connections");
    data.clear();
    if (static_cast<int>(conns.size()) == connections && !data_stop) {
      data = std::move(conns);
    } else {
      for (const auto& d : conns) d->Close("the endpoint is closing");
    }
    // Wait for a break (checked every second), or the end.
    do {
      data_mu.AwaitWithTimeout(absl::Condition(&data_stop), absl::Seconds(1));
    } while (!data_stop && !data.empty() && !DataBroken());
  }
}

void Endpoint::Register(grpc::ClientContext* ctx) {
  absl::MutexLock lock(&calls_mu);
  calls.insert(ctx);
  if (retired) ctx->TryCancel();
}

void Endpoint::Unregister(grpc::ClientContext* ctx) {
  absl::MutexLock lock(&calls_mu);
  calls.erase(ctx);
}

void Endpoint::Retire() {
  StopData("the shard's primary moved");  // calls in flight there retry at the new one
  absl::MutexLock lock(&calls_mu);
  retired = true;
  for (grpc::ClientContext* ctx : calls) ctx->TryCancel();
}

}  // namespace client_internal

namespace client_internal {

int64_t RetryAfterMs(const grpc::ClientContext& ctx) {
  const auto& md = ctx.GetServerTrailingMetadata();
  auto it = md.find(kRetryAfterMetadataKey);
  int64_t ms = 0;
  if (it == md.end() ||
      !absl::SimpleAtoi(absl::string_view(it->second.data(), it->second.size()), &ms)) {
    return 0;
  }
  return std::clamp<int64_t>(ms, 0, 60000);
}

}  // namespace client_internal

bool Client::Impl::Retryable(const grpc::Status& status, const grpc::ClientContext& ctx) const {
  const auto& md = ctx.GetServerTrailingMetadata();
  return Retryable(status, md.find(kRerouteMetadataKey) != md.end(),
                   client_internal::RetryAfterMs(ctx));
}

bool Client::Impl::Retryable(const grpc::Status& status, bool reroute,
                             int64_t retry_after_ms) const {
  // A refusal for a call limit (docs/security.md, "Abuse limits") says when to come back.
  if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED && retry_after_ms > 0) {
    return true;
  }
  // CANCELLED is what gRPC reports for a call cut off by a server shutting down (this client
  // never cancels its own calls); like UNAVAILABLE it is safe to retry: pulls are idempotent
  // and a retried push keeps its sequence number. A routing refusal carries kRerouteMetadataKey.
  // With a coordinator an attempt that timed out is retried too: its server may be stalled
  // and replaced.
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::CANCELLED ||
      (coordinated() && status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)) {
    return true;
  }
  return status.error_code() == grpc::StatusCode::FAILED_PRECONDITION && reroute;
}

namespace {

// Why a LOST or RESTORING shard serves nothing, for the calls that fail at once.
std::string ShardDownMessage(int shard, const v1::ShardReplicas& s,
                             const std::string& coordinator) {
  if (s.state() == v1::SHARD_STATE_RESTORING) {
    return absl::StrFormat(
        "shard %d is RESTORING: an operator is restoring it from a checkpoint onto %s; retry "
        "once it serves",
        shard, s.replicas().empty() ? std::string("a new server") : s.replicas(0).address());
  }
  return absl::StrFormat(
      "shard %d is LOST: no replica holding its data is alive; it serves nothing until one "
      "returns or a checkpoint is restored (`tessera status --coordinator=%s` says how)",
      shard, coordinator);
}

}  // namespace

void Client::Impl::RequestRefresh() {
  if (!coordinated()) return;
  absl::MutexLock lock(&refresh_mu);
  refresh_wanted = true;
}

absl::Status Client::Impl::FetchMap(bool require_complete) {
  v1::GetClusterMapRequest req;
  v1::GetClusterMapResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (absl::Status s = FromGrpcStatus(coordinator->GetClusterMap(&ctx, req, &resp)); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrFormat("coordinator %s: %s", options.coordinator, s.message()));
  }
  const v1::ClusterMap& m = resp.map();
  if (m.shards_size() != static_cast<int>(map.num_shards()) ||
      m.num_vshards() != map.num_vshards()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the coordinator's map has %d shards and %u vshards; this client routes with %u and %u",
        m.shards_size(), m.num_vshards(), map.num_shards(), map.num_vshards()));
  }
  for (int s = 0; s < m.shards_size(); ++s) {
    const v1::ShardReplicas& shard = m.shards(s);
    if (shard.lost()) {
      servers[s]->MarkDown(ShardDownMessage(s, shard, options.coordinator));
      continue;
    }
    if (shard.replicas().empty()) {
      if (require_complete) {
        return absl::UnavailableError(absl::StrFormat("shard %d has no server yet", s));
      }
      continue;
    }
    const std::string& primary = shard.replicas(0).address();
    if (servers[s]->Current() == nullptr || servers[s]->Current()->address != primary) {
      servers[s]->Replace(std::make_shared<client_internal::Endpoint>(primary, options));
    }
  }
  uint64_t old = epoch.load();
  while (old < m.epoch() && !epoch.compare_exchange_weak(old, m.epoch())) {
  }
  return absl::OkStatus();
}

void Client::Impl::RefreshLoop() {
  while (true) {
    {
      absl::MutexLock lock(&refresh_mu);
      auto wanted = [this]() ABSL_SHARED_LOCKS_REQUIRED(refresh_mu) {
        return refresh_wanted || stopping;
      };
      // While calls are in flight the map is also fetched every 500 ms: a call to a stalled
      // primary fails no faster than its deadline, and the map tells of its replacement.
      if (!refresh_mu.AwaitWithTimeout(absl::Condition(&wanted), absl::Milliseconds(500))) {
        refresh_mu.Unlock();
        bool busy;
        {
          absl::MutexLock calls(&calls_mu);
          busy = active_rpcs > 0;
        }
        refresh_mu.Lock();
        if (!busy && !refresh_wanted && !stopping) continue;
      }
      if (stopping) return;
      refresh_wanted = false;
    }
    (void)FetchMap(/*require_complete=*/false);  // on failure the next retry asks again
    absl::SleepFor(absl::Milliseconds(20));      // at most one fetch per 20 ms
  }
}

void Client::Impl::StopRefresher() {
  {
    absl::MutexLock lock(&refresh_mu);
    stopping = true;
  }
  if (refresher.joinable()) refresher.join();
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (absl::Status s = CheckCredentials(options.credentials); !s.ok()) return s;
  if (options.servers.empty() && options.coordinator.empty()) {
    return absl::InvalidArgumentError(
        "ClientOptions: set `coordinator`, or name every shard's server in `servers`");
  }
  if (options.channels_per_server < 1 || options.max_attempts < 1 || options.chunk_bytes < 64) {
    return absl::InvalidArgumentError(
        "ClientOptions: channels_per_server and max_attempts must be >= 1, chunk_bytes >= 64");
  }
  uint32_t num_shards = static_cast<uint32_t>(options.servers.size());
  uint64_t epoch = options.shard_map_epoch;
  std::unique_ptr<v1::Coordinator::Stub> coordinator;
  if (!options.coordinator.empty()) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    coordinator =
        v1::Coordinator::NewStub(MakeChannel(options.coordinator, options.credentials, args));
    v1::GetClusterMapRequest req;
    v1::GetClusterMapResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(options.connect_timeout_ms));
    ctx.set_wait_for_ready(true);
    if (absl::Status s = FromGrpcStatus(coordinator->GetClusterMap(&ctx, req, &resp)); !s.ok()) {
      return absl::Status(s.code(), absl::StrFormat("cannot reach the coordinator %s: %s",
                                                    options.coordinator, s.message()));
    }
    num_shards = resp.map().num_shards();
    epoch = 0;  // set by the first FetchMap below
    if (options.num_vshards != resp.map().num_vshards()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("the cluster has %u vshards; ClientOptions.num_vshards is %u",
                          resp.map().num_vshards(), options.num_vshards));
    }
  }
  absl::StatusOr<ShardMap> map =
      ShardMap::Uniform(std::max<uint64_t>(epoch, 1), num_shards, options.num_vshards);
  if (!map.ok()) return map.status();
  auto impl = std::make_unique<Impl>(std::move(*map));
  impl->options = options;
  if (impl->options.data_connections_per_server <= 0) {
    // About 16 connections in all: a chunk per connection in flight (docs/data_plane.md).
    impl->options.data_connections_per_server =
        static_cast<int>(std::clamp<uint32_t>(16 / std::max<uint32_t>(num_shards, 1), 1, 8));
  }
  impl->client_id = options.client_id;
  impl->epoch = epoch;
  impl->coordinator = std::move(coordinator);
  while (impl->client_id == 0) {
    std::random_device rd;
    impl->client_id = (uint64_t{rd()} << 32) ^ rd();
  }
  for (uint32_t s = 0; s < num_shards; ++s) {
    impl->servers.push_back(std::make_unique<ServerConn>(
        impl->coordinated() ? nullptr
                            : std::make_shared<Endpoint>(options.servers[s], impl->options)));
  }
  if (impl->coordinated()) {
    // Wait until every shard has a primary (servers register as they start).
    const absl::Time deadline = absl::Now() + absl::Milliseconds(options.connect_timeout_ms);
    absl::Status s;
    while (!(s = impl->FetchMap(/*require_complete=*/true)).ok() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("the cluster is not ready: ", s.message()));
    }
    Impl* raw = impl.get();
    impl->refresher = std::thread([raw] { raw->RefreshLoop(); });
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

uint64_t Client::client_id() const { return impl_->client_id; }
absl::StatusOr<TableConfig> Client::GetTableConfig(absl::string_view name) {
  return impl_->GetTable(name);
}
const ShardMap& Client::shard_map() const { return impl_->map; }
uint64_t Client::duplicate_acks() const { return impl_->duplicate_acks.load(); }
uint64_t Client::retries() const { return impl_->retries.load(); }

namespace {

// Runs `call(shard)` for every server in turn (table management is rare and blocking) and
// stops at the first error, naming the server.
template <typename Fn>
absl::Status ForEachServer(const Client::Impl& impl, Fn&& call) {
  for (uint32_t s = 0; s < impl.servers.size(); ++s) {
    if (absl::Status st = call(s); !st.ok()) return impl.Annotate(s, st);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TableConfig> Client::CreateTable(const TableConfig& config) {
  absl::StatusOr<TableConfig> resolved = ResolveTableConfig(config);  // fail fast, locally
  if (!resolved.ok()) return resolved.status();
  v1::CreateTableRequest req;
  TableConfigToProto(config, req.mutable_spec());
  absl::Status s = ForEachServer(*impl_, [&](uint32_t shard) {
    v1::CreateTableResponse resp;
    return impl_->CallShard(shard, [&](v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx) {
      impl_->FillHeader(req.mutable_header());
      return stub->CreateTable(ctx, req, &resp);
    });
  });
  if (!s.ok()) return s;
  absl::MutexLock lock(&impl_->tables_mu);
  impl_->tables[resolved->name] = *resolved;
  return resolved;
}

absl::Status Client::DropTable(absl::string_view name) {
  impl_->ForgetTable(name);
  v1::DropTableRequest req;
  req.set_table(std::string(name));
  return ForEachServer(*impl_, [&](uint32_t shard) {
    v1::DropTableResponse resp;
    int attempts = 0;
    absl::Status st =
        impl_->CallShard(shard, [&](v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx) {
          ++attempts;
          impl_->FillHeader(req.mutable_header());
          return stub->DropTable(ctx, req, &resp);
        });
    // A retried drop whose first attempt was applied finds the table gone.
    if (st.code() == absl::StatusCode::kNotFound && attempts > 1) return absl::OkStatus();
    return st;
  });
}

namespace {

absl::Status AddInfo(const v1::TableInfo& info, TableStatus* status) {
  absl::StatusOr<TableConfig> config = TableConfigFromProto(info.spec());
  if (!config.ok()) return config.status();
  status->config = *std::move(config);
  status->rows += info.rows();
  status->bytes += info.bytes();
  status->evicted_ttl += info.evicted_ttl();
  status->evicted_capacity += info.evicted_capacity();
  status->evicted_memory += info.evicted_memory();
  status->would_evict += info.would_evict();
  status->demoted += info.demoted();
  status->promoted += info.promoted();
  status->disk_rows += info.disk_rows();
  status->disk_bytes += info.disk_bytes();
  const auto& ages = info.update_age_quantiles_s();
  status->update_age_quantiles_s.resize(
      std::max<size_t>(status->update_age_quantiles_s.size(), static_cast<size_t>(ages.size())));
  for (int i = 0; i < ages.size(); ++i) {
    status->update_age_quantiles_s[i] = std::max(status->update_age_quantiles_s[i], ages[i]);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TableStatus> Client::DescribeTable(absl::string_view name, bool digests) {
  v1::DescribeTableRequest req;
  req.set_table(std::string(name));
  req.set_digest(digests);
  TableStatus status;
  if (digests) status.digests.resize(impl_->servers.size());
  absl::Status s = ForEachServer(*impl_, [&](uint32_t shard) {
    v1::DescribeTableResponse resp;
    absl::Status st =
        impl_->CallShard(shard, [&](v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx) {
          impl_->FillHeader(req.mutable_header());
          return stub->DescribeTable(ctx, req, &resp);
        });
    if (st.ok() && digests) status.digests[shard] = resp.info().digest();
    return st.ok() ? AddInfo(resp.info(), &status) : st;
  });
  if (!s.ok()) return s;
  return status;
}

absl::StatusOr<std::vector<TableStatus>> Client::ListTables() {
  v1::ListTablesRequest req;
  std::vector<TableStatus> tables;
  absl::Status s = ForEachServer(*impl_, [&](uint32_t shard) {
    v1::ListTablesResponse resp;
    absl::Status st =
        impl_->CallShard(shard, [&](v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx) {
          impl_->FillHeader(req.mutable_header());
          return stub->ListTables(ctx, req, &resp);
        });
    if (!st.ok()) return st;
    if (shard == 0) tables.resize(resp.tables_size());
    if (static_cast<size_t>(resp.tables_size()) != tables.size()) {
      return absl::FailedPreconditionError(
          "servers disagree on the set of tables (a create or drop is in progress or failed)");
    }
    for (int i = 0; i < resp.tables_size(); ++i) {
      if (shard > 0 && resp.tables(i).spec().name() != tables[i].config.name) {
        return absl::FailedPreconditionError(
            absl::StrFormat("servers disagree on the set of tables: '%s' vs '%s'",
                            resp.tables(i).spec().name(), tables[i].config.name));
      }
      if (absl::Status a = AddInfo(resp.tables(i), &tables[i]); !a.ok()) return a;
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return tables;
}

namespace {

template <typename AsyncFn>
absl::Status Blocking(AsyncFn&& start) {
  auto [call, done] = Call::Pending();
  start(std::move(done));
  return call.Wait();
}

}  // namespace

absl::Status Client::PullSparse(absl::string_view table, absl::Span<const uint64_t> keys,
                                absl::Span<float> out) {
  return Blocking([&](StatusCallback cb) { PullSparseAsync(table, keys, out, std::move(cb)); });
}
absl::Status Client::PushSparse(absl::string_view table, absl::Span<const uint64_t> keys,
                                absl::Span<const float> values, const PushOptions& options) {
  return Blocking(
      [&](StatusCallback cb) { PushSparseAsync(table, keys, values, std::move(cb), options); });
}
absl::Status Client::PullDense(absl::string_view table, uint64_t offset, absl::Span<float> out) {
  return Blocking([&](StatusCallback cb) { PullDenseAsync(table, offset, out, std::move(cb)); });
}
absl::Status Client::PushDense(absl::string_view table, uint64_t offset,
                               absl::Span<const float> values, const PushOptions& options) {
  return Blocking(
      [&](StatusCallback cb) { PushDenseAsync(table, offset, values, std::move(cb), options); });
}

absl::StatusOr<uint64_t> Client::RemoveRows(absl::string_view table,
                                            absl::Span<const uint64_t> keys) {
  return RemoveRowsFor(table, keys, v1::REMOVE_REASON_UNSPECIFIED);
}

absl::StatusOr<uint64_t> Client::DemoteRows(absl::string_view table,
                                            absl::Span<const uint64_t> keys) {
  return RemoveRowsFor(table, keys, v1::REMOVE_REASON_DEMOTE);
}

absl::StatusOr<uint64_t> Client::RemoveRowsFor(absl::string_view table,
                                               absl::Span<const uint64_t> keys, int reason) {
  const ShardMap& map = shard_map();
  std::vector<std::vector<uint64_t>> by_shard(map.num_shards());
  for (uint64_t k : keys) by_shard[map.ShardOfKey(k)].push_back(k);
  constexpr size_t kPerRequest = 65536;  // (well within a server's key limit)
  uint64_t removed = 0;
  for (uint32_t shard = 0; shard < by_shard.size(); ++shard) {
    const std::vector<uint64_t>& mine = by_shard[shard];
    for (size_t i = 0; i < mine.size(); i += kPerRequest) {
      const size_t n = std::min(kPerRequest, mine.size() - i);
      v1::RemoveRowsRequest req;
      req.set_table(std::string(table));
      req.set_key_type(v1::KEY_TYPE_UINT64);
      req.set_num_keys(n);
      req.set_keys(reinterpret_cast<const char*>(mine.data() + i), n * sizeof(uint64_t));
      req.set_reason(static_cast<v1::RemoveReason>(reason));
      v1::RemoveRowsResponse resp;
      absl::Status st =
          impl_->CallShard(shard, [&](v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx) {
            impl_->FillHeader(req.mutable_header());
            return stub->RemoveRows(ctx, req, &resp);
          });
      if (!st.ok()) return st;
      removed += resp.rows();
    }
  }
  return removed;
}

absl::Status Client::ApplyStep(absl::string_view table, uint64_t step, float scale) {
  v1::ApplyStepRequest req;
  req.set_table(std::string(table));
  req.set_step(step);
  req.set_scale(scale);
  return ForEachServer(*impl_, [&](uint32_t shard) {
    v1::ApplyStepResponse resp;
    return impl_->CallShard(shard, [&](v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx) {
      impl_->FillHeader(req.mutable_header());
      return stub->ApplyStep(ctx, req, &resp);
    });
  });
}

}  // namespace tessera
