// Client internals shared by client.cc (connection, tables) and client_data.cc (data path).
#ifndef TESSERA_CLIENT_INTERNAL_CLIENT_IMPL_H_
#define TESSERA_CLIENT_INTERNAL_CLIENT_IMPL_H_

#include <grpcpp/generic/generic_stub.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/internal/data_conn.h"
#include "common/export.h"
#include "proto/cluster.grpc.pb.h"
#include "proto/tessera.grpc.pb.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace tessera {
namespace client_internal {

// Sequence numbers of this client's pushes to one shard: 1, 2, 3, ... The floor sent with each
// push is the lowest sequence still in flight. Thread-safe.
class PushWindow {
 public:
  uint64_t Issue() ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t Floor() const ABSL_LOCKS_EXCLUDED(mu_);
  void Settle(uint64_t sequence) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 1;
  absl::btree_set<uint64_t> in_flight_ ABSL_GUARDED_BY(mu_);
};

// Collects the outcomes of the RPCs that make up one user call and runs the user's callback
// once, after the last one, with the first error (or OK). Thread-safe.
class OpTracker {
 public:
  OpTracker(size_t num_rpcs, StatusCallback done) : pending_(num_rpcs), done_(std::move(done)) {}
  void Finish(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  std::atomic<size_t> pending_;
  absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  StatusCallback done_;  // run once, by the last Finish
};

// The connections to one server.
struct Endpoint {
  // Constant after construction. One of each per channel (TCP connection): typed stubs for
  // table management, generic (ByteBuffer) stubs for the data path.
  std::string address;
  const std::string token;       // presented in the data plane's handshake
  std::shared_ptr<SSL_CTX> tls;  // the data plane's TLS (null: plaintext)
  std::vector<std::unique_ptr<v1::ParameterServer::Stub>> stubs;
  std::vector<std::unique_ptr<grpc::GenericStub>> generic_stubs;
  std::atomic<uint32_t> next_stub{0};

  Endpoint(const std::string& address, const ClientOptions& options);
  ~Endpoint();  // closes the data plane and stops its thread

  // The server's data plane (docs/data_plane.md), when connected and healthy; null: use gRPC.
  std::shared_ptr<DataConn> Data() ABSL_LOCKS_EXCLUDED(data_mu);

  // Calls in flight on the data path. Once this endpoint is no longer the shard's primary
  // (Retire), they are cancelled so that they retry at the new one at once instead of waiting
  // out their deadline on a stalled server.
  void Register(grpc::ClientContext* ctx) ABSL_LOCKS_EXCLUDED(calls_mu);
  void Unregister(grpc::ClientContext* ctx) ABSL_LOCKS_EXCLUDED(calls_mu);
  void Retire() ABSL_LOCKS_EXCLUDED(calls_mu);

  absl::Mutex calls_mu;
  absl::flat_hash_set<grpc::ClientContext*> calls ABSL_GUARDED_BY(calls_mu);
  bool retired ABSL_GUARDED_BY(calls_mu) = false;

  // The data plane, found and (re)connected by data_thread: it asks GetDataPlane, opens
  // data_connections_per_server connections (calls are spread over them, so the server runs them in
  // parallel), and reconnects at most once per second while one is broken.
  void DataLoop(int connections, int timeout_ms) ABSL_LOCKS_EXCLUDED(data_mu);
  bool DataBroken() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(data_mu);
  void StopData(const std::string& why) ABSL_LOCKS_EXCLUDED(data_mu);
  absl::Mutex data_mu;
  std::vector<std::shared_ptr<DataConn>> data ABSL_GUARDED_BY(data_mu);  // all or none
  uint32_t next_data ABSL_GUARDED_BY(data_mu) = 0;
  bool data_stop ABSL_GUARDED_BY(data_mu) = false;
  grpc::ClientContext* data_query ABSL_GUARDED_BY(data_mu) = nullptr;  // GetDataPlane in flight
  std::thread data_thread;

  v1::ParameterServer::Stub* NextStub() {
    return stubs[next_stub.fetch_add(1, std::memory_order_relaxed) % stubs.size()].get();
  }
  grpc::GenericStub* NextGenericStub() {
    const uint32_t i = next_stub.fetch_add(1, std::memory_order_relaxed);
    return generic_stubs[i % generic_stubs.size()].get();
  }
};

// One shard: its current primary's connections (replaced on failover) and this client's push
// sequence for the shard (kept across failovers: exactly-once is per (client, shard)).
class ServerConn {
 public:
  explicit ServerConn(std::shared_ptr<Endpoint> endpoint) : endpoint_(std::move(endpoint)) {}

