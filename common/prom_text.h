// Reading Prometheus text exposition (what /metrics serves), for the CLI and the tests.
#ifndef TESSERA_COMMON_PROM_TEXT_H_
#define TESSERA_COMMON_PROM_TEXT_H_

#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace tessera {

struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses every sample line (comments and malformed lines are skipped).
std::vector<PromSample> ParsePromText(absl::string_view text);

// Sum of the samples named `name` whose labels include every pair in `match`.
double SumSamples(const std::vector<PromSample>& samples, absl::string_view name,
                  const std::map<std::string, std::string>& match = {});

}  // namespace tessera

#endif  // TESSERA_COMMON_PROM_TEXT_H_
