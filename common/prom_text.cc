#include "common/prom_text.h"

#include <cstdlib>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tessera {

std::vector<PromSample> ParsePromText(absl::string_view text) {
  std::vector<PromSample> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    PromSample s;
    const size_t brace = line.find('{');
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    if (brace != absl::string_view::npos && brace < space) {
      const size_t close = line.find('}', brace);
      if (close == absl::string_view::npos) continue;
      s.name = std::string(line.substr(0, brace));
      for (absl::string_view pair :
           absl::StrSplit(line.substr(brace + 1, close - brace - 1), ',', absl::SkipEmpty())) {
        const size_t eq = pair.find('=');
        if (eq == absl::string_view::npos) continue;
        absl::string_view value = pair.substr(eq + 1);
        absl::ConsumePrefix(&value, "\"");
        absl::ConsumeSuffix(&value, "\"");
        s.labels[std::string(pair.substr(0, eq))] = std::string(value);
      }
    } else {
      s.name = std::string(line.substr(0, space));
    }
    const std::string value(line.substr(space + 1));
    char* end = nullptr;
    s.value = std::strtod(value.c_str(), &end);
    if (end == value.c_str()) continue;
    out.push_back(std::move(s));
  }
  return out;
}

double SumSamples(const std::vector<PromSample>& samples, absl::string_view name,
                  const std::map<std::string, std::string>& match) {
  double sum = 0;
  for (const PromSample& s : samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : match) {
      auto it = s.labels.find(k);
      ok = ok && it != s.labels.end() && it->second == v;
    }
    if (ok) sum += s.value;
  }
  return sum;
}

}  // namespace tessera
