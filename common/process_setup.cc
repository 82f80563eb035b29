#include "common/process_setup.h"

#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"

namespace tessera {

void SetUpProcess() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

namespace {

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  return set;
}

}  // namespace

void BlockStopSignals() {
  const sigset_t set = StopSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

const char* WaitForStopSignal(const std::function<absl::Status()>& reload) {
  const sigset_t set = StopSignals();
  for (;;) {
    int sig = 0;
    sigwait(&set, &sig);
    if (sig != SIGHUP) return sig == SIGTERM ? "SIGTERM" : "SIGINT";
    if (!reload) continue;
    if (absl::Status s = reload(); s.ok()) {
      LogInfo("SIGHUP: credentials reloaded");
    } else {
      LogError("SIGHUP: credentials kept: %s", s.ToString());
    }
  }
}

void WriteReadyLine(int fd, int port, int metrics_port) {
  if (fd < 0) return;
  const std::string line =
      absl::StrFormat("TESSERA_READY port=%d metrics_port=%d\n", port, metrics_port);
  if (write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    LogWarning("could not write the ready line to fd %d", fd);
  }
  close(fd);
}

}  // namespace tessera
