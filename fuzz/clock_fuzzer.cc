// The coordinator's job clocks and dense all-reduce (docs/worker.md, docs/dense_allreduce.md):
// the bytes are records, each an operation byte, a 2-byte little-endian length and that many
// bytes: a JoinJobRequest (operation % 4 == 0), a ClockRequest (1), an AllReduceRequest (2), or
// time passing by `length` milliseconds with the leases that ran out ended (3). They are applied
// to one fresh JobClocks per input, as the coordinator applies its workers' calls.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "proto/cluster.pb.h"
#include "server/coordinator/job_clocks.h"

namespace tessera {
namespace {

void Append(int op, const google::protobuf::Message& m, std::string* out) {
  const std::string bytes = m.SerializeAsString();
  out->push_back(static_cast<char>(op));
  out->push_back(static_cast<char>(bytes.size() & 0xff));
  out->push_back(static_cast<char>(bytes.size() >> 8));
  out->append(bytes);
}

std::vector<std::string> Seeds() {
  // Two workers join a BSP job, ask for their group, set and get rendezvous keys, report and
  // ask for the decision; time passes; a clock call.
  std::string s;
  for (uint32_t w = 0; w < 2; ++w) {
    v1::JoinJobRequest join;
    join.mutable_spec()->set_job("j");
    join.mutable_spec()->set_num_workers(2);
    join.mutable_spec()->set_mode(v1::CONSISTENCY_MODE_BSP);
    join.mutable_spec()->set_worker_lease_ms(1000);
    join.set_worker(w);
    Append(0, join, &s);
  }
  for (uint32_t w = 0; w < 2; ++w) {
    v1::AllReduceRequest req;
    req.set_job("j");
    req.set_worker(w);
    req.set_worker_incarnation(w + 1);
    req.mutable_group()->set_step(1);
    req.mutable_group()->set_holds(true);
    Append(2, req, &s);
    v1::AllReduceRequest set = req;
    set.mutable_set()->set_generation(1);
    set.mutable_set()->set_key(std::to_string(w));
    set.mutable_set()->set_value("address");
    Append(2, set, &s);
    v1::AllReduceRequest get = req;
    get.mutable_get()->set_generation(1);
    get.mutable_get()->add_keys("0");
    get.mutable_get()->add_keys("1");
    Append(2, get, &s);
    v1::AllReduceRequest report = req;
    report.mutable_report()->set_step(1);
    report.mutable_report()->set_generation(1);
    report.mutable_report()->set_reduced(true);
    Append(2, report, &s);
    v1::AllReduceRequest decision = req;
    decision.mutable_decision()->set_step(1);
    decision.mutable_decision()->set_generation(1);
    Append(2, decision, &s);
  }
  s.append(std::string("\x03\xf4\x01", 3));  // 500 ms
  v1::ClockRequest clock;
  clock.set_job("j");
  clock.set_worker(0);
  clock.set_worker_incarnation(1);
  clock.set_clock(1);
  clock.set_wait_for(2);
  Append(1, clock, &s);
  return {s};
}

}  // namespace
}  // namespace tessera

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tessera::fuzz::MaybeWriteSeeds(tessera::Seeds());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;  // NOLINT
  JobClocks clocks;
  absl::Time now = absl::FromUnixSeconds(1000);
  while (size >= 3) {
    const int op = data[0] % 4;
    const size_t n = data[1] | (size_t{data[2]} << 8);
    data += 3;
    size -= 3;
    if (op == 3) {
      now += absl::Milliseconds(n);
      (void)clocks.ExpireLeases(now);
      continue;
    }
    if (n > size) break;
    const int len = static_cast<int>(n);
    if (op == 0) {
      v1::JoinJobRequest req;
      if (req.ParseFromArray(data, len)) (void)clocks.Join(req, now);
    } else if (op == 1) {
      v1::ClockRequest req;
      if (req.ParseFromArray(data, len)) (void)clocks.Clock(req, now);
    } else {
      v1::AllReduceRequest req;
      if (req.ParseFromArray(data, len)) (void)clocks.AllReduce(req, now);
    }
    data += n;
    size -= n;
  }
  return 0;
}
