// Blocking socket I/O for the data plane (docs/data_plane.md): whole reads and gathered writes
// that retry on EINTR and short transfers. POSIX only; no gRPC.
#ifndef TESSERA_COMMON_SOCKET_IO_H_
#define TESSERA_COMMON_SOCKET_IO_H_

#include <sys/uio.h>

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

// Reads exactly n bytes; false on EOF or an error (errno says which; 0 at EOF).
bool ReadFull(int fd, void* buf, size_t n);
// Reads and drops n bytes through a 64 KiB buffer; false on EOF or an error.
bool Discard(int fd, size_t n);
// Writes every byte of iov[0..count) (which it consumes); false on an error. Never raises
// SIGPIPE.
bool WriteAll(int fd, std::vector<iovec>& iov);
// Writes iov[*first..] (consuming it, advancing *first) until all is sent, or, unless `block`,
// until the socket takes no more without waiting. Never raises SIGPIPE.
enum class WriteResult { kDone, kWouldBlock, kError };
WriteResult WriteSome(int fd, std::vector<iovec>& iov, size_t* first, bool block);

// A listening TCP socket on address:port (port 0: a free one), with its port.
struct Listener {
  int fd = -1;
  int port = 0;
};
absl::StatusOr<Listener> ListenTcp(const std::string& address, int port);
// A connected TCP socket to host:port within timeout_ms, TCP_NODELAY set; blocking afterwards.
absl::StatusOr<int> ConnectTcp(const std::string& host, int port, int timeout_ms);
// Sets TCP_NODELAY on a connected socket (buffer sizes stay auto-tuned).
void TuneSocket(int fd);

}  // namespace tessera

#endif  // TESSERA_COMMON_SOCKET_IO_H_
