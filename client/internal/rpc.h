// One RPC to one server with its retries: the unit the client's calls are made of.
#ifndef TESSERA_CLIENT_INTERNAL_RPC_H_
#define TESSERA_CLIENT_INTERNAL_RPC_H_

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "client/internal/client_impl.h"
#include "common/bulk_codec.h"

namespace tessera::client_internal {

// A limit's refusal's wait, from its trailing metadata (docs/security.md); 0: none.
int64_t RetryAfterMs(const grpc::ClientContext& ctx);

// Backoff before attempt `attempt` (2, 3, ...): exponential with jitter in [50%, 100%].
// (At most 250 ms with a coordinator: a failover is waited out by retrying.)
std::chrono::milliseconds Backoff(const Client::Impl& impl, int attempt);

// A heap-allocated unary call on the raw (ByteBuffer) API that deletes itself once done.
//
// `encode` builds the request for each attempt (a push re-encodes its floor but keeps its
// sequence number). On UNAVAILABLE or CANCELLED the call is retried with backoff. On success
// `consume` reads the response (and may reject it). The outcome goes to `op` only after the
// call completed AND gRPC released every bulk field borrowed through Borrow(), so the caller's
// buffers are free to reuse when its callback runs.
//
// Thread-compatible: the attempts of one Rpc run one after another (each is started by the
// previous one's completion or its retry alarm); only holds_ is touched concurrently.
class Rpc {
 public:
  using EncodeFn = std::function<grpc::ByteBuffer(Rpc& rpc)>;
  using ConsumeFn = std::function<absl::Status(const grpc::ByteBuffer& response)>;

  // method: e.g. "PullSparse". push: allocates a sequence number for this shard.
  Rpc(Client::Impl* impl, uint32_t shard, const char* method, bool push,
      std::shared_ptr<OpTracker> op);

  EncodeFn encode;
  ConsumeFn consume;

  // Sends the first attempt. The object may be gone when Start returns.
  void Start() { Attempt(); }

  // A bulk field reading `size` bytes at `data` in place; the call's outcome is held back
  // until gRPC releases it.
  BulkField Borrow(int field_number, const void* data, size_t size);

  Client::Impl* impl() const { return impl_; }
  uint64_t client_id() const;
  uint64_t sequence() const { return sequence_; }
  uint64_t floor() const;  // lowest sequence still in flight to this shard

 private:
  ServerConn& conn() const { return *impl_->servers[shard_]; }
  void Attempt();
  void OnDone(grpc::Status s);
  // Drops one hold; the last one delivers the outcome and deletes this.
  void Unhold();

  Client::Impl* const impl_;
  const uint32_t shard_;
  const std::string method_;    // full path, /tessera.v1.ParameterServer/<name>
  const uint16_t data_method_;  // data_frame::BulkMethod; 0: gRPC only
  const std::shared_ptr<OpTracker> op_;
  uint64_t sequence_ = 0;  // 0: not a push
  int attempt_ = 0;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::shared_ptr<Endpoint> endpoint_;  // of the current attempt
  absl::Time first_attempt_;
  std::unique_ptr<grpc::Alarm> alarm_;
  grpc::ByteBuffer response_;
  absl::Status outcome_;
  bool down_ = false;           // the shard serves nothing (LOST or RESTORING): no retry
  bool on_data_ = false;        // the current attempt went over the data plane
  bool reroute_ = false;        // its refusal carried the data plane's reroute flag
  int64_t retry_after_ms_ = 0;  // a limit's refusal: retry no sooner (docs/security.md)
  // One for the call itself plus one per borrowed bulk field not yet released.
  std::atomic<int> holds_{1};
};

}  // namespace tessera::client_internal

#endif  // TESSERA_CLIENT_INTERNAL_RPC_H_
