#include "common/logging.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tessera {
namespace {

absl::Mutex tag_mu;
std::string& Tag() ABSL_EXCLUSIVE_LOCKS_REQUIRED(tag_mu) {
  static std::string* tag = new std::string("tessera");
  return *tag;
}

thread_local std::string* thread_sink = nullptr;
thread_local bool thread_discard = false;

}  // namespace

void SetThreadLogSink(std::string* sink, bool discard) {
  thread_sink = sink;
  thread_discard = sink == nullptr && discard;
}

bool ThreadLogDiscarded() { return thread_discard; }

void SetLogTag(absl::string_view tag) {
  absl::MutexLock lock(&tag_mu);
  Tag() = std::string(tag);
}

void LogLine(LogSeverity severity, absl::string_view message) {
  const char sev = severity == LogSeverity::kInfo      ? 'I'
                   : severity == LogSeverity::kWarning ? 'W'
                                                       : 'E';
  if (thread_discard) return;
  if (thread_sink != nullptr) {
    absl::StrAppend(thread_sink, std::string(1, sev), " ", message, "\n");
    return;
  }
  std::string tag;
  {
    absl::MutexLock lock(&tag_mu);
    tag = Tag();
  }
  std::string line = absl::StrFormat(
      "%c%s %s] %s\n", sev, absl::FormatTime("%H:%M:%E3S", absl::Now(), absl::LocalTimeZone()), tag,
      message);
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n <= 0) break;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace tessera