  std::shared_ptr<Endpoint> Current() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return endpoint_;
  }
  // Routes to `endpoint`; the shard serves again.
  void Replace(std::shared_ptr<Endpoint> endpoint) ABSL_LOCKS_EXCLUDED(mu_) {
    std::shared_ptr<Endpoint> old;
    {
      absl::MutexLock lock(&mu_);
      old = std::exchange(endpoint_, std::move(endpoint));
      down_.clear();
    }
    if (old != nullptr) old->Retire();
  }
  // The shard serves nothing (LOST or RESTORING): calls fail at once with `why`.
  void MarkDown(std::string why) ABSL_LOCKS_EXCLUDED(mu_) {
    std::shared_ptr<Endpoint> old;
    {
      absl::MutexLock lock(&mu_);
      old = std::exchange(endpoint_, nullptr);
      down_ = std::move(why);
    }
    if (old != nullptr) old->Retire();
  }
  // Why the shard serves nothing; empty when it serves or only has no primary yet.
  std::string Down() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return down_;
  }

  PushWindow pushes;

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<Endpoint> endpoint_ ABSL_GUARDED_BY(mu_);
  std::string down_ ABSL_GUARDED_BY(mu_);
};

}  // namespace client_internal

struct TESSERA_HIDDEN Client::Impl {
  // Constant after Connect.
  ClientOptions options;
  ShardMap map;  // vshard -> shard (fixed); the epoch is `epoch` below
  uint64_t client_id = 0;
  std::vector<std::unique_ptr<client_internal::ServerConn>> servers;  // by shard
  std::unique_ptr<v1::Coordinator::Stub> coordinator;                 // null: static map

  // The epoch of the shard map requests are routed with.
  std::atomic<uint64_t> epoch{0};

  // Map refreshes from the coordinator, on a thread of their own.
  absl::Mutex refresh_mu;
  bool refresh_wanted ABSL_GUARDED_BY(refresh_mu) = false;
  bool stopping ABSL_GUARDED_BY(refresh_mu) = false;
  std::thread refresher;

  std::atomic<uint64_t> duplicate_acks{0};
  std::atomic<uint64_t> retries{0};

  // Table configs learned from CreateTable/DescribeTable, for splitting dense ranges.
  absl::Mutex tables_mu;
  absl::flat_hash_map<std::string, TableConfig> tables ABSL_GUARDED_BY(tables_mu);

  // RPCs in flight (including those waiting to retry); the destructor waits for zero.
  absl::Mutex calls_mu;
  int64_t active_rpcs ABSL_GUARDED_BY(calls_mu) = 0;

  explicit Impl(ShardMap m) : map(std::move(m)) {}

  void RpcStarted() ABSL_LOCKS_EXCLUDED(calls_mu);
  void RpcEnded() ABSL_LOCKS_EXCLUDED(calls_mu);
  void WaitForRpcs() ABSL_LOCKS_EXCLUDED(calls_mu);

  // The resolved config of `name`, from the cache or fetched (blocking) from the first shard
  // that answers.
  absl::StatusOr<TableConfig> GetTable(absl::string_view name) ABSL_LOCKS_EXCLUDED(tables_mu);
  void ForgetTable(absl::string_view name) ABSL_LOCKS_EXCLUDED(tables_mu);

  // A status naming the server, for errors that came from it.
  absl::Status Annotate(uint32_t shard, const absl::Status& status) const;
  void FillHeader(v1::RequestHeader* header) const {
    header->set_shard_map_epoch(epoch.load(std::memory_order_acquire));
  }

  bool coordinated() const { return coordinator != nullptr; }
  // Asks the refresher thread for the newest map (coalesced; returns at once).
  void RequestRefresh() ABSL_LOCKS_EXCLUDED(refresh_mu);
  // Fetches the map now and re-routes shards whose primary changed. require_complete: fails
  // (UNAVAILABLE) while a shard has no server yet (a new cluster); LOST and RESTORING shards
  // do not count.
  absl::Status FetchMap(bool require_complete) ABSL_LOCKS_EXCLUDED(refresh_mu);
  void RefreshLoop() ABSL_LOCKS_EXCLUDED(refresh_mu);
  void StopRefresher() ABSL_LOCKS_EXCLUDED(refresh_mu);
  // Whether attempt `attempt` (1, 2, ...) may be followed by another.
  bool MayRetry(int attempt, absl::Time first_attempt) const;
  // A blocking call to `shard`'s current primary, retried (and re-routed) like the data path.
  // `call` fills the request's header itself on every attempt (the epoch may change).
  using BlockingCall =
      std::function<grpc::Status(v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx)>;
  absl::Status CallShard(uint32_t shard, const BlockingCall& call);
  // Whether a failed call may be retried (at the same or a new primary); reroute: the refusal
  // carried the reroute mark (kRerouteMetadataKey, or the data plane's flag).
  bool Retryable(const grpc::Status& status, const grpc::ClientContext& ctx) const;
  bool Retryable(const grpc::Status& status, bool reroute, int64_t retry_after_ms = 0) const;
  // Deadline of one attempt.
  int64_t AttemptTimeoutMs() const;
};

}  // namespace tessera

#endif  // TESSERA_CLIENT_INTERNAL_CLIENT_IMPL_H_
