#ifndef TESSERA_COMMON_PROCESS_SETUP_H_
#define TESSERA_COMMON_PROCESS_SETUP_H_

#include <functional>

#include "absl/status/status.h"

namespace tessera {

// Process-wide settings every Tessera daemon, tool and benchmark applies first thing in main():
// - glibc malloc keeps large freed buffers instead of returning them to the kernel and faulting
//   them back in on the next request (on this class of VM that costs more than gRPC itself; see
//   docs/design.md, "Performance");
// - Abseil's mutex deadlock detection is off (Debian builds Abseil with it on; it costs a
//   graph lookup on every lock).
void SetUpProcess();

// Daemons: blocks SIGTERM, SIGINT and SIGHUP in every thread (call before any thread starts)
// so that only WaitForStopSignal() sees them, and ignores SIGPIPE.
void BlockStopSignals();
// Waits for SIGTERM or SIGINT and returns its name; runs `reload` on every SIGHUP meanwhile
// (re-reading credentials: docs/security.md) and logs its outcome.
const char* WaitForStopSignal(const std::function<absl::Status()>& reload = nullptr);
// Writes "TESSERA_READY port=P metrics_port=M" to `fd` and closes it (nothing when fd < 0).
void WriteReadyLine(int fd, int port, int metrics_port);

}  // namespace tessera

#endif  // TESSERA_COMMON_PROCESS_SETUP_H_
