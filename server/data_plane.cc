#include "server/data_plane.h"

#include <grpc/slice.h>
#include <grpcpp/support/byte_buffer.h>
#include <poll.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <deque>
#include <list>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/auth.h"
#include "common/byte_stream.h"
#include "common/call_limiter.h"
#include "common/data_frame.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/socket_io.h"
#include "server/grpc_service.h"
#include "server/memory_budget.h"

namespace tessera {
namespace {

namespace df = data_frame;

constexpr int kMaxCallsInFlight = 64;       // per connection (docs/data_plane.md)
constexpr int kHandshakeTimeoutMs = 10000;  // for TLS and the client's hello

constexpr char kGetDataPlane[] = "/tessera.v1.ParameterServer/GetDataPlane";

// The gRPC name of a bulk method (its roles: docs/security.md).
const char* FullMethodOf(uint16_t wire) {
  switch (static_cast<df::BulkMethod>(wire)) {
    case df::BulkMethod::kPullSparse:
      return "/tessera.v1.ParameterServer/PullSparse";
    case df::BulkMethod::kPushSparse:
      return "/tessera.v1.ParameterServer/PushSparse";
    case df::BulkMethod::kPullDense:
      return "/tessera.v1.ParameterServer/PullDense";
    case df::BulkMethod::kPushDense:
      break;
  }
  return "/tessera.v1.ParameterServer/PushDense";
}

Method MethodOf(uint16_t wire) {
  switch (static_cast<df::BulkMethod>(wire)) {
    case df::BulkMethod::kPullSparse:
      return Method::kPullSparse;
    case df::BulkMethod::kPushSparse:
      return Method::kPushSparse;
    case df::BulkMethod::kPullDense:
      return Method::kPullDense;
    case df::BulkMethod::kPushDense:
      break;
  }
  return Method::kPushDense;
}

// A received frame: its bytes and what they hold of the budget, freed with the last slice
// referring to them (a push's bytes live on in its log entry until replicated).
struct FrameBytes {
  MemoryBudget* budget;
  uint64_t reserved;
  char* data() { return reinterpret_cast<char*>(this + 1); }
};
void FreeFrame(void* p) {
  auto* f = static_cast<FrameBytes*>(p);
  f->budget->Release(f->reserved);
  std::free(f);
}

// One call in flight: the request as gRPC would hold it, and its response.
struct PendingCall {
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
};

// A response on its way: its bytes as a gather list, sent by whoever owns the socket (the
// writer thread, or the thread that finished the call: docs/data_plane.md, "Responses").
// Never moved once built (the list points into it).
struct Outgoing {
  char header[df::kResponseHeaderBytes];
  std::string message;
  grpc::ByteBuffer payload;
  std::vector<grpc::Slice> slices;  // the payload's, alive while `iov` points into them
  std::vector<iovec> iov;           // what is left to send, from iov[next]
  size_t next = 0;
  bool close_after = false;  // a protocol error: the stream is not to be trusted further

  void Build() {
    iov.push_back({header, sizeof(header)});
    if (!message.empty()) iov.push_back({message.data(), message.size()});
    if (payload.Length() > 0 && payload.Dump(&slices).ok()) {
      for (const grpc::Slice& s : slices)
        iov.push_back({const_cast<uint8_t*>(s.begin()), s.size()});
    }
  }
};

}  // namespace

struct DataPlane::Impl {
  struct Conn;

  DataPlaneOptions options;
  GrpcService* service = nullptr;
  MemoryBudget* budget = nullptr;
  const Authenticator* auth = nullptr;
  CallLimiter* limiter = nullptr;
  Listener listener;
  prometheus::Gauge* connections_gauge = nullptr;
  prometheus::Counter* frames = nullptr;
  prometheus::Counter* refused_frames = nullptr;
  prometheus::Counter* refused_connections = nullptr;
  std::thread acceptor;

  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  bool stopped ABSL_GUARDED_BY(mu) = false;
  std::list<std::shared_ptr<Conn>> conns ABSL_GUARDED_BY(mu);
  // Calls started and not finished, over every connection (Stop waits for zero).
  int64_t calls ABSL_GUARDED_BY(mu) = 0;

