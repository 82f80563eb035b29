#include "client/internal/data_conn.h"

#include <grpc/slice.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/byte_stream.h"
#include "common/data_frame.h"
#include "common/socket_io.h"

namespace tessera::client_internal {

namespace df = data_frame;

namespace {
// The most payload one response may declare (a chunk is about ClientOptions::chunk_bytes).
constexpr uint32_t kMaxPayloadBytes = uint32_t{1} << 31;
constexpr int kPollMs = 100;
}  // namespace

absl::StatusOr<std::shared_ptr<DataConn>> DataConn::Open(const std::string& host, int port,
                                                         int timeout_ms, const std::string& token,
                                                         SSL_CTX* tls) {
  absl::StatusOr<int> fd = ConnectTcp(host, port, timeout_ms);
  if (!fd.ok()) return fd.status();
  const std::string peer = absl::StrFormat("%s:%d", host, port);
  std::unique_ptr<ByteStream> stream;
  if (tls != nullptr) {
    absl::StatusOr<std::unique_ptr<ByteStream>> s = ConnectTls(*fd, tls, host, timeout_ms);
    if (!s.ok()) {
      ::close(*fd);
      return absl::Status(s.status().code(),
                          absl::StrFormat("data plane at %s: %s", peer, s.status().message()));
    }
    stream = *std::move(s);
  } else {
    stream = PlainStream(*fd);
  }
  std::string client_hello = df::ClientHello(token);
  char hello[df::kHandshakeBytes];
  std::vector<iovec> iov = {{client_hello.data(), client_hello.size()}};
  if (!stream->WriteAll(iov) || !stream->ReadFullWithin(hello, sizeof(hello), timeout_ms) ||
      !df::HandshakeOk(hello)) {
    stream.reset();
    ::close(*fd);
    return absl::UnavailableError(
        absl::StrFormat("data plane at %s: no handshake (not a Tessera data plane of frame "
                        "version %u, over its connection limit, or a token it refuses)",
                        peer, df::kVersion));
  }
  std::shared_ptr<DataConn> conn(new DataConn(*fd, std::move(stream), peer));
  conn->reader_ = std::thread([self = conn]() mutable { self->ReadLoop(std::move(self)); });
  return conn;
}

DataConn::~DataConn() {
  // The reader holds a reference while it runs, so this runs on it (when it ends) or after it.
  if (reader_.joinable()) {
    if (reader_.get_id() == std::this_thread::get_id()) {
      reader_.detach();
    } else {
      reader_.join();
    }
  }
  stream_.reset();  // (TLS state first, then the socket)
  ::close(fd_);
}

bool DataConn::broken() const {
  absl::MutexLock lock(&mu_);
  return !broken_.empty();
}

void DataConn::Close(const std::string& why) {
  absl::MutexLock lock(&mu_);
  if (broken_.empty()) broken_ = why;
  stream_->Shutdown();  // the reader sees the end and fails what is in flight
}

void DataConn::Retire(const std::string& why) {
  absl::MutexLock lock(&mu_);
  if (!broken_.empty() || !retiring_.empty()) return;
  retiring_ = why;
  if (pending_.empty()) {
    broken_ = why;
    stream_->Shutdown();  // (nothing to wait for: the reader ends now)
  }
}

bool DataConn::RetiredAndIdle() {
  absl::MutexLock lock(&mu_);
  if (retiring_.empty() || !pending_.empty()) return false;
  if (broken_.empty()) broken_ = retiring_;
  return true;
}

void DataConn::Call(uint16_t method, const grpc::ByteBuffer& request, grpc::ByteBuffer* response,
                    absl::Time deadline, Done done) {
  df::RequestHeader h;
  std::string why;
  {
    absl::MutexLock lock(&mu_);
    if (broken_.empty() && retiring_.empty()) {
      h.call_id = next_id_++;
      pending_.emplace(h.call_id, Pending{response, deadline, std::move(done)});
    } else {
      why = broken_.empty() ? retiring_ : broken_;
    }
  }
  if (!why.empty()) return done(grpc::Status(grpc::StatusCode::UNAVAILABLE, why), {});
  h.method = method;
  h.length = static_cast<uint32_t>(request.Length());
  char header[df::kRequestHeaderBytes];
  df::Put(h, header);
  std::vector<grpc::Slice> slices;
  std::vector<iovec> iov = {{header, sizeof(header)}};
  if (request.Length() > 0 && request.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) iov.push_back({const_cast<uint8_t*>(s.begin()), s.size()});
  }
  bool ok;
  {
    absl::MutexLock lock(&write_mu_);
    ok = stream_->WriteAll(iov);
  }
  if (!ok) {
    Close(absl::StrFormat("data plane at %s: cannot send: %s", peer_, std::strerror(errno)));
  }
}

