// Admission accuracy of the count-min sketch (docs/embedding_lifecycle.md; issue 17's first
// acceptance figure): a Zipf(q) stream of draws over a vocabulary of keys, counted exactly and
// by per-vshard sketches of several widths, as a table would hold them; a key is admitted when
// its count reaches k. Prints one JSON line per width: false admissions (the sketch admitted a
// key the exact count never brought to k) over true admissions, keys the sketch missed (always
// 0: a sketch never counts low without aging), the sketch's bytes and the time per add; and one
// line for the exact count's memory. Not a test: nothing here is asserted.
//
//   build/server/tessera-lifecycle-bench [--keys=10000000] [--draws=10000000] [--q=1.1] [--k=3]
//                                        [--widths=...] [--depth=4] [--vshards=1024]
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/random/zipf_distribution.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/hash.h"
#include "common/shard_map.h"
#include "server/count_min_sketch.h"
#include "server/sparse_table.h"

ABSL_FLAG(uint64_t, keys, 10000000, "vocabulary: distinct keys the stream draws from");
ABSL_FLAG(uint64_t, draws, 10000000, "sightings in the stream");
ABSL_FLAG(double, q, 1.1, "Zipf exponent: key i is drawn with probability ~ (i + 1)^-q");
ABSL_FLAG(uint32_t, k, 3, "admission threshold: the k-th sighting admits a key");
ABSL_FLAG(std::string, widths, "1048576,2097152,4194304",
          "sketch widths to measure: counters per row over all vshards together");
ABSL_FLAG(uint32_t, depth, 4, "sketch rows");
ABSL_FLAG(uint32_t, vshards, 1024, "vshards: one sketch each, of width / vshards counters");
ABSL_FLAG(uint64_t, seed, 1, "stream and sketch seed");

namespace tessera {
namespace {

// Keys admitted (by `admitted`) that the exact count did not bring to k, and keys it did that
// were not admitted.
template <typename Admitted>
std::pair<uint64_t, uint64_t> CountErrors(const absl::flat_hash_map<uint64_t, uint32_t>& exact,
                                          uint32_t k, Admitted&& admitted) {
  uint64_t false_admissions = 0, missed = 0;
  for (const auto& [key, n] : exact) {
    const bool in = admitted(key);
    false_admissions += in && n < k;
    missed += !in && n >= k;
  }
  return {false_admissions, missed};
}

int Run() {
  const uint64_t vocabulary = absl::GetFlag(FLAGS_keys);
  const uint64_t draws = absl::GetFlag(FLAGS_draws);
  const uint32_t k = absl::GetFlag(FLAGS_k);
  const uint32_t vshards = absl::GetFlag(FLAGS_vshards);
  const uint32_t depth = absl::GetFlag(FLAGS_depth);
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  absl::zipf_distribution<uint64_t> zipf(vocabulary - 1, absl::GetFlag(FLAGS_q), 1.0);
  std::vector<uint64_t> stream(draws);
  absl::flat_hash_map<uint64_t, uint32_t> exact;
  for (uint64_t& key : stream) {
    key = Mix64(zipf(rng) + 1);  // (ids spread over the key space, as real ids hash)
    ++exact[key];
  }
  uint64_t admitted = 0;
  for (const auto& [key, n] : exact) admitted += n >= k;
  const size_t exact_bytes = exact.capacity() * (sizeof(uint64_t) + sizeof(uint32_t) + 1);
  std::printf(
      "{\"benchmark\":\"admission_exact\",\"draws\":%llu,\"vocabulary\":%llu,\"distinct\":%zu,"
      "\"k\":%u,\"admitted\":%llu,\"bytes\":%zu}\n",
      static_cast<unsigned long long>(draws), static_cast<unsigned long long>(vocabulary),
      exact.size(), k, static_cast<unsigned long long>(admitted), exact_bytes);
  for (const bool exact_counter : {false, true}) {
    // The table itself: a sparse table with admission at k (the default sketch, 2^21 x 4 over
    // its vshards, or the exact counter with its default 2^20 pending keys), every draw a push
    // of its key; the rows it holds against the exact count.
    TableConfig c{.name = "admission", .kind = TableKind::kSparse, .dim = 1};
    c.lifecycle.admission_min_count = k;
    c.lifecycle.admission_exact = exact_counter;
    absl::StatusOr<TableConfig> config = ResolveTableConfig(c);
    if (!config.ok()) {
      std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
      return 2;
    }
    SparseTable table(*config, std::vector<bool>(vshards, true));
    const float grad = 0.0f;
    VshardGrouping groups;
    const auto start = std::chrono::steady_clock::now();
    for (const uint64_t& key : stream) {
      GroupByVshard(absl::MakeConstSpan(&key, 1), vshards, &groups);
      table.Push(absl::MakeConstSpan(&key, 1), groups, &grad, 1);
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto [false_admissions, missed] =
        CountErrors(exact, k, [&](uint64_t key) { return table.HasRow(key); });
    std::printf(
        "{\"benchmark\":\"%s\",\"k\":%u,\"rows\":%llu,\"sketch_bytes\":%llu,"
        "\"false_admissions\":%llu,\"false_over_true\":%.5f,\"missed\":%llu,"
        "\"ns_per_push\":%.1f}\n",
        exact_counter ? "admission_table_exact" : "admission_table", k,
        static_cast<unsigned long long>(table.num_rows()),
        static_cast<unsigned long long>(table.sketch_bytes()),
        static_cast<unsigned long long>(false_admissions),
        admitted == 0 ? 0.0 : static_cast<double>(false_admissions) / admitted,
        static_cast<unsigned long long>(missed), seconds * 1e9 / draws);
  }
  for (absl::string_view w : absl::StrSplit(absl::GetFlag(FLAGS_widths), ',')) {
    uint64_t width = 0;
    if (!absl::SimpleAtoi(w, &width) || width < vshards) {
      std::fprintf(stderr, "--widths: '%s' is not a width of at least --vshards\n",
                   std::string(w).c_str());
      return 2;
    }
    std::vector<std::unique_ptr<CountMinSketch>> sketches;
    for (uint32_t v = 0; v < vshards; ++v) {
      sketches.push_back(std::make_unique<CountMinSketch>(static_cast<uint32_t>(width / vshards),
                                                          depth, absl::GetFlag(FLAGS_seed) + v));
    }
    const auto start = std::chrono::steady_clock::now();
    for (uint64_t key : stream) sketches[VshardOfKey(key, vshards)]->Add(key);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    size_t bytes = 0;
    for (const auto& s : sketches) bytes += s->bytes();
    const auto [false_admissions, missed] = CountErrors(exact, k, [&](uint64_t key) {
      return sketches[VshardOfKey(key, vshards)]->Estimate(key) >= k;
    });
    std::printf(
        "{\"benchmark\":\"admission_sketch\",\"width\":%llu,\"depth\":%u,\"vshards\":%u,"
        "\"bytes\":%zu,\"bytes_per_distinct_key\":%.2f,\"false_admissions\":%llu,"
        "\"false_over_true\":%.5f,\"missed\":%llu,\"ns_per_add\":%.1f}\n",
        static_cast<unsigned long long>(width), depth, vshards, bytes,
        static_cast<double>(bytes) / exact.size(),
        static_cast<unsigned long long>(false_admissions),
        admitted == 0 ? 0.0 : static_cast<double>(false_admissions) / admitted,
        static_cast<unsigned long long>(missed), seconds * 1e9 / draws);
  }
  return 0;
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return tessera::Run();
}
