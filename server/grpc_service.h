// Adapts ServerCore to the gRPC callback API and records request metrics.
#ifndef TESSERA_SERVER_GRPC_SERVICE_H_
#define TESSERA_SERVER_GRPC_SERVICE_H_

#include <atomic>
#include <functional>

#include "common/auth.h"
#include "common/call_limiter.h"
#include "proto/tessera.grpc.pb.h"
#include "server/metrics.h"
#include "server/server_core.h"

namespace tessera {

class Replicator;

// Every method is registered "raw" (grpc::ByteBuffer in and out) so that this layer parses
// requests itself: a payload that is not a valid protobuf gets INVALID_ARGUMENT with a message
// (gRPC's own deserialization would answer a bare UNIMPLEMENTED), and responses can later be
// written without a protobuf copy.
using PS = v1::ParameterServer;
using RawParameterServerService = PS::WithRawCallbackMethod_CreateTable<
    PS::WithRawCallbackMethod_DropTable<PS::WithRawCallbackMethod_DescribeTable<
        PS::WithRawCallbackMethod_ListTables<PS::WithRawCallbackMethod_PullSparse<
            PS::WithRawCallbackMethod_PushSparse<PS::WithRawCallbackMethod_PullDense<
                PS::WithRawCallbackMethod_PushDense<PS::WithRawCallbackMethod_WriteCheckpoint<
                    PS::WithRawCallbackMethod_GetCheckpointState<
                        PS::WithRawCallbackMethod_RestoreCheckpoint<
                            PS::WithRawCallbackMethod_ApplyStep<
                                PS::WithRawCallbackMethod_RemoveRows<
                                    PS::WithRawCallbackMethod_GetDataPlane<
                                        PS::Service>>>>>>>>>>>>>>;

// Handlers run ServerCore inline on gRPC's callback threads: the work is CPU-bound and holds
// only vshard locks, never across I/O. Checkpoint writes and restores, which do file I/O for
// seconds, run on a thread of their own. Thread-safe. `core` and `metrics` must outlive it.
class GrpcService final : public RawParameterServerService {
 public:
  // replicator: null without a coordinator. `auth` checks every call before its request is
  // parsed (docs/security.md); it must outlive this object.
  // `limiter` admits every call after authentication (docs/security.md, "Abuse limits").
  GrpcService(ServerCore* core, ServerMetrics* metrics, Replicator* replicator,
              const Authenticator* auth, CallLimiter* limiter)
      : core_(core), metrics_(metrics), replicator_(replicator), auth_(auth), limiter_(limiter) {}
  ~GrpcService() override;  // waits for offloaded handlers

  using Reactor = grpc::ServerUnaryReactor;
  using Ctx = grpc::CallbackServerContext;
  using Bytes = grpc::ByteBuffer;

  Reactor* CreateTable(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* DropTable(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* DescribeTable(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* ListTables(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* PullSparse(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* PushSparse(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* PullDense(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* PushDense(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* WriteCheckpoint(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* GetCheckpointState(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* RestoreCheckpoint(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* ApplyStep(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* RemoveRows(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* GetDataPlane(Ctx* ctx, const Bytes* req, Bytes* resp) override;

  // Where a call's outcome goes: status, and for a refusal the server's shard-map epoch and
  // whether it is a routing refusal (gRPC: trailing metadata). Runs once.
  // retry_after_ms > 0: the refusal says when to come back (the client retries by itself).
  using Sink = std::function<void(const grpc::Status& status, uint64_t epoch, bool reroute,
                                  uint32_t retry_after_ms)>;
  // The data plane's entry (server/data_plane.h): runs bulk call `method` (kPullSparse,
  // kPushSparse, kPullDense or kPushDense) on `request` exactly as its gRPC method does;
  // *response is written before `sink` runs with OK. Both must stay valid until then.
  void RunBulk(Method method, const Bytes* request, Bytes* response, Sink sink);
  // The port GetDataPlane answers (0: no data plane). Set before serving.
  void set_data_port(int port) { data_port_ = port; }

 private:
  // Runs fn(request, response) inline (Handle) or on a thread of its own (Offload) and
  // finishes the call; a change (a response with an LSN) finishes once it is replicated.
  template <typename Req, typename Resp, typename Fn>
  Reactor* Handle(Method method, Ctx* ctx, const Bytes* request, Bytes* response, Fn fn);
  template <typename Req, typename Resp, typename Fn>
  Reactor* Offload(Method method, Ctx* ctx, const Bytes* request, Bytes* response, Fn fn)
      ABSL_LOCKS_EXCLUDED(offload_mu_);
  template <typename Req, typename Resp, typename Fn>
  void Run(Method method, const Bytes* request, Bytes* response, Fn fn, Sink sink);
  // The sink of a gRPC call; `ticket` (its place under the call limits) goes with it.
  static Sink GrpcSink(Ctx* ctx, Reactor* reactor,
                       std::shared_ptr<CallLimiter::Ticket> ticket = nullptr);
  // Whether a call to `method` is refused (and answered on `reactor`): no token, a wrong role,
  // or over a call limit; otherwise *ticket holds its place under the limits.
  bool Refused(Ctx* ctx, Reactor* reactor, const char* method,
               std::shared_ptr<CallLimiter::Ticket>* ticket);

  ServerCore* core_;
  ServerMetrics* metrics_;
  Replicator* replicator_;
  const Authenticator* auth_;
  CallLimiter* limiter_;
  std::atomic<int> data_port_{0};
  absl::Mutex offload_mu_;
  int offloaded_ ABSL_GUARDED_BY(offload_mu_) = 0;  // offloaded handlers still running
};

}  // namespace tessera

#endif  // TESSERA_SERVER_GRPC_SERVICE_H_
