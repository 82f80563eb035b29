// One result line of `tessera bench` suites: text for people, one JSON object for machines.
#ifndef TESSERA_TOOLS_BENCH_REPORT_H_
#define TESSERA_TOOLS_BENCH_REPORT_H_

#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"

namespace tessera {

struct BenchLine {
  std::string workload;
  double value;
  std::string unit;
  std::string extra;  // more JSON fields, starting with a comma
  std::string detail;
};

inline void PrintBenchLine(const BenchLine& l, bool json) {
  if (json) {
    std::printf("%s\n", absl::StrFormat("{\"workload\":\"%s\",\"value\":%.4g,\"unit\":\"%s\"%s,"
                                        "\"detail\":\"%s\"}",
                                        l.workload, l.value, l.unit, l.extra, l.detail)
                            .c_str());
  } else {
    std::printf("%-36s %10.3f %-8s %s\n", l.workload.c_str(), l.value, l.unit.c_str(),
                l.detail.c_str());
  }
}

}  // namespace tessera

#endif  // TESSERA_TOOLS_BENCH_REPORT_H_
