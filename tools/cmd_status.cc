// `tessera status`: the cluster as the coordinator sees it (client/admin.h FormatClusterStatus).
#include <cstdio>

#include "client/admin.h"
#include "tools/commands.h"

namespace tessera {

int RunStatus(const std::string& coordinator, bool json, const Credentials& credentials) {
  if (coordinator.empty()) {
    std::fprintf(stderr, "tessera status: --coordinator=host:port is required\n");
    return 2;
  }
  absl::StatusOr<std::string> text = FormatClusterStatus(coordinator, json, credentials);
  if (!text.ok()) {
    std::fprintf(stderr, "tessera status: %s\n", text.status().ToString().c_str());
    return 1;
  }
  std::fputs(text->c_str(), stdout);
  return 0;
}

}  // namespace tessera
