// Lookups against serving replicas (docs/online_serving.md): what inference code links.
//
//   ServingClientOptions options;
//   options.replicas = {"10.0.0.5:7600", "10.0.0.6:7600"};   // or one DNS name
//   auto serving = ServingClient::Connect(options);
//   std::vector<float> rows(keys.size() * dim);
//   absl::StatusOr<uint64_t> version = (*serving)->Lookup("emb", keys, absl::MakeSpan(rows));
//
// Calls go round robin over the replicas; a replica that does not answer (UNAVAILABLE, a
// deadline) is skipped for the next one, so one replica down costs a retry, not an error.
#ifndef TESSERA_CLIENT_SERVING_CLIENT_H_
#define TESSERA_CLIENT_SERVING_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/credentials.h"
#include "common/export.h"

namespace tessera {

struct ServingClientOptions {
  // "host:port" of each serving replica (a DNS name resolving to several is one entry: gRPC
  // balances over its addresses).
  std::vector<std::string> replicas;
  Credentials credentials;
  int64_t rpc_timeout_ms = 5000;  // one attempt
  int max_attempts = 3;           // replicas tried per call
};

struct ServingTableStatus {
  std::string name;
  bool dense = false;
  uint32_t dim = 0;
  uint64_t dense_size = 0;
  uint64_t rows = 0;
  uint64_t digest = 0;
};

struct ServingStatusInfo {
  uint64_t version = 0;
  uint64_t newest_version = 0;
  std::vector<uint64_t> held_versions;
  bool pinned = false;
  double staleness_seconds = 0;
  uint64_t bytes = 0;
  std::string source;
  std::string last_error;
  std::vector<ServingTableStatus> tables;
};

// A lookup's answer when the caller does not know the table's width.
struct ServingRows {
  uint64_t version = 0;
  uint32_t dim = 0;
  std::vector<float> values;  // keys.size() x dim
  std::vector<bool> found;
};

class TESSERA_EXPORT ServingClient {
 public:
  static absl::StatusOr<std::unique_ptr<ServingClient>> Connect(
      const ServingClientOptions& options);
  ~ServingClient();

  // Rows of `keys` (values: keys.size() x dim) at `version` (0: the newest the replica serves)
  // and the version that answered; found[i] (when given: keys.size() entries) tells whether key
  // i has a row (else its values are the table's initializer's, as a trainer's pull answers).
  absl::StatusOr<uint64_t> Lookup(const std::string& table, absl::Span<const uint64_t> keys,
                                  absl::Span<float> values, uint64_t version = 0,
                                  std::vector<bool>* found = nullptr);
  // The same, sized by the answer.
  absl::StatusOr<ServingRows> LookupRows(const std::string& table, absl::Span<const uint64_t> keys,
                                         uint64_t version = 0);
  // A dense table's weights, whole.
  absl::StatusOr<uint64_t> LookupDense(const std::string& table, std::vector<float>* values,
                                       uint64_t version = 0);
  // Of replica `i` (an index into options.replicas).
  absl::StatusOr<ServingStatusInfo> Status(size_t i);
  absl::StatusOr<uint64_t> Rollback(size_t i, uint64_t version);
  absl::StatusOr<uint64_t> Resume(size_t i);

  struct Impl;

 private:
  explicit ServingClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_CLIENT_SERVING_CLIENT_H_
