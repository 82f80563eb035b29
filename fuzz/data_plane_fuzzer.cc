// The data plane (docs/data_plane.md, D2): the input is written to a connection on a real
// in-process tessera server's data port, as a stranger's bytes: the first byte picks whether a
// correct handshake goes first (even) or not (odd), the rest is the stream (frame headers, request
// messages, bulk fields padded or not). The connection is then half-closed and every response
// read until the server closes it. The frames run through the same parse (in place, the pushes'
// keys and values viewed in the frame), budget, validation and apply as gRPC's; the responses
// are checked against the frame format. Any crash, sanitizer report, leak, hang or malformed
// response is a finding.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common/bulk_codec.h"
#include "common/data_frame.h"
#include "common/socket_io.h"
#include "fuzz/fuzz_util.h"
#include "proto/tessera.pb.h"
#include "server/core_test_util.h"
#include "server/server.h"

namespace tessera {
namespace {

namespace df = data_frame;
using namespace tessera::testing;  // NOLINT

Server& TheServer() {
  static Server* server = [] {
    ServerOptions o;
    o.port = 0;
    o.metrics_port = -1;
    o.max_request_bytes = 1 << 20;
    o.max_data_connections = 64;
    o.core.num_vshards = 16;
    o.core.apply_threads = 2;
    o.core.max_keys_per_request = 4096;
    o.core.max_dense_elems_per_request = 1 << 16;
    o.core.max_table_bytes = 64 << 20;
    o.core.max_memory_bytes = 512 << 20;
    o.core.max_response_bytes = 8 << 20;
    absl::StatusOr<std::unique_ptr<Server>> s = Server::Start(o);
    if (!s.ok()) std::abort();
    Server* raw = s->release();
    v1::CreateTableResponse r;
    (void)raw->core()->CreateTable(CreateReq(SparseConfig("s", 4, OptimizerKind::kAdam)), &r);
    (void)raw->core()->CreateTable(CreateReq(DenseConfig("d", 1000, 100, OptimizerKind::kAdagrad)),
                                   &r);
    return raw;
  }();
  return *server;
}

std::string Frame(uint32_t id, df::BulkMethod method, const std::string& payload) {
  char h[df::kRequestHeaderBytes];
  df::Put(df::RequestHeader{id, static_cast<uint16_t>(method), 0,
                            static_cast<uint32_t>(payload.size())},
          h);
  return std::string(h, sizeof(h)) + payload;
}

std::string Flatten(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!b.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

std::vector<std::string> Seeds() {
  std::vector<std::string> seeds;
  const std::string even(1, '\0');
  // A padded push as the client sends it, then a pull of its keys; a dense push and pull.
  v1::PushSparseRequest ps = SparsePushReq("s", 4, {1, 2, 3}, std::vector<float>(12, 0.5f), 9, 1);
  std::string keys = ps.keys(), values = ps.values();
  ps.clear_keys();
  ps.clear_values();
  const std::string padded = Flatten(
      EncodeWithBulk(ps,
                     {{v1::PushSparseRequest::kKeysFieldNumber, keys.data(), keys.size()},
                      {v1::PushSparseRequest::kValuesFieldNumber, values.data(), values.size()}},
                     v1::PushSparseRequest::kPaddingFieldNumber));
  seeds.push_back(
      even + Frame(1, df::BulkMethod::kPushSparse, padded) +
      Frame(2, df::BulkMethod::kPullSparse, SparsePullReq("s", 4, {1, 2, 3}).SerializeAsString()));
  seeds.push_back(
      even + Frame(3, df::BulkMethod::kPushDense,
                   DensePushReq("d", 90, std::vector<float>(30, 0.25f), 9, 2).SerializeAsString()));
  v1::PullDenseRequest pd;
  pd.mutable_header()->set_shard_map_epoch(1);
  pd.set_table("d");
  pd.set_dtype(v1::DTYPE_FLOAT32);
  pd.set_offset(10);
  pd.set_count(100);
  seeds.push_back(even + Frame(4, df::BulkMethod::kPullDense, pd.SerializeAsString()));
  seeds.push_back(std::string(1, '\1') + "TSDP\x07\0\0\0");  // a wrong version
  return seeds;
}

}  // namespace
}  // namespace tessera

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;  // NOLINT
  static const bool seeded = (fuzz::MaybeWriteSeeds(Seeds()), true);
  (void)seeded;
  if (size == 0) return 0;
  Server& server = TheServer();
  absl::StatusOr<int> fd = ConnectTcp("127.0.0.1", server.data_port(), 5000);
  if (!fd.ok()) std::abort();
  // Long enough for any answer; a stuck server is a finding (the read below fails).
  timeval tv{10, 0};
  ::setsockopt(*fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string stream;
  if (data[0] % 2 == 0) stream = df::ClientHello("");
  stream.append(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::vector<iovec> iov = {{stream.data(), stream.size()}};
  (void)WriteAll(*fd, iov);  // (the server may close early: a refusal)
  ::shutdown(*fd, SHUT_WR);
  // Everything the server answers, until it closes: a handshake (when one was sent), then
  // well-formed response frames.
  if (data[0] % 2 == 0) {
    char hello[df::kHandshakeBytes];
    if (ReadFull(*fd, hello, sizeof(hello)) && !df::HandshakeOk(hello)) std::abort();
  }
  for (;;) {
    char raw[df::kResponseHeaderBytes];
    if (!ReadFull(*fd, raw, sizeof(raw))) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) std::abort();  // no answer within 10 s
      break;
    }
    const df::ResponseHeader h = df::GetResponse(raw);
    if (df::ResponseHeaderProblem(h, 16 << 20) != nullptr) std::abort();
    if (!Discard(*fd, size_t{h.message_length} + h.payload_length)) break;
  }
  ::close(*fd);
  return 0;
}
