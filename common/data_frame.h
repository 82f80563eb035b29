// Frame headers of the data plane (docs/data_plane.md), shared by client and server. Plain
// structs and byte-level codecs: no sockets, no gRPC.
#ifndef TESSERA_COMMON_DATA_FRAME_H_
#define TESSERA_COMMON_DATA_FRAME_H_

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

namespace tessera::data_frame {

inline constexpr char kMagic[4] = {'T', 'S', 'D', 'P'};
inline constexpr uint32_t kVersion = 3;
inline constexpr size_t kHandshakeBytes = 8;          // the server's answer: magic, version
inline constexpr size_t kClientHelloFixedBytes = 12;  // magic, version, token length
inline constexpr uint32_t kMaxHelloTokenBytes = 256;
inline constexpr size_t kRequestHeaderBytes = 12;
inline constexpr size_t kResponseHeaderBytes = 28;
inline constexpr uint32_t kMaxMessageBytes = 64 << 10;  // of a response's status message
inline constexpr uint16_t kFlagReroute = 1;

// The bulk methods, as numbered on the wire.
enum class BulkMethod : uint16_t {
  kPullSparse = 1,
  kPushSparse = 2,
  kPullDense = 3,
  kPushDense = 4
};
inline bool IsBulkMethod(uint16_t m) { return m >= 1 && m <= 4; }

struct RequestHeader {
  uint32_t call_id = 0;
  uint16_t method = 0;
  uint16_t flags = 0;
  uint32_t length = 0;
};

struct ResponseHeader {
  uint32_t call_id = 0;
  uint16_t code = 0;
  uint16_t flags = 0;
  uint32_t message_length = 0;
  uint32_t payload_length = 0;
  uint64_t epoch = 0;
  // A refusal for a limit (RESOURCE_EXHAUSTED): retry after this long (0: do not retry).
  uint32_t retry_after_ms = 0;
};

inline void PutHandshake(char* out) {
  std::memcpy(out, kMagic, 4);
  std::memcpy(out + 4, &kVersion, 4);
}
inline bool HandshakeOk(const char* in) {
  uint32_t version;
  std::memcpy(&version, in + 4, 4);
  return std::memcmp(in, kMagic, 4) == 0 && version == kVersion;
}

// The client's handshake: magic, version, u32 token length, the token (docs/security.md, "The
// data plane"; empty: none).
inline std::string ClientHello(const std::string& token) {
  std::string out(kClientHelloFixedBytes + token.size(), '\0');
  PutHandshake(out.data());
  const uint32_t n = static_cast<uint32_t>(token.size());
  std::memcpy(out.data() + 8, &n, 4);
  std::memcpy(out.data() + kClientHelloFixedBytes, token.data(), token.size());
  return out;
}
// The fixed part of a client's handshake: false unless magic, version and a token length of at
// most kMaxHelloTokenBytes.
inline bool ClientHelloOk(const char* in, uint32_t* token_length) {
  std::memcpy(token_length, in + 8, 4);
  return HandshakeOk(in) && *token_length <= kMaxHelloTokenBytes;
}

inline void Put(const RequestHeader& h, char* out) {
  std::memcpy(out, &h.call_id, 4);
  std::memcpy(out + 4, &h.method, 2);
  std::memcpy(out + 6, &h.flags, 2);
  std::memcpy(out + 8, &h.length, 4);
}
inline RequestHeader GetRequest(const char* in) {
  RequestHeader h;
  std::memcpy(&h.call_id, in, 4);
  std::memcpy(&h.method, in + 4, 2);
  std::memcpy(&h.flags, in + 6, 2);
  std::memcpy(&h.length, in + 8, 4);
  return h;
}

inline void Put(const ResponseHeader& h, char* out) {
  std::memcpy(out, &h.call_id, 4);
  std::memcpy(out + 4, &h.code, 2);
  std::memcpy(out + 6, &h.flags, 2);
  std::memcpy(out + 8, &h.message_length, 4);
  std::memcpy(out + 12, &h.payload_length, 4);
  std::memcpy(out + 16, &h.epoch, 8);
  std::memcpy(out + 24, &h.retry_after_ms, 4);
}
inline ResponseHeader GetResponse(const char* in) {
  ResponseHeader h;
  std::memcpy(&h.call_id, in, 4);
  std::memcpy(&h.code, in + 4, 2);
  std::memcpy(&h.flags, in + 6, 2);
  std::memcpy(&h.message_length, in + 8, 4);
  std::memcpy(&h.payload_length, in + 12, 4);
  std::memcpy(&h.epoch, in + 16, 8);
  std::memcpy(&h.retry_after_ms, in + 24, 4);
  return h;
}

// Why a request header cannot be served (nullptr: it can), given the server's frame limit.
inline const char* RequestHeaderProblem(const RequestHeader& h) {
  if (!IsBulkMethod(h.method)) return "unknown method";
  if (h.flags != 0) return "unknown flags";
  return nullptr;
}

// Why a response header cannot be accepted (nullptr: it can), given the most payload the client
// accepts.
inline const char* ResponseHeaderProblem(const ResponseHeader& h, uint32_t max_payload) {
  if (h.code > 16) return "status code out of range";
  if ((h.flags & ~kFlagReroute) != 0) return "unknown flags";
  if (h.message_length > kMaxMessageBytes) return "status message too long";
  if (h.payload_length > max_payload) return "payload too long";
  if (h.code != 0 && h.payload_length != 0) return "payload on an error";
  return nullptr;
}

}  // namespace tessera::data_frame

#endif  // TESSERA_COMMON_DATA_FRAME_H_
