// `tessera bench --suite=serving` (docs/online_serving.md, docs/benchmarks.md): a 2-server
// cluster with a checkpoint directory, a table of --serving_rows rows x 16 floats (Adagrad), a
// tessera-serving replica following the checkpoints, all on this machine's cores, and then:
//   1. lookups of 1,000 random keys a call from --serving_threads threads (a client each):
//      keys/s, p50, p99, while no version arrives;
//   2. lookups while versions apply: a pusher at --serving_push_keys_per_s and a checkpoint
//      (a version) every --serving_publish_s, the training side at --serving_training_nice:
//      p99 over (1) (goal <= 1.5x);
//   3. rollback to V-2 while lookups go on: time until lookups answer at V-2, lookup errors;
//   4. staleness p99 while pushes run at full speed and a version is taken every
//      --serving_stale_interval_s (goal < 2x the interval);
//   5. a last version: every row looked up equals the trainers' pull, bit for bit;
//   6. Redis (redis-server from PATH, private, no persistence) holding the same rows as 64-byte
//      values under the same 8-byte keys: MGET of 1,000 random keys from the same number of
//      threads, a connection each: keys/s, p99, and the ratio (goal >= 5x).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/admin.h"
#include "client/client.h"
#include "client/serving_client.h"
#include "testing/local_cluster.h"
#include "testing/local_prometheus.h"
#include "tools/bench_report.h"
#include "tools/commands.h"

namespace tessera {
namespace {

constexpr uint32_t kDim = 16;
constexpr size_t kBatch = 1000;

struct LatencyStats {
  double keys_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  uint64_t calls = 0;
  uint64_t errors = 0;
};

LatencyStats Summarize(std::vector<double> ms, double seconds, uint64_t errors) {
  LatencyStats s;
  s.calls = ms.size();
  s.errors = errors;
  if (ms.empty()) return s;
  std::sort(ms.begin(), ms.end());
  s.p50_ms = ms[ms.size() / 2];
  s.p99_ms = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
  s.keys_per_s = static_cast<double>(ms.size() * kBatch) / seconds;
  return s;
}

// Runs `call(thread, rng)` from `threads` threads for `seconds` (one warm-up call each), each
// call 1,000 keys; false from call counts an error.
template <typename Call>
LatencyStats Measure(int threads, double seconds, Call call) {
  std::vector<std::vector<double>> ms(threads);
  std::atomic<uint64_t> errors{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(1000 + t);
      call(t, rng);
      while (!stop.load()) {
        const auto start = std::chrono::steady_clock::now();
        if (!call(t, rng)) ++errors;
        ms[t].push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                .count());
      }
    });
  }
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& w : workers) w.join();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::vector<double> all;
  for (auto& v : ms) all.insert(all.end(), v.begin(), v.end());
  return Summarize(std::move(all), elapsed, errors.load());
}

// A minimal RESP client for MSET and MGET of 8-byte keys (no library: none is in the build).
class Redis {
 public:
  ~Redis() {
    if (fd_ >= 0) close(fd_);
  }
  bool Connect(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return false;
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return true;
  }
  bool Mset(const uint64_t* keys, size_t n, const float* rows) {
    std::string cmd = absl::StrCat("*", 1 + 2 * n, "\r\n$4\r\nMSET\r\n");
    for (size_t i = 0; i < n; ++i) {
      Bulk(&cmd, &keys[i], 8);
      Bulk(&cmd, &rows[i * kDim], kDim * 4);
    }
    if (!Send(cmd)) return false;
    std::string line;
    return ReadLine(&line) && line == "+OK";
  }
  // Rows of `keys` into out (n x kDim); false on any error or a missing key.
  bool Mget(const uint64_t* keys, size_t n, float* out) {
    std::string cmd = absl::StrCat("*", 1 + n, "\r\n$4\r\nMGET\r\n");
    for (size_t i = 0; i < n; ++i) Bulk(&cmd, &keys[i], 8);
    if (!Send(cmd)) return false;
    std::string line;
    if (!ReadLine(&line) || line != absl::StrCat("*", n)) return false;
    for (size_t i = 0; i < n; ++i) {
      if (!ReadLine(&line) || line != absl::StrCat("$", kDim * 4)) return false;
      if (!ReadExact(&out[i * kDim], kDim * 4 + 2)) return false;
    }
    return true;
  }

