// `tessera local --serve` (docs/online_serving.md): a tessera-serving replica follows the job's
// checkpoints while it trains; afterwards a last version, and the test AUC computed from the
// replica's lookups at that version against the AUC from the trainers' parameters.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "client/admin.h"
#include "client/client.h"
#include "client/serving_client.h"
#include "common/auth.h"
#include "testing/local_cluster.h"
#include "tools/commands.h"
#include "worker/ctr_trainer.h"
#include "worker/job.h"

namespace tessera {

struct LocalServing {
  Spawned process;
  std::string checkpoint_dir;
  std::unique_ptr<ServingClient> client;
  Credentials credentials;        // the cluster's, for the last round and the trainers' pulls
  double publish_interval_s = 0;  // > 0: this process publishes (checkpoint rounds)
  std::atomic<bool> stop{false};
  std::thread watcher;
  std::thread publisher;
  absl::Mutex mu;
  std::vector<double> staleness ABSL_GUARDED_BY(mu);  // sampled every 100 ms while training
  std::atomic<uint64_t> published{0}, publish_failures{0};

  void StopThreads() {
    stop = true;
    if (watcher.joinable()) watcher.join();
    if (publisher.joinable()) publisher.join();
  }

  ~LocalServing() {
    StopThreads();
    kill(process.pid, SIGTERM);
    WaitChild(process.pid, absl::Seconds(20));
  }
};

void LocalServingDeleter::operator()(LocalServing* s) const { delete s; }

absl::StatusOr<std::unique_ptr<LocalServing, LocalServingDeleter>> StartLocalServing(
    const std::string& checkpoint_dir, const std::string& log_dir, const LocalCluster& cluster,
    double publish_interval_s) {
  std::unique_ptr<LocalServing, LocalServingDeleter> s(new LocalServing);
  s->checkpoint_dir = checkpoint_dir;
  s->publish_interval_s = publish_interval_s;
  s->credentials = cluster.ClientCredentials(kRoleAdmin | kRoleWorker | kRoleReader);
  std::vector<std::string> args = {SiblingBinary("tessera-serving", "serving"), "--port=0",
                                   "--metrics_port=0", "--poll_ms=200",
                                   "--checkpoint_dir=" + checkpoint_dir};
  if (!cluster.auth_token_file().empty()) {
    args.push_back("--auth_token_file=" + cluster.auth_token_file());
  }
  if (!s->credentials.tls_ca_file.empty()) {
    args.push_back("--tls_ca_file=" + s->credentials.tls_ca_file);
    args.push_back("--tls_cert_file=" + s->credentials.tls_cert_file);
    args.push_back("--tls_key_file=" + s->credentials.tls_key_file);
  }
  absl::StatusOr<Spawned> p =
      SpawnDaemon(args, "tessera-serving", log_dir + "/serving.log", absl::Seconds(60));
  if (!p.ok()) return p.status();
  s->process = *p;
  const std::string address = absl::StrCat("127.0.0.1:", p->port);
  absl::StatusOr<std::unique_ptr<ServingClient>> client =
      ServingClient::Connect({.replicas = {address}, .credentials = s->credentials});
  if (!client.ok()) return client.status();
  s->client = *std::move(client);
  std::printf("serving: tessera-serving on %s (metrics on port %d) follows %s; its log: %s\n",
              address.c_str(), p->metrics_port, checkpoint_dir.c_str(),
              (log_dir + "/serving.log").c_str());
  LocalServing* raw = s.get();
  s->watcher = std::thread([raw] {
    uint64_t shown = 0;
    while (!raw->stop.load()) {
      absl::StatusOr<ServingStatusInfo> st = raw->client->Status(0);
      if (st.ok() && st->version != 0) {
        absl::MutexLock lock(&raw->mu);
        raw->staleness.push_back(st->staleness_seconds);
      }
      if (st.ok() && st->version != shown) {
        shown = st->version;
        uint64_t rows = 0;
        for (const auto& t : st->tables) rows += t.rows;
        std::printf("  [serving] version %lu: %zu tables, %lu rows, %.1f s since its cut\n",
                    st->version, st->tables.size(), rows, st->staleness_seconds);
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });
  if (publish_interval_s > 0) {
    const std::string coordinator = cluster.coordinator_address();
    s->publisher = std::thread([raw, coordinator] {
      absl::Time next = absl::Now();
      while (!raw->stop.load()) {
        next += absl::Seconds(raw->publish_interval_s);
        absl::StatusOr<std::vector<std::string>> primaries =
            PrimaryAddresses(coordinator, raw->credentials);
        absl::StatusOr<CheckpointRoundResult> r =
            primaries.ok() ? RunCheckpointRound({.dir = raw->checkpoint_dir,
                                                 .servers = *primaries,
                                                 .keep_last = 3,
                                                 .credentials = raw->credentials})
                           : primaries.status();
        if (r.ok()) {
          ++raw->published;
        } else {
          ++raw->publish_failures;
        }
        while (!raw->stop.load() && absl::Now() < next) absl::SleepFor(absl::Milliseconds(20));
      }
    });
  }
  return s;
}

bool FinishLocalServing(LocalServing& s, const v1::JobConfig& job, const LocalCluster& cluster) {
  s.StopThreads();
  {
    absl::MutexLock lock(&s.mu);
    std::vector<double>& v = s.staleness;
    if (!v.empty()) {
      std::sort(v.begin(), v.end());
      const double p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
      std::printf(
          "serving: staleness while training p50 %.2f s, p99 %.2f s, max %.2f s (%zu "
          "samples)",
          v[v.size() / 2], p99, v.back(), v.size());
      if (s.publish_interval_s > 0) {
        std::printf(
            "; a version every %.1f s (%lu published, %lu rounds failed): p99 = %.2fx "
            "the interval",
            s.publish_interval_s, s.published.load(), s.publish_failures.load(),
            p99 / s.publish_interval_s);
      }
      std::printf("\n");
    }
  }
  auto fail = [](const std::string& what, const absl::Status& st) {
    std::printf("serving: %s: %s\n", what.c_str(), st.ToString().c_str());
    return false;
  };
  // A last version, taken once training stopped: the trainers hold exactly it.
  absl::StatusOr<std::vector<std::string>> primaries =
      PrimaryAddresses(cluster.coordinator_address(), s.credentials);
  if (!primaries.ok()) return fail("the primaries", primaries.status());
  absl::StatusOr<CheckpointRoundResult> round = RunCheckpointRound(
      {.dir = s.checkpoint_dir, .servers = *primaries, .credentials = s.credentials});
  if (!round.ok()) return fail("the last version", round.status());
  const uint64_t version = round->id;
  const absl::Time start = absl::Now();
  absl::StatusOr<ServingStatusInfo> st;
  while (absl::Now() - start < absl::Seconds(120)) {
    st = s.client->Status(0);
    if (st.ok() && st->version >= version) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  if (!st.ok() || st->version != version) {
    return fail(absl::StrFormat("the replica did not reach version %u", version),
                st.ok() ? absl::DeadlineExceededError(st->last_error) : st.status());
  }
  std::printf("serving: version %lu (the last checkpoint) served %.1f s after it was taken\n",
              version, absl::ToDoubleSeconds(absl::Now() - start));
  absl::StatusOr<PreparedJob> prepared = PrepareJob(job);
  if (!prepared.ok()) return fail("the job's test data", prepared.status());
  if (!prepared->test_auc) {
    std::printf("serving: this job has no test AUC to compare (the CTR jobs do)\n");
    return true;
  }
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect({.coordinator = cluster.coordinator_address(), .credentials = s.credentials});
  if (!client.ok()) return fail("a client of the trainers", client.status());
  ServingClient& serving = *s.client;
  const ParameterReader lookups = {
      .sparse =
          [&](const std::string& table, absl::Span<const uint64_t> keys, absl::Span<float> rows) {
            return serving.Lookup(table, keys, rows, version).status();
          },
      .dense = [&](const std::string& table, absl::Span<float> values) -> absl::Status {
        std::vector<float> all;
        absl::StatusOr<uint64_t> v = serving.LookupDense(table, &all, version);
        if (!v.ok()) return v.status();
        if (all.size() != values.size()) {
          return absl::InternalError(absl::StrFormat("table '%s': %u values, %u expected", table,
                                                     all.size(), values.size()));
        }
        std::copy(all.begin(), all.end(), values.begin());
        return absl::OkStatus();
      }};
  absl::StatusOr<double> from_serving = prepared->test_auc(lookups);
  if (!from_serving.ok()) return fail("the AUC from serving lookups", from_serving.status());
  absl::StatusOr<double> from_trainers = prepared->test_auc(PullsFrom(**client));
  if (!from_trainers.ok()) return fail("the AUC from the trainers", from_trainers.status());
  const bool equal = *from_serving == *from_trainers;
  std::printf(
      "serving: test AUC from serving lookups at version %lu %.6f, from the trainers' "
      "parameters %.6f: %s\n",
      version, *from_serving, *from_trainers,
      equal ? "equal" : "DIFFERENT (the replica does not hold the trainers' weights)");
  return equal;
}

}  // namespace tessera
