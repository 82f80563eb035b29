#include "common/process_metrics.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/auth.h"
#include "common/byte_stream.h"
#include "common/call_limiter.h"
#include "common/socket_io.h"
#include "common/tls.h"

namespace tessera {
namespace {

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return prometheus::MetricFamily{name, help, type, {m}};
}

// Open file descriptors of this process (entries of /proc/self/fd, less the one reading it).
int OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int n = 0;
  while (const dirent* e = readdir(dir)) n += e->d_name[0] != '.';
  closedir(dir);
  return n - 1;
}

// The soft limit on open files, from /proc/self/limits; -1 when unknown or unlimited.
double MaxFds() {
  std::ifstream in("/proc/self/limits");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream fields(line.substr(14));
    std::string soft;
    fields >> soft;
    return soft == "unlimited" ? -1 : std::stod(soft);
  }
  return -1;
}

// Seconds since the epoch at boot (btime of /proc/stat); -1 when unknown.
double BootTime() {
  std::ifstream in("/proc/stat");
  std::string key;
  double value;
  while (in >> key) {
    if (key == "btime" && in >> value) return value;
    in.ignore(1 << 20, '\n');
  }
  return -1;
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  std::vector<prometheus::MetricFamily> out;
  // /proc/self/stat: after "(comm)", field 3 is the state; utime 14, stime 15, num_threads 20,
  // starttime 22 (clock ticks after boot), vsize 23 (bytes), rss 24 (pages).
  std::ifstream in("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');
  if (close != std::string::npos) {
    std::istringstream fields(stat.substr(close + 2));
    std::vector<std::string> f(3);  // f[k] is field k (1 and 2, pid and comm, are not used)
    std::string token;
    while (fields >> token) f.push_back(token);
    if (f.size() > 24) {
      const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
      const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
      out.push_back(Family("process_cpu_seconds_total", "User and system CPU time spent, seconds.",
                           prometheus::MetricType::Counter,
                           (std::stod(f[14]) + std::stod(f[15])) / ticks));
      out.push_back(Family("process_threads", "Threads of this process.",
                           prometheus::MetricType::Gauge, std::stod(f[20])));
      out.push_back(Family("process_virtual_memory_bytes", "Virtual memory size, bytes.",
                           prometheus::MetricType::Gauge, std::stod(f[23])));
      out.push_back(Family("process_resident_memory_bytes", "Resident memory size, bytes.",
                           prometheus::MetricType::Gauge, std::stod(f[24]) * page));
      if (const double boot = BootTime(); boot >= 0) {
        out.push_back(Family("process_start_time_seconds",
                             "Start time of the process since the Unix epoch, seconds.",
                             prometheus::MetricType::Gauge, boot + std::stod(f[22]) / ticks));
      }
    }
  }
  if (const int fds = OpenFds(); fds >= 0) {
    out.push_back(
        Family("process_open_fds", "Open file descriptors.", prometheus::MetricType::Gauge, fds));
  }
  if (const double max = MaxFds(); max >= 0) {
    out.push_back(Family("process_max_fds", "Limit on open file descriptors.",
                         prometheus::MetricType::Gauge, max));
  }
  return out;
}

void StopExposer(std::unique_ptr<prometheus::Exposer>& exposer, const std::string& host) {
  if (exposer == nullptr) return;
  const std::vector<int> ports = exposer->GetListeningPorts();
  in_addr address{};
  if (host.empty() || host == "0.0.0.0" || inet_pton(AF_INET, host.c_str(), &address) != 1) {
    address.s_addr = htonl(INADDR_LOOPBACK);
  }
  std::atomic<bool> stopped{false};
  std::thread waker([&] {
    // 400 x 5 ms: no longer than civetweb would have taken by itself.
    for (int i = 0; i < 400 && !stopped.load(); ++i) {
      for (int port : ports) {
        const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) continue;
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr = address;
        a.sin_port = htons(static_cast<uint16_t>(port));
        (void)connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
        close(fd);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  exposer.reset();
  stopped.store(true);
  waker.join();
}

// The TLS front of a MetricsServer: accepts TLS connections on the configured port and, for
// each, passes the request (with "Connection: close") to the exposer's loopback port and its
// answer back. A connection at a time per thread, at most kMaxConnections at once (more are
// closed), each bounded by kTimeoutMs for the handshake, the request and the answer.
struct MetricsServer::TlsFront {
  static constexpr int kMaxConnections = 16;
  static constexpr int kTimeoutMs = 10000;
  static constexpr size_t kMaxRequestBytes = 16 << 10;

  Listener listener;
  std::shared_ptr<SSL_CTX> ctx;
  int backend_port = 0;
  std::thread acceptor;
  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  int active ABSL_GUARDED_BY(mu) = 0;

  ~TlsFront() {
    {
      absl::MutexLock lock(&mu);
      stopping = true;
    }
    if (acceptor.joinable()) acceptor.join();
    ::close(listener.fd);
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &active));
  }

  void AcceptLoop() {
    for (;;) {
      {
        absl::MutexLock lock(&mu);
        if (stopping) return;
      }
      pollfd p{listener.fd, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const int fd = ::accept4(listener.fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      {
        absl::MutexLock lock(&mu);
        if (stopping || active >= kMaxConnections) {
          ::close(fd);
          continue;
        }
        ++active;
      }
      std::thread([this, fd] {
        Serve(fd);
        ::close(fd);
        absl::MutexLock lock(&mu);
        --active;  // (the last use of `this`)
      }).detach();
    }
  }

  void Serve(int fd) {
    absl::StatusOr<std::unique_ptr<ByteStream>> tls = AcceptTls(fd, ctx.get(), kTimeoutMs);
    if (!tls.ok()) return;
    // The request's head (a GET has no body), then its headers without Connection.
    std::string head;
    char buf[4096];
    while (head.find("\r\n\r\n") == std::string::npos) {
      const ssize_t n = (*tls)->ReadSome(buf, sizeof(buf), kTimeoutMs);
      if (n <= 0 || head.size() + static_cast<size_t>(n) > kMaxRequestBytes) return;
      head.append(buf, static_cast<size_t>(n));
    }
    std::string request;
    for (absl::string_view line : absl::StrSplit(head.substr(0, head.find("\r\n\r\n")), "\r\n")) {
      if (absl::StartsWithIgnoreCase(line, "connection:")) continue;
      absl::StrAppend(&request, line, "\r\n");
    }
    absl::StrAppend(&request, "Connection: close\r\n\r\n");
    absl::StatusOr<int> backend = ConnectTcp("127.0.0.1", backend_port, kTimeoutMs);
    if (!backend.ok()) return;
    std::unique_ptr<ByteStream> plain = PlainStream(*backend);
    std::vector<iovec> iov = {{request.data(), request.size()}};
    if (plain->WriteAll(iov)) {
      for (;;) {
        const ssize_t n = plain->ReadSome(buf, sizeof(buf), kTimeoutMs);
        if (n <= 0) break;
        std::vector<iovec> out = {{buf, static_cast<size_t>(n)}};
        if (!(*tls)->WriteAll(out)) break;
      }
    }
    plain.reset();
    ::close(*backend);
  }
};

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host, int port, const MetricsSecurity& security) {
  std::unique_ptr<MetricsServer> m(new MetricsServer());
  m->host_ = host;
  const bool tls = !security.tls_cert_file.empty() || !security.tls_key_file.empty();
  BasicAuthUsers users;
  if (!security.basic_auth_file.empty()) {
    absl::StatusOr<BasicAuthUsers> read = ReadBasicAuthUsers(security.basic_auth_file);
    if (!read.ok()) return read.status();
    users = *std::move(read);
  }
  std::unique_ptr<TlsFront> front;
  if (tls) {
    front = std::make_unique<TlsFront>();
    absl::StatusOr<std::shared_ptr<SSL_CTX>> ctx =
        ServerTlsContext({security.tls_cert_file, security.tls_key_file, ""});
    if (!ctx.ok()) return ctx.status();
    front->ctx = *std::move(ctx);
    absl::StatusOr<Listener> listener = ListenTcp(host, port);
    if (!listener.ok()) return listener.status();
    front->listener = *listener;
  }
  // With TLS the exposer is the front's, on a loopback port of its own.
  const std::string bind = tls ? std::string("127.0.0.1:0") : absl::StrFormat("%s:%d", host, port);
  try {  // prometheus-cpp reports a failed start by throwing; converted here
    m->exposer_ = std::make_unique<prometheus::Exposer>(bind, /*num_threads=*/1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrFormat("cannot serve /metrics on %s: %s", bind, e.what()));
  }
  const std::vector<int> ports = m->exposer_->GetListeningPorts();
  const int exposer_port = ports.empty() ? -1 : ports.front();
  if (!users.empty()) {
    m->exposer_->RegisterAuth(
        [users](const std::string& user, const std::string& password) {
          bool ok = false;
          for (const auto& [u, p] : users) {
            ok |= EqualInConstantTime(u, user) & EqualInConstantTime(p, password);
          }  // (every user compared, whatever matched)
          return ok;
        },
        "tessera");
  }
  if (front != nullptr) {
    front->backend_port = exposer_port;
    m->port_ = front->listener.port;
    TlsFront* raw = front.get();
    front->acceptor = std::thread([raw] { raw->AcceptLoop(); });
    m->front_ = std::move(front);
  } else {
    m->port_ = exposer_port;
  }
  return m;
}

MetricsServer::~MetricsServer() {
  const std::string exposer_host = front_ != nullptr ? "127.0.0.1" : host_;
  front_.reset();
  StopExposer(exposer_, exposer_host);
}

void ExportCallLimitMetrics(CallLimiter& limiter, prometheus::Registry& registry) {
  auto* family = &prometheus::BuildCounter()
                      .Name("tessera_call_limit_refusals_total")
                      .Help(
                          "Calls refused RESOURCE_EXHAUSTED with a retry hint for a call limit "
                          "(docs/security.md, 'Abuse limits'), by limit: token_in_flight, "
                          "token_rate, connection_in_flight, connection_rate.")
                      .Register(registry);
  limiter.set_refusal_hook([family](const char* limit) {
    family->Add({{"limit", limit}}).Increment();
  });
}

void ExportAuthMetrics(Authenticator& auth, prometheus::Registry& registry) {
  auto* refusals = &prometheus::BuildCounter()
                        .Name("tessera_auth_refusals_total")
                        .Help(
                            "Calls refused before they were parsed (docs/security.md), by "
                            "method and code: UNAUTHENTICATED (no or unknown token) or "
                            "PERMISSION_DENIED (a token without the method's role).")
                        .Register(registry);
  auto* reloads = &prometheus::BuildCounter()
                       .Name("tessera_auth_reloads_total")
                       .Help(
                           "Reloads of --auth_token_file (SIGHUP), by outcome; a failed one "
                           "keeps the tokens in use.")
                       .Register(registry);
  prometheus::Counter* ok = &reloads->Add({{"outcome", "succeeded"}});
  prometheus::Counter* failed = &reloads->Add({{"outcome", "failed"}});
  auth.set_refusal_hook([refusals](absl::string_view method, grpc::StatusCode code) {
    refusals
        ->Add({{"method", std::string(method)},
               {"code", code == grpc::StatusCode::UNAUTHENTICATED ? "UNAUTHENTICATED"
                                                                  : "PERMISSION_DENIED"}})
        .Increment();
  });
  auth.set_reload_hook([ok, failed](bool succeeded) { (succeeded ? ok : failed)->Increment(); });
}

}  // namespace tessera
