// An all-reduce group of training workers over Gloo's TCP transport (docs/dense_allreduce.md,
// "The group"): one generation of a job's workers, connected through a rendezvous store, summing
// float tensors in place with Gloo's ring algorithm. Gloo reports failures by exceptions; this
// is the one adapter that turns them into statuses, and a group that failed once refuses every
// later call (a new generation is a new group). No Gloo header here.
#ifndef TESSERA_WORKER_ALLREDUCE_H_
#define TESSERA_WORKER_ALLREDUCE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace tessera {

// Where the members of a generation find each other: Gloo writes each rank's address under a
// key and waits for its peers'. The coordinator's keys (per job and generation) in production;
// an in-memory store in tests.
class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;
  // The values of `keys`, waiting until every one is set or `timeout` passed
  // (DEADLINE_EXCEEDED).
  virtual absl::StatusOr<std::vector<std::string>> Get(const std::vector<std::string>& keys,
                                                       absl::Duration timeout) = 0;
};

// A store in this process (tests, and threads of one process).
class InMemoryRendezvousStore : public RendezvousStore {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::vector<std::string>> Get(const std::vector<std::string>& keys,
                                               absl::Duration timeout) override;

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

struct AllReduceOptions {
  std::string hostname = "127.0.0.1";  // the address this rank listens on
  // Every wait (rendezvous, each exchange) is bounded by this: the job's worker lease.
  absl::Duration timeout = absl::Seconds(5);
  // Each Sum is cut into buckets of about this many bytes (one Gloo call each).
  size_t bucket_bytes = size_t{4} << 20;
  // Keys are prefixed with this (the job and generation: "allreduce/JOB/G/").
  std::string prefix;
};

class AllReduceGroup {
 public:
  // Connects rank `rank` of `size` to its peers through `store` (which must outlive the call
  // only). INVALID_ARGUMENT for a rank outside [0, size); UNAVAILABLE or DEADLINE_EXCEEDED when
  // the peers cannot be reached within the timeout.
  static absl::StatusOr<std::unique_ptr<AllReduceGroup>> Create(int rank, int size,
                                                                RendezvousStore* store,
                                                                const AllReduceOptions& options);
  ~AllReduceGroup();

  // Sums `values` over the group in place: on success every rank holds the same sum, bit for
  // bit. On an error (a peer gone: UNAVAILABLE; silent past the timeout: DEADLINE_EXCEEDED)
  // `values` is undefined, and the group refuses every later call (FAILED_PRECONDITION).
  // Not for concurrent use.
  absl::Status Sum(absl::Span<float> values);

  // Rank `root`'s `values` to every rank, bit for bit (in buckets, as Sum). The same errors.
  absl::Status Broadcast(int root, absl::Span<float> values);

  int rank() const;
  int size() const;

  struct Impl;

 private:
  explicit AllReduceGroup(std::unique_ptr<Impl> impl);
  // Runs `run(data, n, tag)` over `values` in buckets; a Gloo exception fails the group.
  absl::Status Collective(const char* what, absl::Span<float> values,
                          const std::function<void(float*, size_t, uint32_t)>& run);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_WORKER_ALLREDUCE_H_
