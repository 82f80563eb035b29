// Creates a sparse and a dense table on a running tessera-server, pushes, pulls and checks what
// came back; exits 0 when everything matches. Usage: consumer HOST:PORT
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
  const std::vector<float> grad(8, 2.0f);  // w = 0 - 0.5 * 2 = -1 everywhere
  std::vector<float> w(8);
  s = (*client)->PushDense("w", 0, grad);
  if (s.ok()) s = (*client)->PullDense("w", 0, absl::MakeSpan(w));
  if (!s.ok() || w != std::vector<float>(8, -1.0f)) {
    std::fprintf(stderr, "dense round trip: %s (w[0]=%g)\n", s.ToString().c_str(), w[0]);
    return 1;
  }
  std::printf("consumer: sparse and dense round trips through tessera::client OK\n");
  return 0;
}