 private:
  static void Bulk(std::string* out, const void* data, size_t n) {
    absl::StrAppend(out, "$", n, "\r\n");
    out->append(static_cast<const char*>(data), n);
    out->append("\r\n");
  }
  bool Send(const std::string& s) {
    for (size_t off = 0; off < s.size();) {
      const ssize_t w = send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (w <= 0) return false;
      off += static_cast<size_t>(w);
    }
    return true;
  }
  bool Fill() {
    if (pos_ > 0) {
      buf_.erase(0, pos_);
      pos_ = 0;
    }
    char tmp[1 << 16];
    const ssize_t r = recv(fd_, tmp, sizeof(tmp), 0);
    if (r <= 0) return false;
    buf_.append(tmp, static_cast<size_t>(r));
    return true;
  }
  bool ReadLine(std::string* line) {
    while (true) {
      const size_t end = buf_.find("\r\n", pos_);
      if (end != std::string::npos) {
        line->assign(buf_, pos_, end - pos_);
        pos_ = end + 2;
        return true;
      }
      if (!Fill()) return false;
    }
  }
  // n bytes, the last two ("\r\n") dropped.
  bool ReadExact(void* out, size_t n) {
    while (buf_.size() - pos_ < n) {
      if (!Fill()) return false;
    }
    std::memcpy(out, buf_.data() + pos_, n - 2);
    pos_ += n;
    return true;
  }
  int fd_ = -1;
  std::string buf_;
  size_t pos_ = 0;
};

std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (const auto& dir : absl::StrSplit(path != nullptr ? path : "/usr/bin:/usr/sbin", ':')) {
    const std::string p = absl::StrCat(dir, "/", name);
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

void Line(const BenchCommandOptions& o, const std::string& name, double value,
          const std::string& unit, const std::string& extra, const std::string& detail) {
  PrintBenchLine({name, value, unit, extra, detail}, o.json);
}

std::string StatsExtra(const LatencyStats& s) {
  return absl::StrFormat(",\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"calls\":%u,\"errors\":%u", s.p50_ms,
                         s.p99_ms, s.calls, s.errors);
}

}  // namespace

