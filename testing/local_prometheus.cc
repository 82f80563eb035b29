#include "testing/local_prometheus.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/http_get.h"
#include "testing/local_cluster.h"

namespace tessera {
namespace {

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '_' || c == '-' || c == '.') {
      out.push_back(static_cast<char>(c));
    } else {
      out += absl::StrFormat("%%%02X", c);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("bind: ", strerror(errno)));
  return ntohs(a.sin_port);
}

absl::StatusOr<std::unique_ptr<LocalPrometheus>> LocalPrometheus::Start(
    const std::string& dir, const Targets& targets, absl::Duration interval,
    const std::vector<std::string>& rule_files, const Scrape& scrape) {
  const std::string binary = "/usr/bin/prometheus";
  if (!std::filesystem::exists(binary)) {
    return absl::FailedPreconditionError(
        "Prometheus is not installed (Debian's package prometheus; tools/setup.sh installs it)");
  }
  absl::StatusOr<int> port = FreeLoopbackPort();
  if (!port.ok()) return port.status();
  const std::string every = absl::StrCat(absl::ToInt64Milliseconds(interval), "ms");
  std::string config =
      absl::StrCat("global:\n  scrape_interval: ", every, "\n  evaluation_interval: ", every, "\n");
  if (!rule_files.empty()) {
    absl::StrAppend(&config, "rule_files:\n");
    for (const std::string& f : rule_files) absl::StrAppend(&config, "  - ", f, "\n");
  }
  absl::StrAppend(&config, "scrape_configs:\n");
  for (const auto& [job, hosts] : targets) {
    absl::StrAppend(&config, "  - job_name: ", job, "\n    static_configs:\n      - targets: ['",
                    absl::StrJoin(hosts, "', '"), "']\n");
    if (!scrape.ca_file.empty()) {
      absl::StrAppend(&config,
                      "    scheme: https\n    tls_config:\n      ca_file: ", scrape.ca_file, "\n");
    }
    if (!scrape.username.empty()) {
      absl::StrAppend(&config, "    basic_auth:\n      username: ", scrape.username,
                      "\n      password: ", scrape.password, "\n");
    }
  }
  if (!(std::ofstream(dir + "/prometheus.yml") << config)) {
    return absl::InternalError(absl::StrCat("cannot write ", dir, "/prometheus.yml"));
  }
  std::vector<std::string> args = {binary, "--config.file=" + dir + "/prometheus.yml",
                                   "--storage.tsdb.path=" + dir + "/prometheus-data",
                                   absl::StrCat("--web.listen-address=127.0.0.1:", *port),
                                   "--log.level=warn"};
  const int log =
      open((dir + "/prometheus.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log < 0) return absl::InternalError(absl::StrCat("cannot open ", dir, "/prometheus.log"));
  const pid_t pid = SpawnChild(std::move(args), log);
  close(log);
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  auto p = std::unique_ptr<LocalPrometheus>(new LocalPrometheus());
  p->port_ = *port;
  p->pid_ = pid;
  // Ready once its HTTP API answers (bounded).
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!HttpGet(p->port_, "/-/ready", absl::Seconds(1)).ok()) {
    if (absl::Now() >= deadline || waitpid(pid, nullptr, WNOHANG) == pid) {
      return absl::UnavailableError(
          absl::StrCat("Prometheus did not come up; see ", dir, "/prometheus.log"));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return p;
}

LocalPrometheus::~LocalPrometheus() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  WaitChild(pid_, absl::Seconds(10));  // (SIGKILL after that)
}

std::string LocalPrometheus::url() const { return absl::StrCat("http://127.0.0.1:", port_); }

double LocalPrometheus::Query(const std::string& promql) const {
  absl::StatusOr<std::string> body = HttpGet(port_, "/api/v1/query?query=" + UrlEncode(promql));
  if (!body.ok()) return NAN;
  const size_t at = body->find("\"value\":[");
  if (at == std::string::npos) return NAN;
  const size_t comma = body->find(',', at);
  const size_t quote = comma == std::string::npos ? comma : body->find('"', comma + 1);
  return quote == std::string::npos ? NAN : std::atof(body->c_str() + quote + 1);
}

double LocalPrometheus::AwaitValue(const std::string& promql, double want,
                                   absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  double v = NAN;
  while (absl::Now() < deadline) {
    v = Query(promql);
    if (v == want) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  return v;
}

}  // namespace tessera
