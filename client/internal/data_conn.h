// A client's data-plane connection to one server (docs/data_plane.md, "Client side").
#ifndef TESSERA_CLIENT_INTERNAL_DATA_CONN_H_
#define TESSERA_CLIENT_INTERNAL_DATA_CONN_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/byte_stream.h"

namespace tessera::client_internal {

// Thread-safe. Many calls may be in flight; each gets its response by call id.
class DataConn : public std::enable_shared_from_this<DataConn> {
 public:
  // What a refusal says besides its status: whether it is for routing (the gRPC path's reroute
  // trailer) and, for a limit, how long to wait before retrying (0: do not).
  struct Hints {
    bool reroute = false;
    int64_t retry_after_ms = 0;
  };
  using Done = std::function<void(grpc::Status status, Hints hints)>;

  // Connects to host:port (over TLS with `tls`, when not null, checking that the server's
  // certificate names `host`) and shakes hands presenting `token` (empty: none), within
  // timeout_ms.
  static absl::StatusOr<std::shared_ptr<DataConn>> Open(const std::string& host, int port,
                                                        int timeout_ms, const std::string& token,
                                                        SSL_CTX* tls = nullptr);
  ~DataConn();

  // Sends one call of wire method `method` (data_frame::BulkMethod): returns once the kernel
  // has the request's bytes. `done` runs once: with the response in *response (which must stay
  // valid until then), DEADLINE_EXCEEDED at `deadline`, or UNAVAILABLE when the connection is
  // or becomes broken; on the connection's reader thread, or on this one before Call returns.
  void Call(uint16_t method, const grpc::ByteBuffer& request, grpc::ByteBuffer* response,
            absl::Time deadline, Done done) ABSL_LOCKS_EXCLUDED(mu_, write_mu_);

  bool broken() const ABSL_LOCKS_EXCLUDED(mu_);
  // Breaks the connection: calls in flight fail with UNAVAILABLE `why` (on the reader
  // thread), later calls at once. Idempotent.
  void Close(const std::string& why) ABSL_LOCKS_EXCLUDED(mu_);
  // Ends the connection gracefully: later calls fail at once with UNAVAILABLE `why`, the calls
  // in flight get their answers (or their deadlines), then it closes. A no-op when broken.
  void Retire(const std::string& why) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Pending {
    grpc::ByteBuffer* response;
    absl::Time deadline;
    Done done;
  };
  DataConn(int fd, std::unique_ptr<ByteStream> stream, std::string peer)
      : fd_(fd), stream_(std::move(stream)), peer_(std::move(peer)) {}
  void ReadLoop(std::shared_ptr<DataConn> self);
  // Reads n bytes, failing deadlines of calls in flight while it waits; false: broken (or,
  // between_frames, retired with nothing left in flight).
  bool Read(void* buf, size_t n, bool between_frames = false);
  void FailExpired() ABSL_LOCKS_EXCLUDED(mu_);
  // Whether a retired connection has nothing left in flight: it then counts as broken.
  bool RetiredAndIdle() ABSL_LOCKS_EXCLUDED(mu_);

  const int fd_;
  std::unique_ptr<ByteStream> stream_;  // over fd_; reset only by the destructor
  const std::string peer_;              // host:port, for messages
  std::thread reader_;
  absl::Mutex write_mu_;  // one frame at a time on the socket
  mutable absl::Mutex mu_;
  uint32_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint32_t, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::string broken_ ABSL_GUARDED_BY(mu_);       // why, once broken
  std::string retiring_ ABSL_GUARDED_BY(mu_);     // why, once retired (closes when idle)
  absl::Time last_sweep_ = absl::InfinitePast();  // (reader thread only)
};

}  // namespace tessera::client_internal

#endif  // TESSERA_CLIENT_INTERNAL_DATA_CONN_H_