int RunServingBench(const BenchCommandOptions& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto fail = [&](const absl::Status& s) {
    std::fprintf(stderr, "tessera bench --suite=serving: %s\n", s.ToString().c_str());
    return 1;
  };
  const std::string dir = o.checkpoint_dir.empty()
                              ? absl::StrCat(std::filesystem::temp_directory_path().string(),
                                             "/tessera-serving-bench-", getpid())
                              : o.checkpoint_dir;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  LocalClusterOptions co;
  co.server_binary = LocalCluster::DefaultServerBinary();
  co.num_servers = 2;
  co.extra_args = {"--checkpoint_dir=" + dir};
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = LocalCluster::Start(co);
  if (!cluster.ok()) return fail(cluster.status());
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect({.servers = (*cluster)->addresses()});
  if (!client.ok()) return fail(client.status());
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = kDim};
  emb.optimizer.kind = OptimizerKind::kAdagrad;
  emb.initializer = {.kind = InitializerKind::kNormal, .seed = 1};
  if (auto r = (*client)->CreateTable(emb); !r.ok()) return fail(r.status());
  std::vector<uint64_t> keys(o.serving_rows);
  {
    std::mt19937_64 rng(1);
    for (uint64_t& k : keys) k = rng();
  }
  std::vector<float> grads(100000 * kDim, 0.5f);
  for (size_t i = 0; i < keys.size(); i += 100000) {
    const size_t n = std::min<size_t>(100000, keys.size() - i);
    if (absl::Status s = (*client)->PushSparse("emb", absl::MakeSpan(&keys[i], n),
                                               absl::MakeSpan(grads.data(), n * kDim));
        !s.ok()) {
      return fail(s);
    }
  }
  auto checkpoint = [&]() -> absl::StatusOr<uint64_t> {
    absl::StatusOr<CheckpointRoundResult> r =
        RunCheckpointRound({.dir = dir, .servers = (*cluster)->addresses()});
    if (!r.ok()) return r.status();
    return r->id;
  };
  absl::StatusOr<uint64_t> first = checkpoint();
  if (!first.ok()) return fail(first.status());

  absl::StatusOr<Spawned> serving =
      SpawnDaemon({SiblingBinary("tessera-serving", "serving"), "--port=0", "--metrics_port=-1",
                   "--poll_ms=100", "--checkpoint_dir=" + dir},
                  "tessera-serving", "", absl::Seconds(60));
  if (!serving.ok()) return fail(serving.status());
  struct Stop {
    pid_t pid;
    ~Stop() {
      kill(pid, SIGTERM);
      WaitChild(pid, absl::Seconds(20));
    }
  } stop_serving{serving->pid};
  const std::string address = absl::StrCat("127.0.0.1:", serving->port);
  const int threads = std::max(1, o.serving_threads);
  absl::StatusOr<std::unique_ptr<ServingClient>> sc =
      ServingClient::Connect({.replicas = {address}});
  if (!sc.ok()) return fail(sc.status());
  auto wait_version = [&](uint64_t v) -> absl::Status {
    const absl::Time deadline = absl::Now() + absl::Minutes(5);
    while (absl::Now() < deadline) {
      absl::StatusOr<ServingStatusInfo> s = (*sc)->Status(0);
      if (s.ok() && s->version >= v) return absl::OkStatus();
      absl::SleepFor(absl::Milliseconds(20));
    }
    return absl::DeadlineExceededError(absl::StrFormat("the replica did not reach version %u", v));
  };
  const absl::Time load_start = absl::Now();
  if (absl::Status s = wait_version(*first); !s.ok()) return fail(s);
  Line(o, "serving_bootstrap", absl::ToDoubleSeconds(absl::Now() - load_start), "s",
       absl::StrFormat(",\"rows\":%u", keys.size()),
       absl::StrFormat("%u rows x %u floats read from a full checkpoint", keys.size(), kDim));

  // One client (one channel) per lookup thread, as separate inference processes would have.
  std::vector<std::unique_ptr<ServingClient>> clients;
  for (int t = 0; t < threads; ++t) {
    clients.push_back(*ServingClient::Connect({.replicas = {address}}));
  }
  std::atomic<uint64_t> last_version{0};
  auto lookup = [&](int t, std::mt19937_64& rng) {
    uint64_t batch[kBatch];
    for (uint64_t& k : batch) k = keys[rng() % keys.size()];
    std::vector<float> out(kBatch * kDim);
    absl::StatusOr<uint64_t> v =
        clients[t]->Lookup("emb", absl::MakeSpan(batch, kBatch), absl::MakeSpan(out));
    if (v.ok()) last_version.store(*v);
    return v.ok();
  };
  Measure(threads, 1, lookup);  // warm-up: connections, both copies' pages
  const LatencyStats quiet = Measure(threads, o.seconds_per_workload, lookup);
  Line(o, "serving_lookup_1000", quiet.keys_per_s / 1e6, "Mkeys/s", StatsExtra(quiet),
       absl::StrFormat("%d threads, no new version: p50 %.3f ms, p99 %.3f ms", threads,
                       quiet.p50_ms, quiet.p99_ms));

  // Training beside serving: a pusher (Adagrad, 10,000 distinct keys a push, at
  // `keys_per_s` or, 0, as fast as it goes), a checkpoint (a version) every `interval_s`, and
  // the replica's staleness sampled every 100 ms.
  struct Training {
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> pushed{0}, versions{0}, last_version{0};
    std::atomic<bool> failed{false};
    std::vector<double> staleness;
    std::vector<std::thread> threads;
    ~Training() { Stop(); }
    void Stop() {
      stop = true;
      for (auto& t : threads) t.join();
      threads.clear();
    }
    double StalenessP99() {
      std::sort(staleness.begin(), staleness.end());
      return staleness.empty()
                 ? 0
                 : staleness[std::min(staleness.size() - 1, staleness.size() * 99 / 100)];
    }
  };
  auto train = [&](Training* t, double keys_per_s, double interval_s, int nice) {
    t->threads.emplace_back([&, t, keys_per_s, nice] {
      if (nice != 0) setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice);
      std::mt19937_64 rng(7);
      const size_t n = std::min<size_t>(10000, keys.size());
      std::vector<float> g(n * kDim, 0.01f);
      const auto start = std::chrono::steady_clock::now();
      while (!t->stop.load()) {
        if (keys_per_s > 0) {
          const auto due =
              start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                          std::chrono::duration<double>(t->pushed.load() / keys_per_s));
          if (std::chrono::steady_clock::now() < due) {
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
            continue;
          }
        }
        // A window of distinct keys at a random place (a push refuses repeated keys).
        const size_t at = rng() % (keys.size() - n + 1);
        if (!(*client)->PushSparse("emb", absl::MakeSpan(&keys[at], n), g).ok()) {
          t->failed = true;
          break;
        }
        t->pushed += n;
      }
    });
    t->threads.emplace_back([&, t, interval_s, nice] {
      if (nice != 0) setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice);
      auto next = std::chrono::steady_clock::now();
      while (!t->stop.load()) {
        next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::duration<double>(interval_s));
        if (absl::StatusOr<uint64_t> id = checkpoint(); id.ok()) {
          ++t->versions;
          t->last_version = *id;
        } else {
          t->failed = true;
        }
        while (!t->stop.load() && std::chrono::steady_clock::now() < next) {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      }
    });
    t->threads.emplace_back([&, t] {
      while (!t->stop.load()) {
        absl::StatusOr<ServingStatusInfo> s = (*sc)->Status(0);
        if (s.ok()) t->staleness.push_back(s->staleness_seconds);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  };

  // 2. Lookups while versions apply: a version every publish interval, each changing the rows
  // a moderate pusher touched. The training side (servers, pusher, checkpoint rounds) runs at
  // --serving_training_nice (19) from here on: the figure is what applying versions costs the
  // replica, as on machines of its own, more than what training beside it on the same two
  // cores costs (0 measures that too).
  {
    if (o.serving_training_nice != 0) {
      for (size_t i = 0; i < (*cluster)->addresses().size(); ++i) {
        setpriority(PRIO_PROCESS, static_cast<id_t>((*cluster)->pid(static_cast<int>(i))),
                    o.serving_training_nice);
      }
    }
    Training t;
    train(&t, o.serving_push_keys_per_s, o.serving_publish_s, o.serving_training_nice);
    const uint64_t version_before = last_version.load();
    const double busy_seconds = std::max(o.seconds_per_workload, 3 * o.serving_publish_s);
    const LatencyStats busy = Measure(threads, busy_seconds, lookup);
    const uint64_t served_versions = last_version.load() - version_before;
    Line(o, "serving_lookup_1000_versions_applying", busy.keys_per_s / 1e6, "Mkeys/s",
         StatsExtra(busy) + absl::StrFormat(",\"p99_ratio\":%.3f,\"versions\":%u",
                                            busy.p99_ms / quiet.p99_ms, served_versions),
         absl::StrFormat("p50 %.3f ms, p99 %.3f ms = %.2fx the quiet p99 (goal <= 1.5x); %u "
                         "versions in %.0f s, each about %.0f rows changed (pushes of %.0f k "
                         "keys/s)",
                         busy.p50_ms, busy.p99_ms, busy.p99_ms / quiet.p99_ms, served_versions,
                         busy_seconds, o.serving_push_keys_per_s * o.serving_publish_s,
                         o.serving_push_keys_per_s / 1e3));

    // 3. Rollback to V-2 while the lookups go on.
    absl::StatusOr<ServingStatusInfo> before = (*sc)->Status(0);
    if (before.ok() && before->held_versions.size() >= 3) {
      const uint64_t target = before->held_versions[before->held_versions.size() - 3];
      std::atomic<bool> rolled{false};
      std::atomic<uint64_t> errors{0};
      std::thread looker([&] {
        std::mt19937_64 rng(99);
        while (!rolled.load()) {
          if (!lookup(0, rng)) ++errors;
        }
      });
      const auto t0 = std::chrono::steady_clock::now();
      absl::StatusOr<uint64_t> r = (*sc)->Rollback(0, target);
      std::mt19937_64 rng(5);
      while (r.ok() && last_version.load() != target &&
             std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
        lookup(threads - 1, rng);
      }
      const double rollback_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      rolled = true;
      looker.join();
      const uint64_t rollback_errors = errors.load() + (r.ok() ? 0 : 1);
      (void)(*sc)->Resume(0);
      Line(o, "serving_rollback", rollback_ms, "ms",
           absl::StrFormat(",\"to\":%u,\"errors\":%u", target, rollback_errors),
           absl::StrFormat("from version %u to %u until lookups answer at it (goal < 5 s); %u "
                           "lookup errors",
                           before->version, target, rollback_errors));
    } else {
      Line(o, "serving_rollback", -1, "ms", ",\"skipped\":true",
           "fewer than 3 versions held: not measured");
    }
  }

  // 4. Staleness while training runs at full speed beside the replica (on the same cores), at
  // its own priority again (raising it back needs CAP_SYS_NICE: without, it stays lower).
  if (o.serving_training_nice != 0) {
    for (size_t i = 0; i < (*cluster)->addresses().size(); ++i) {
      setpriority(PRIO_PROCESS, static_cast<id_t>((*cluster)->pid(static_cast<int>(i))), 0);
    }
  }
  {
    Training t;
    train(&t, 0, o.serving_stale_interval_s, 0);
    std::this_thread::sleep_for(std::chrono::duration<double>(3 * o.serving_stale_interval_s));
    t.Stop();
    const double p99 = t.StalenessP99();
    Line(o, "serving_staleness_p99", p99, "s",
         absl::StrFormat(",\"interval_s\":%.3f,\"samples\":%u,\"ratio\":%.3f,\"versions\":%u",
                         o.serving_stale_interval_s, t.staleness.size(),
                         p99 / o.serving_stale_interval_s, t.versions.load()),
         absl::StrFormat("= %.2fx the publish interval %.1f s (goal < 2x), pushes at full "
                         "speed: %.2f M keys in %.0f s%s",
                         p99 / o.serving_stale_interval_s, o.serving_stale_interval_s,
                         t.pushed.load() / 1e6, 3 * o.serving_stale_interval_s,
                         t.failed.load() ? "; a push or checkpoint failed" : ""));
  }

  // 5. Bit for bit: a last version, every row.
  absl::StatusOr<uint64_t> last = checkpoint();
  if (!last.ok()) return fail(last.status());
  if (absl::Status s = wait_version(*last); !s.ok()) return fail(s);
  uint64_t differ = 0;
  for (size_t i = 0; i < keys.size(); i += 100000) {
    const size_t n = std::min<size_t>(100000, keys.size() - i);
    std::vector<float> want(n * kDim), got(n * kDim);
    if (absl::Status s =
            (*client)->PullSparse("emb", absl::MakeSpan(&keys[i], n), absl::MakeSpan(want));
        !s.ok()) {
      return fail(s);
    }
    absl::StatusOr<uint64_t> v =
        (*sc)->Lookup("emb", absl::MakeSpan(&keys[i], n), absl::MakeSpan(got));
    if (!v.ok()) return fail(v.status());
    for (size_t j = 0; j < want.size(); ++j) differ += std::memcmp(&want[j], &got[j], 4) != 0;
  }
  Line(o, "serving_bit_exact", static_cast<double>(differ), "floats differ",
       absl::StrFormat(",\"rows\":%u,\"version\":%u", keys.size(), *last),
       absl::StrFormat("of %u rows x %u at version %u against the trainers' pulls (goal 0)",
                       keys.size(), kDim, *last));

  // 6. Redis MGET of the same rows.
  const std::string redis = FindOnPath("redis-server");
  if (redis.empty()) {
    Line(o, "redis_mget_1000", 0, "Mkeys/s", ",\"skipped\":true",
         "redis-server not installed (apt-get install redis-server): no comparison");
    return differ == 0 ? 0 : 2;
  }
  absl::StatusOr<int> port_or = FreeLoopbackPort();
  if (!port_or.ok()) return fail(port_or.status());
  const int port = *port_or;
  const std::string redis_dir = dir + "/redis";
  std::filesystem::create_directories(redis_dir);
  const pid_t redis_pid = SpawnChild(
      {redis, "--port", std::to_string(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
       "no", "--dir", redis_dir, "--protected-mode", "no", "--loglevel", "warning"},
      -1);
  struct StopRedis {
    pid_t pid;
    ~StopRedis() {
      kill(pid, SIGTERM);
      WaitChild(pid, absl::Seconds(20));
    }
  } stop_redis{redis_pid};
  std::vector<std::unique_ptr<Redis>> conns;
  for (int t = 0; t < threads; ++t) {
    auto c = std::make_unique<Redis>();
    bool ok = false;
    for (int attempt = 0; attempt < 200 && !ok; ++attempt) {
      c = std::make_unique<Redis>();
      ok = c->Connect(port);
      if (!ok) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    if (!ok) return fail(absl::UnavailableError("cannot connect to redis-server"));
    conns.push_back(std::move(c));
  }
  {
    std::vector<float> rows(kBatch * kDim);
    for (size_t i = 0; i < keys.size(); i += kBatch) {
      const size_t n = std::min(kBatch, keys.size() - i);
      if (absl::StatusOr<uint64_t> v = (*sc)->Lookup("emb", absl::MakeSpan(&keys[i], n),
                                                     absl::MakeSpan(rows.data(), n * kDim));
          !v.ok() || !conns[0]->Mset(&keys[i], n, rows.data())) {
        return fail(absl::InternalError("loading redis failed"));
      }
    }
  }
  const LatencyStats rs =
      Measure(threads, o.seconds_per_workload, [&](int t, std::mt19937_64& rng) {
        uint64_t batch[kBatch];
        for (uint64_t& k : batch) k = keys[rng() % keys.size()];
        std::vector<float> out(kBatch * kDim);
        return conns[t]->Mget(batch, kBatch, out.data());
      });
  Line(o, "redis_mget_1000", rs.keys_per_s / 1e6, "Mkeys/s", StatsExtra(rs),
       absl::StrFormat("%d connections: p50 %.3f ms, p99 %.3f ms", threads, rs.p50_ms, rs.p99_ms));
  Line(o, "serving_vs_redis", quiet.keys_per_s / rs.keys_per_s, "x",
       absl::StrFormat(",\"p99_ratio\":%.3f", rs.p99_ms / quiet.p99_ms),
       absl::StrFormat("lookups over MGET, same rows, batches and threads (goal >= 5x); Redis's "
                       "p99 is %.2fx ours",
                       rs.p99_ms / quiet.p99_ms));
  return differ == 0 ? 0 : 2;
}

}  // namespace tessera
