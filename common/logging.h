// Minimal line logging to stderr (Debian's Abseil has no absl/log). Thread-safe: each line is
// written with one write(2).
#ifndef TESSERA_COMMON_LOGGING_H_
#define TESSERA_COMMON_LOGGING_H_

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace tessera {

enum class LogSeverity { kInfo, kWarning, kError };

// Writes "<severity><time> <tag>] <message>\n" to stderr (or this thread's sink, below).
void LogLine(LogSeverity severity, absl::string_view message);

// Where this thread's lines go while set (tests: the control-plane simulation keeps a
// schedule's lines, without times, and prints them only when the schedule fails). A null
// sink with `discard` drops them unformatted; the default (null, false) is stderr.
void SetThreadLogSink(std::string* sink, bool discard = false);
bool ThreadLogDiscarded();

template <typename... Args>
void LogInfo(const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (!ThreadLogDiscarded()) LogLine(LogSeverity::kInfo, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogWarning(const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (!ThreadLogDiscarded()) LogLine(LogSeverity::kWarning, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogError(const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (!ThreadLogDiscarded()) LogLine(LogSeverity::kError, absl::StrFormat(format, args...));
}

// Sets the tag printed on every line (the program name, e.g. "server/0"). Call once in main().
void SetLogTag(absl::string_view tag);

}  // namespace tessera

#endif  // TESSERA_COMMON_LOGGING_H_
