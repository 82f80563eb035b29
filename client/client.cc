// Connection setup, table management and the blocking wrappers. The data path is in
// client_data.cc.
#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <random>

#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "client/internal/client_impl.h"
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
                      absl::StrFormat("server %s (shard %u): %s", servers[shard]->address, shard,
                                      status.message()));
}

namespace {

grpc::ClientContext* WithDeadline(grpc::ClientContext* ctx, int64_t timeout_ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  return ctx;
}

}  // namespace

absl::StatusOr<TableConfig> Client::Impl::GetTable(absl::string_view name) {
  {
    absl::MutexLock lock(&tables_mu);
    auto it = tables.find(name);
    if (it != tables.end()) return it->second;
  }
  v1::DescribeTableRequest req;
  FillHeader(req.mutable_header());
  req.set_table(std::string(name));
  v1::DescribeTableResponse resp;
  grpc::ClientContext ctx;
  absl::Status s = FromGrpcStatus(servers[0]->NextStub()->DescribeTable(
      WithDeadline(&ctx, options.rpc_timeout_ms), req, &resp));
  if (!s.ok()) return Annotate(0, s);
  absl::StatusOr<TableConfig> config = TableConfigFromProto(resp.info().spec());
  if (!config.ok()) return Annotate(0, config.status());
  absl::MutexLock lock(&tables_mu);
  tables[config->name] = *config;
  return config;
}

void Client::Impl::ForgetTable(absl::string_view name) {
  absl::MutexLock lock(&tables_mu);
  tables.erase(name);
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() { impl_->WaitForRpcs(); }

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.servers.empty()) {
    return absl::InvalidArgumentError("ClientOptions.servers is empty: name at least one server");
  }
  if (options.channels_per_server < 1 || options.max_attempts < 1 || options.chunk_bytes < 64) {
    return absl::InvalidArgumentError(
        "ClientOptions: channels_per_server and max_attempts must be >= 1, chunk_bytes >= 64");
  }
  absl::StatusOr<ShardMap> map = ShardMap::Uniform(
      options.shard_map_epoch, static_cast<uint32_t>(options.servers.size()), options.num_vshards);
  if (!map.ok()) return map.status();
  auto impl = std::make_unique<Impl>(std::move(*map));
  impl->options = options;
  impl->client_id = options.client_id;
  while (impl->client_id == 0) {
    std::random_device rd;
    impl->client_id = (uint64_t{rd()} << 32) ^ rd();
  }
  for (size_t s = 0; s < options.servers.size(); ++s) {
    auto conn = std::make_unique<ServerConn>();
    conn->address = options.servers[s];
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
      auto channel =
          grpc::CreateCustomChannel(conn->address, grpc::InsecureChannelCredentials(), args);
      conn->stubs.push_back(v1::ParameterServer::NewStub(channel));
      conn->generic_stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
    }
    impl->servers.push_back(std::move(conn));
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

uint64_t Client::client_id() const { return impl_->client_id; }
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
  impl_->FillHeader(req.mutable_header());
  TableConfigToProto(config, req.mutable_spec());
  absl::Status s = ForEachServer(*impl_, [&](uint32_t shard) {
    v1::CreateTableResponse resp;
    grpc::ClientContext ctx;
    return FromGrpcStatus(impl_->servers[shard]->NextStub()->CreateTable(
        WithDeadline(&ctx, impl_->options.rpc_timeout_ms), req, &resp));
  });
  if (!s.ok()) return s;
  absl::MutexLock lock(&impl_->tables_mu);
  impl_->tables[resolved->name] = *resolved;
  return resolved;
}

absl::Status Client::DropTable(absl::string_view name) {
  impl_->ForgetTable(name);
  v1::DropTableRequest req;
  impl_->FillHeader(req.mutable_header());
  req.set_table(std::string(name));
  return ForEachServer(*impl_, [&](uint32_t shard) {
    v1::DropTableResponse resp;
    grpc::ClientContext ctx;
    return FromGrpcStatus(impl_->servers[shard]->NextStub()->DropTable(
        WithDeadline(&ctx, impl_->options.rpc_timeout_ms), req, &resp));
  });
}

namespace {

absl::Status AddInfo(const v1::TableInfo& info, TableStatus* status) {
  absl::StatusOr<TableConfig> config = TableConfigFromProto(info.spec());
  if (!config.ok()) return config.status();
  status->config = *std::move(config);
  status->rows += info.rows();
  status->bytes += info.bytes();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TableStatus> Client::DescribeTable(absl::string_view name) {
  v1::DescribeTableRequest req;
  impl_->FillHeader(req.mutable_header());
  req.set_table(std::string(name));
  TableStatus status;
  absl::Status s = ForEachServer(*impl_, [&](uint32_t shard) {
    v1::DescribeTableResponse resp;
    grpc::ClientContext ctx;
    absl::Status st = FromGrpcStatus(impl_->servers[shard]->NextStub()->DescribeTable(
        WithDeadline(&ctx, impl_->options.rpc_timeout_ms), req, &resp));
    return st.ok() ? AddInfo(resp.info(), &status) : st;
  });
  if (!s.ok()) return s;
  return status;
}

absl::StatusOr<std::vector<TableStatus>> Client::ListTables() {
  v1::ListTablesRequest req;
  impl_->FillHeader(req.mutable_header());
  std::vector<TableStatus> tables;
  absl::Status s = ForEachServer(*impl_, [&](uint32_t shard) {
    v1::ListTablesResponse resp;
    grpc::ClientContext ctx;
    absl::Status st = FromGrpcStatus(impl_->servers[shard]->NextStub()->ListTables(
        WithDeadline(&ctx, impl_->options.rpc_timeout_ms), req, &resp));
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
  absl::Notification done;
  absl::Status result;
  start([&](absl::Status s) {
    result = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

}  // namespace

absl::Status Client::PullSparse(absl::string_view table, absl::Span<const uint64_t> keys,
                                absl::Span<float> out) {
  return Blocking([&](StatusCallback cb) { PullSparseAsync(table, keys, out, std::move(cb)); });
}
absl::Status Client::PushSparse(absl::string_view table, absl::Span<const uint64_t> keys,
                                absl::Span<const float> values) {
  return Blocking([&](StatusCallback cb) { PushSparseAsync(table, keys, values, std::move(cb)); });
}
absl::Status Client::PullDense(absl::string_view table, uint64_t offset, absl::Span<float> out) {
  return Blocking([&](StatusCallback cb) { PullDenseAsync(table, offset, out, std::move(cb)); });
}
absl::Status Client::PushDense(absl::string_view table, uint64_t offset,
                               absl::Span<const float> values) {
  return Blocking([&](StatusCallback cb) { PushDenseAsync(table, offset, values, std::move(cb)); });
}

}  // namespace tessera