  void AcceptLoop();
  void Serve(const std::shared_ptr<Conn>& conn);
  void Reap(bool all) ABSL_LOCKS_EXCLUDED(mu);
};

struct DataPlane::Impl::Conn : std::enable_shared_from_this<Conn> {
  Impl* plane = nullptr;
  int fd = -1;
  std::unique_ptr<ByteStream> stream;  // over fd: plain or TLS (set by the reader first)
  std::thread reader;
  std::thread writer;

  std::thread::id reader_id;  // (set before the first call starts)

  absl::Mutex mu;
  std::deque<std::unique_ptr<Outgoing>> queue ABSL_GUARDED_BY(mu);  // for the writer thread
  // A thread owns the socket for writing (the writer, or one sending its response inline):
  // the bytes of one response are never interleaved with another's.
  bool writing ABSL_GUARDED_BY(mu) = false;
  bool closing ABSL_GUARDED_BY(mu) = false;  // responses are dropped from now on
  bool reader_done ABSL_GUARDED_BY(mu) = false;
  int in_flight ABSL_GUARDED_BY(mu) = 0;
  bool finished = false;  // (guarded by plane->mu) reader and writer have ended

  // Sends a call's response. When nobody is writing and nothing waits, the calling thread
  // sends it itself (no hand-off to the writer): the reader thread blocking until it is sent
  // (back-pressure on this connection only), any other thread (an executor, the replicator)
  // only as far as the socket takes it without waiting, leaving the rest to the writer.
  void Respond(uint32_t call_id, const grpc::Status& status, uint64_t epoch, bool reroute,
               grpc::ByteBuffer payload, bool close_after, uint32_t retry_after_ms = 0)
      ABSL_LOCKS_EXCLUDED(mu) {
    auto o = std::make_unique<Outgoing>();
    df::ResponseHeader h;
    h.call_id = call_id;
    h.code = static_cast<uint16_t>(status.error_code());
    h.flags = reroute ? df::kFlagReroute : 0;
    o->message = status.error_message().substr(0, df::kMaxMessageBytes);
    h.message_length = static_cast<uint32_t>(o->message.size());
    h.payload_length = status.ok() ? static_cast<uint32_t>(payload.Length()) : 0;
    h.epoch = epoch;
    h.retry_after_ms = retry_after_ms;
    df::Put(h, o->header);
    if (status.ok()) o->payload = std::move(payload);
    o->close_after = close_after;
    o->Build();
    absl::MutexLock lock(&mu);
    if (closing) return;
    if (writing || !queue.empty()) {
      queue.push_back(std::move(o));
      return;
    }
    writing = true;
    mu.Unlock();
    const WriteResult r =
        stream->WriteSome(o->iov, &o->next, /*block=*/std::this_thread::get_id() == reader_id);
    mu.Lock();
    writing = false;
    Sent(r, std::move(o));
  }

  // After `o` was (partly) sent: the rest goes first to the writer; an error or a protocol
  // error's response ends the connection.
  void Sent(WriteResult r, std::unique_ptr<Outgoing> o) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (r == WriteResult::kWouldBlock) {
      queue.push_front(std::move(o));
    } else if (r == WriteResult::kError || o->close_after) {
      Close();
    }
  }

  // The peer gets nothing more: the reader is unblocked, what is queued dropped.
  void Close() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (closing) return;
    closing = true;
    queue.clear();
    ::shutdown(fd, SHUT_RDWR);
  }

  void WriteLoop() ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    for (;;) {
      mu.Await(absl::Condition(
          +[](Conn* c) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return (!c->queue.empty() && !c->writing) || c->closing ||
                   (c->reader_done && c->in_flight == 0 && c->queue.empty() && !c->writing);
          },
          this));
      if (closing || queue.empty()) break;
      std::unique_ptr<Outgoing> o = std::move(queue.front());
      queue.pop_front();
      writing = true;
      mu.Unlock();
      const WriteResult r = stream->WriteSome(o->iov, &o->next, /*block=*/true);
      mu.Lock();
      writing = false;
      Sent(r, std::move(o));
    }
    Close();
  }
};

