// `tessera local-cluster`: a testing/ LocalCluster driven over a line protocol on stdin and
// stdout, for python/tessera/testing.py (docs/python.md, "Local clusters"). The Python package
// thereby uses the same harness as the C++ tests without its native module linking testing/
// (docs/layout.md). The protocol, one request line and one answer line at a time:
//
//   option NAME VALUE   before start; NAME: server_binary, coordinator_binary, num_servers,
//                       replication, num_shards, log_dir, server_arg, coordinator_arg (the last
//                       two repeat; VALUE is the rest of the line)
//   start               starts the cluster and waits until it serves
//   addresses | metrics_ports | coordinator_address | pid I | replicas_of SHARD
//   stop_server I TIMEOUT_S | kill_server I | restart_server I | stop TIMEOUT_S
//
// Answers: "ok" followed by space-separated values, or "error CODE MESSAGE" with CODE the
// absl::StatusCode number. End of input (the Python process gone) stops the cluster; the
// controller also dies with its parent (PR_SET_PDEATHSIG), its servers with it.
#include <sys/prctl.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "testing/local_cluster.h"
#include "tools/commands.h"

namespace tessera {
namespace {

class Controller {
 public:
  explicit Controller(FILE* out) : out_(out) {}

  // Handles one request line; false once the cluster is stopped for good.
  bool Handle(const std::string& line) {
    std::vector<std::string> words = absl::StrSplit(line, absl::MaxSplits(' ', 2));
    const std::string& verb = words[0];
    if (verb == "option") return Answer(SetOption(words)), true;
    if (verb == "start") return Answer(Start()), true;
    if (cluster_ == nullptr) {
      Answer(absl::FailedPreconditionError(absl::StrCat("'", verb, "' needs a running cluster (",
                                                        stopped_ ? "it was stopped" : "send start",
                                                        ")")));
      return true;
    }
    if (verb == "addresses") return Answer(absl::StrJoin(cluster_->addresses(), " ")), true;
    if (verb == "metrics_ports") return Answer(absl::StrJoin(cluster_->metrics_ports(), " ")), true;
    if (verb == "coordinator_address") return Answer(cluster_->coordinator_address()), true;
    if (verb == "replicas_of") {
      uint32_t shard = 0;
      if (words.size() != 2 || !absl::SimpleAtoi(words[1], &shard)) return Usage(line), true;
      absl::StatusOr<std::vector<int>> r = cluster_->ReplicasOf(shard);
      if (!r.ok()) return Answer(r.status()), true;
      return Answer(absl::StrJoin(*r, " ")), true;
    }
    if (verb == "stop") {
      double timeout_s = 30;
      if (words.size() == 2 && !absl::SimpleAtod(words[1], &timeout_s)) return Usage(line), true;
      absl::Status s = cluster_->Stop(absl::Seconds(timeout_s));
      cluster_.reset();
      stopped_ = true;
      Answer(s);
      return false;
    }
    int i = -1;
    if (words.size() < 2 || !absl::SimpleAtoi(words[1], &i)) return Usage(line), true;
    if (i < 0 || static_cast<size_t>(i) >= cluster_->addresses().size()) {
      Answer(absl::OutOfRangeError(
          absl::StrCat("no server ", i, " in a cluster of ", cluster_->addresses().size())));
      return true;
    }
    if (verb == "pid") return Answer(absl::StrCat(cluster_->pid(i))), true;
    if (verb == "kill_server") return cluster_->KillServer(i), Answer(""), true;
    if (verb == "restart_server") return Answer(cluster_->RestartServer(i)), true;
    if (verb == "stop_server") {
      double timeout_s = 30;
      if (words.size() == 3 && !absl::SimpleAtod(words[2], &timeout_s)) return Usage(line), true;
      absl::StatusOr<int> code = cluster_->StopServer(i, absl::Seconds(timeout_s));
      if (!code.ok()) return Answer(code.status()), true;
      return Answer(absl::StrCat(*code)), true;
    }
    return Usage(line), true;
  }

  // End of input: whatever still runs is stopped.
  void Close() {
    if (cluster_ != nullptr) (void)cluster_->Stop(absl::Seconds(30));
    cluster_.reset();
  }

 private:
  absl::Status SetOption(const std::vector<std::string>& words) {
    if (cluster_ != nullptr || stopped_) {
      return absl::FailedPreconditionError("options are set before start");
    }
    if (words.size() != 3) return absl::InvalidArgumentError("usage: option NAME VALUE");
    const std::string& name = words[1];
    const std::string& value = words[2];
    auto number = [&](uint32_t* field) {
      return absl::SimpleAtoi(value, field)
                 ? absl::OkStatus()
                 : absl::InvalidArgumentError(absl::StrCat(name, " must be a number, not ", value));
    };
    if (name == "server_binary") return options_.server_binary = value, absl::OkStatus();
    if (name == "coordinator_binary") {
      return options_.coordinator_binary = value, absl::OkStatus();
    }
    if (name == "log_dir") return options_.log_dir = value, absl::OkStatus();
    if (name == "server_arg") return options_.extra_args.push_back(value), absl::OkStatus();
    if (name == "coordinator_arg") {
      return options_.coordinator_args.push_back(value), absl::OkStatus();
    }
    if (name == "num_servers") return number(&options_.num_servers);
    if (name == "replication") return number(&options_.replication);
    if (name == "num_shards") return number(&options_.num_shards);
    return absl::InvalidArgumentError(absl::StrCat("unknown option ", name));
  }

  absl::Status Start() {
    if (cluster_ != nullptr || stopped_) return absl::FailedPreconditionError("already started");
    if (options_.server_binary.empty())
      options_.server_binary = LocalCluster::DefaultServerBinary();
    absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(options_);
    if (!c.ok()) return c.status();
    cluster_ = *std::move(c);
    return absl::OkStatus();
  }

  void Usage(const std::string& line) {
    Answer(absl::InvalidArgumentError(absl::StrCat("cannot parse request '", line, "'")));
  }
  void Answer(const absl::Status& s) {
    if (s.ok()) return Answer("");
    std::string message = absl::StrReplaceAll(s.message(), {{"\n", " "}, {"\r", " "}});
    std::fprintf(out_, "error %d %s\n", static_cast<int>(s.code()), message.c_str());
    std::fflush(out_);
  }
  void Answer(const std::string& values) {
    std::fprintf(out_, values.empty() ? "ok\n" : "ok %s\n", values.c_str());
    std::fflush(out_);
  }

  FILE* out_;
  LocalClusterOptions options_;
  std::unique_ptr<LocalCluster> cluster_;
  bool stopped_ = false;
};

}  // namespace

int RunLocalClusterControl() {
  const pid_t parent = getppid();
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) return 1;  // the parent died before prctl took effect
  // Answers go to a private copy of stdout; stdout itself then points at stderr, so that what
  // the servers (which inherit it) print never mixes into the protocol.
  FILE* out = fdopen(dup(STDOUT_FILENO), "w");
  if (out == nullptr || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
    std::perror("tessera local-cluster: stdout");
    return 1;
  }
  Controller controller(out);
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    if (!controller.Handle(line)) return 0;
  }
  controller.Close();
  return 0;
}

}  // namespace tessera