void DataConn::FailExpired() {
  const absl::Time now = absl::Now();
  last_sweep_ = now;
  std::vector<Done> expired;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->second.deadline <= now) {
        expired.push_back(std::move(it->second.done));
        pending_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  for (Done& d : expired) {
    d(grpc::Status(
          grpc::StatusCode::DEADLINE_EXCEEDED,
          absl::StrFormat("no answer from the data plane at %s before the deadline", peer_)),
      {});
  }
}

bool DataConn::Read(void* buf, size_t n, bool between_frames) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    if (absl::Now() - last_sweep_ > absl::Milliseconds(kPollMs)) {
      FailExpired();
      // (A retired connection whose last call expired: no answer is coming that anyone
      // waits for. Only between frames: inside one, its call is being answered.)
      if (between_frames && p == buf && RetiredAndIdle()) {
        return false;
      }
    }
    const ssize_t r = stream_->ReadSome(p, n, kPollMs);
    if (r == -2) continue;  // (nothing yet: deadlines are checked again)
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

void DataConn::ReadLoop(std::shared_ptr<DataConn> self) {
  std::string why = absl::StrFormat("data plane at %s: connection closed by the server", peer_);
  for (;;) {
    if (RetiredAndIdle()) break;  // every call it had is answered
    char raw[df::kResponseHeaderBytes];
    if (!Read(raw, sizeof(raw), /*between_frames=*/true)) break;
    const df::ResponseHeader h = df::GetResponse(raw);
    if (const char* problem = df::ResponseHeaderProblem(h, kMaxPayloadBytes); problem != nullptr) {
      why = absl::StrFormat("data plane at %s: malformed response (%s)", peer_, problem);
      break;
    }
    std::string message(h.message_length, '\0');
    if (!Read(message.data(), message.size())) break;
    Pending call{nullptr, absl::InfiniteFuture(), nullptr};
    {
      absl::MutexLock lock(&mu_);
      auto it = pending_.find(h.call_id);
      if (it != pending_.end()) {
        call = std::move(it->second);
        pending_.erase(it);
      }
    }
    if (call.done == nullptr) {  // expired (answered already): drop its payload
      std::vector<char> scratch(std::min<size_t>(h.payload_length, 64 << 10));
      size_t left = h.payload_length;
      bool ok = true;
      while (ok && left > 0) {
        const size_t step = std::min(left, scratch.size());
        ok = Read(scratch.data(), step);
        left -= step;
      }
      if (!ok) break;
      continue;
    }
    if (h.code != 0) {
      call.done(grpc::Status(static_cast<grpc::StatusCode>(h.code), message),
                {(h.flags & df::kFlagReroute) != 0, h.retry_after_ms});
      continue;
    }
    grpc::Slice payload(grpc_slice_malloc(h.payload_length), grpc::Slice::STEAL_REF);
    if (!Read(const_cast<uint8_t*>(payload.begin()), h.payload_length)) {
      call.done(grpc::Status(grpc::StatusCode::UNAVAILABLE, why), {});
      break;
    }
    *call.response = grpc::ByteBuffer(&payload, 1);
    call.done(grpc::Status::OK, {});
  }
  absl::flat_hash_map<uint32_t, Pending> failed;
  {
    absl::MutexLock lock(&mu_);
    if (broken_.empty()) broken_ = why;
    why = broken_;
    failed.swap(pending_);
  }
  stream_->Shutdown();
  for (auto& [id, call] : failed) call.done(grpc::Status(grpc::StatusCode::UNAVAILABLE, why), {});
  // `self` goes last: this object may end here, on its own thread.
}

}  // namespace tessera::client_internal