absl::StatusOr<std::unique_ptr<DataPlane>> DataPlane::Start(
    const DataPlaneOptions& options, GrpcService* service, MemoryBudget* budget,
    prometheus::Registry* registry, const Authenticator* auth, CallLimiter* limiter) {
  absl::StatusOr<Listener> listener = ListenTcp(options.address, options.port);
  if (!listener.ok()) return listener.status();
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->service = service;
  impl->budget = budget;
  impl->auth = auth;
  impl->limiter = limiter;
  impl->listener = *listener;
  impl->connections_gauge = &prometheus::BuildGauge()
                                 .Name("tessera_data_plane_connections")
                                 .Help("Open data-plane connections (docs/data_plane.md).")
                                 .Register(*registry)
                                 .Add({});
  auto& frames = prometheus::BuildCounter()
                     .Name("tessera_data_plane_frames_total")
                     .Help(
                         "Request frames received on the data plane, by outcome: served "
                         "(run as the gRPC method would; its own status is in "
                         "tessera_server_requests_total) or refused before running.")
                     .Register(*registry);
  impl->frames = &frames.Add({{"outcome", "served"}});
  impl->refused_frames = &frames.Add({{"outcome", "refused"}});
  impl->refused_connections = &prometheus::BuildCounter()
                                   .Name("tessera_data_plane_refused_connections_total")
                                   .Help(
                                       "Connections closed at accept: over the limit or a bad "
                                       "handshake.")
                                   .Register(*registry)
                                   .Add({});
  Impl* raw = impl.get();
  impl->acceptor = std::thread([raw] { raw->AcceptLoop(); });
  return std::unique_ptr<DataPlane>(new DataPlane(std::move(impl)));
}

DataPlane::DataPlane(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DataPlane::~DataPlane() { Stop(); }
int DataPlane::port() const { return impl_->listener.port; }

void DataPlane::Drain() {
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->stopping) return;
    impl_->stopping = true;
    // Readers see the end of their streams; writers send what is answered, then close.
    for (const auto& c : impl_->conns) ::shutdown(c->fd, SHUT_RD);
  }
  impl_->acceptor.join();
  ::close(impl_->listener.fd);
}

void DataPlane::Stop(absl::Time deadline) {
  Drain();
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->stopped) return;
    impl_->mu.AwaitWithDeadline(absl::Condition(
                                    +[](Impl* i) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                      for (const auto& c : i->conns) {
                                        if (!c->finished) return false;
                                      }
                                      return true;
                                    },
                                    impl_.get()),
                                deadline);
    for (const auto& c : impl_->conns) ::shutdown(c->fd, SHUT_RDWR);
  }
  impl_->Reap(/*all=*/true);
  absl::MutexLock lock(&impl_->mu);
  impl_->mu.Await(absl::Condition(
      +[](Impl* i) ABSL_NO_THREAD_SAFETY_ANALYSIS { return i->calls == 0; }, impl_.get()));
  impl_->stopped = true;
}

void DataPlane::Impl::AcceptLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu);
      if (stopping) return;
    }
    Reap(/*all=*/false);
    pollfd p{listener.fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;  // (a timeout: look at `stopping` again)
    const int fd = ::accept4(listener.fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    TuneSocket(fd);
    absl::MutexLock lock(&mu);
    if (stopping || static_cast<int>(conns.size()) >= options.max_connections) {
      refused_connections->Increment();
      ::close(fd);
      continue;
    }
    auto conn = std::make_shared<Conn>();
    conn->plane = this;
    conn->fd = fd;
    conns.push_back(conn);
    connections_gauge->Increment();
    conn->reader = std::thread([this, conn] { Serve(conn); });
  }
}

