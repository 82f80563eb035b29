// Creates a sparse and a dense table on a running tessera-server, pushes, pulls (blocking, and
// through Call handles) and checks what came back; exits 0 when everything matches.
// Usage: consumer HOST:PORT
#include <tessera/client/client.h>

#include <cstdio>
#include <memory>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer HOST:PORT\n");
    return 2;
  }
  tessera::ClientOptions options;
  options.servers = {argv[1]};
  absl::StatusOr<std::unique_ptr<tessera::Client>> client = tessera::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    return 1;
  }
  tessera::TableConfig emb{.name = "emb", .kind = tessera::TableKind::kSparse, .dim = 4};
  emb.optimizer.kind = tessera::OptimizerKind::kAssign;
  tessera::TableConfig dense{.name = "w", .kind = tessera::TableKind::kDense, .dense_size = 8};
  dense.optimizer.kind = tessera::OptimizerKind::kSgd;
  dense.optimizer.learning_rate = 0.5f;
  for (const tessera::TableConfig& t : {emb, dense}) {
    if (absl::StatusOr<tessera::TableConfig> r = (*client)->CreateTable(t); !r.ok()) {
      std::fprintf(stderr, "create %s: %s\n", t.name.c_str(), r.status().ToString().c_str());
      return 1;
    }
  }
  const std::vector<uint64_t> keys = {7, 1ull << 40};
  const std::vector<float> rows = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<float> got(rows.size());
  absl::Status s = (*client)->PushSparse("emb", keys, rows);
  if (s.ok()) s = (*client)->PullSparse("emb", keys, absl::MakeSpan(got));
  if (!s.ok() || got != rows) {
    std::fprintf(stderr, "sparse round trip: %s\n", s.ToString().c_str());
    return 1;
  }
  // Asynchronous, through handles (tessera/client/call.h), the gradient owned by the call.
  tessera::Call push = (*client)->PushDenseAsync("w", 0, std::vector<float>(8, 2.0f));
  s = tessera::Call::All({push}).Wait();  // w = 0 - 0.5 * 2 = -1 everywhere
  tessera::Result<std::vector<float>> pulled = (*client)->PullDenseAsync("w", 0, 8);
  absl::StatusOr<std::vector<float>> w = s.ok() ? pulled.Take() : s;
  if (!w.ok() || *w != std::vector<float>(8, -1.0f)) {
    std::fprintf(stderr, "dense round trip: %s\n", w.status().ToString().c_str());
    return 1;
  }
  std::printf("consumer: sparse and dense round trips through tessera::client OK\n");
  return 0;
}