// Joins the threads of finished connections (all: waits for every connection to finish).
void DataPlane::Impl::Reap(bool all) {
  std::vector<std::shared_ptr<Conn>> done;
  {
    absl::MutexLock lock(&mu);
    if (all) {
      mu.Await(absl::Condition(
          +[](Impl* i) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            for (const auto& c : i->conns) {
              if (!c->finished) return false;
            }
            return true;
          },
          this));
    }
    for (auto it = conns.begin(); it != conns.end();) {
      if ((*it)->finished) {
        done.push_back(std::move(*it));
        it = conns.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& c : done) {
    c->reader.join();
    ::close(c->fd);
    connections_gauge->Decrement();
  }
}

void DataPlane::Impl::Serve(const std::shared_ptr<Conn>& conn) {
  const int fd = conn->fd;
  // TLS first when this server has it (docs/security.md, "TLS on the data plane"), then the
  // client's hello and its token, each part checked before the next is read, all within
  // kHandshakeTimeoutMs; a token this server does not accept for pulls or pushes ends the
  // connection before anything else is read.
  bool ok = true;
  if (std::shared_ptr<SSL_CTX> ctx = options.tls_context ? options.tls_context() : nullptr) {
    absl::StatusOr<std::unique_ptr<ByteStream>> tls = AcceptTls(fd, ctx.get(), kHandshakeTimeoutMs);
    ok = tls.ok();
    if (ok) conn->stream = *std::move(tls);
  } else {
    conn->stream = PlainStream(fd);
  }
  ByteStream* const stream = conn->stream.get();
  char hello[df::kClientHelloFixedBytes];
  uint32_t token_length = 0;
  std::string token;
  ok = ok && stream->ReadFullWithin(hello, df::kHandshakeBytes, kHandshakeTimeoutMs) &&
       df::HandshakeOk(hello) &&
       stream->ReadFullWithin(hello + df::kHandshakeBytes, sizeof(hello) - df::kHandshakeBytes,
                              kHandshakeTimeoutMs) &&
       df::ClientHelloOk(hello, &token_length);
  if (ok) {
    token.resize(token_length);
    ok = stream->ReadFullWithin(token.data(), token.size(), kHandshakeTimeoutMs) &&
         auth->CheckToken(token, kGetDataPlane).ok();
  }
  if (ok) {
    df::PutHandshake(hello);
    std::vector<iovec> iov = {{hello, df::kHandshakeBytes}};
    ok = stream->WriteAll(iov);
  } else {
    refused_connections->Increment();
  }
  const std::string connection_key =
      absl::StrFormat("data-plane:%p", static_cast<const void*>(conn.get()));
  conn->reader_id = std::this_thread::get_id();
  if (ok) conn->writer = std::thread([conn] { conn->WriteLoop(); });
  // A refusal before running: counted, answered, and (close) the end of the connection.
  auto refuse = [&](uint32_t id, grpc::StatusCode code, const std::string& why, bool close) {
    refused_frames->Increment();
    conn->Respond(id, grpc::Status(code, why), 0, false, {}, close);
  };
  while (ok) {
    char raw[df::kRequestHeaderBytes];
    if (!stream->ReadFull(raw, sizeof(raw))) break;
    const df::RequestHeader h = df::GetRequest(raw);
    if (const char* problem = df::RequestHeaderProblem(h); problem != nullptr) {
      refuse(h.call_id, grpc::StatusCode::INVALID_ARGUMENT,
             absl::StrFormat("data plane: %s (method %u, flags %u); closing the connection",
                             problem, h.method, h.flags),
             true);
      break;
    }
    if (h.length > options.max_frame_bytes) {
      refuse(h.call_id, grpc::StatusCode::RESOURCE_EXHAUSTED,
             absl::StrFormat("data plane: a frame of %u bytes is over this server's "
                             "--max_request_bytes %u; closing the connection",
                             h.length, options.max_frame_bytes),
             true);
      break;
    }
    // The token's roles now (a reload may have removed it): checked before the body is read.
    if (auth->enabled()) {
      const grpc::Status allowed = auth->CheckToken(token, FullMethodOf(h.method));
      if (allowed.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
        refuse(h.call_id, allowed.error_code(), allowed.error_message(), true);
        break;
      }
      if (!allowed.ok()) {
        if (!stream->Discard(h.length)) break;
        refuse(h.call_id, allowed.error_code(), allowed.error_message(), false);
        continue;
      }
    }
    // The call limits (docs/security.md, "Abuse limits"): this connection and its token.
    int64_t retry_after_ms = 0;
    absl::StatusOr<std::unique_ptr<CallLimiter::Ticket>> admitted =
        limiter->Admit(token, connection_key, &retry_after_ms);
    if (!admitted.ok()) {
      if (!stream->Discard(h.length)) break;
      refused_frames->Increment();
      conn->Respond(h.call_id, ToGrpcStatus(admitted.status()), 0, false, {}, false,
                    static_cast<uint32_t>(retry_after_ms));
      continue;
    }
    std::shared_ptr<CallLimiter::Ticket> ticket = *std::move(admitted);
    {
      absl::MutexLock lock(&conn->mu);  // back-pressure: at most kMaxCallsInFlight
      conn->mu.Await(absl::Condition(
          +[](Conn* c) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return c->in_flight < kMaxCallsInFlight || c->closing;
          },
          conn.get()));
      if (conn->closing) break;
    }
    const uint64_t reserved = sizeof(FrameBytes) + h.length;
    if (absl::Status s =
            budget->Reserve(reserved, absl::StrFormat("a data-plane frame of %u bytes", h.length));
        !s.ok()) {
      if (!stream->Discard(h.length)) break;
      refuse(h.call_id, grpc::StatusCode::RESOURCE_EXHAUSTED, std::string(s.message()), false);
      continue;
    }
    auto* frame = static_cast<FrameBytes*>(std::malloc(reserved));
    if (frame == nullptr) {
      budget->Release(reserved);
      if (!stream->Discard(h.length)) break;
      refuse(h.call_id, grpc::StatusCode::RESOURCE_EXHAUSTED,
             absl::StrFormat("data plane: out of memory for a frame of %u bytes", h.length), false);
      continue;
    }
    frame->budget = budget;
    frame->reserved = reserved;
    if (!stream->ReadFull(frame->data(), h.length)) {
      FreeFrame(frame);
      break;
    }
    auto call = std::make_shared<PendingCall>();
    if (h.length > 0) {
      grpc::Slice slice(grpc_slice_new_with_user_data(frame->data(), h.length, FreeFrame, frame),
                        grpc::Slice::STEAL_REF);
      call->request = grpc::ByteBuffer(&slice, 1);
    } else {
      FreeFrame(frame);
    }
    frames->Increment();
    {
      absl::MutexLock lock(&conn->mu);
      ++conn->in_flight;
    }
    {
      absl::MutexLock lock(&mu);
      ++calls;
    }
    service->RunBulk(
        MethodOf(h.method), &call->request, &call->response,
        [this, conn, call, ticket, id = h.call_id](const grpc::Status& status, uint64_t epoch,
                                                   bool reroute, uint32_t retry_after_ms) {
          conn->Respond(id, status, epoch, reroute, std::move(call->response), false,
                        retry_after_ms);
          {
            absl::MutexLock lock(&conn->mu);
            --conn->in_flight;
          }
          absl::MutexLock lock(&mu);
          --calls;  // the last use of the plane
        });
  }
  {
    absl::MutexLock lock(&conn->mu);
    conn->reader_done = true;
  }
  if (conn->writer.joinable()) conn->writer.join();
  absl::MutexLock lock(&mu);
  conn->finished = true;
}

}  // namespace tessera
