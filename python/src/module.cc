// tessera._tessera: the native half of the Python package (docs/python.md). It binds the C++
// client, the worker clock and the admin calls (tessera.testing runs its local clusters
// through the `tessera` CLI, so that this module never links the test harness);
// python/tessera/__init__.py turns user input (lists, torch tensors, optimizer objects) into what
// this module takes:
//   keys:   1-D C-contiguous numpy arrays of uint64 or int64 (int64 reinterpreted, negatives
//           refused), borrowed without a copy;
//   values: C-contiguous float32 numpy arrays, borrowed without a copy (pull outputs writable).
// Anything else raises TypeError or ValueError naming the argument. Every call that waits on
// the network releases the GIL. Errors from the cluster raise tessera.errors.Error subclasses
// carrying the gRPC code and the message.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/admin.h"
#include "client/client.h"
#include "client/serving_client.h"
#include "client/worker_clock.h"
#include "common/table_config.h"

namespace py = pybind11;

namespace tessera {
namespace {

// ---- Errors ----

// A non-OK status on its way to Python (translated below into tessera.errors.Error).
class StatusError : public std::exception {
 public:
  explicit StatusError(const absl::Status& s)
      : code_(static_cast<int>(s.code())), message_(s.message()) {}
  const char* what() const noexcept override { return message_.c_str(); }
  int code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  int code_;
  std::string message_;
};

void ThrowIfError(const absl::Status& s) {
  if (!s.ok()) throw StatusError(s);
}

template <typename T>
T ValueOrThrow(absl::StatusOr<T> v) {
  ThrowIfError(v.status());
  return *std::move(v);
}

std::optional<absl::Duration> Timeout(std::optional<double> seconds) {
  if (!seconds) return std::nullopt;
  if (!(*seconds >= 0)) throw py::value_error("timeout must be >= 0 seconds (or None)");
  return absl::Seconds(*seconds);
}

// Throws KeyboardInterrupt (or what a signal handler raised) when a signal is pending. Called
// with the GIL held between slices of every long wait, so that Ctrl-C stops a waiting worker.
void CheckSignals() {
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

constexpr absl::Duration kSignalCheckInterval = absl::Milliseconds(100);

// Runs `fn` without the GIL when this thread holds it (destructors may also run during
// interpreter shutdown, when it must not be released).
template <typename Fn>
void WithoutGil(Fn&& fn) {
  if (PyGILState_Check() != 0) {
    py::gil_scoped_release release;
    fn();
  } else {
    fn();
  }
}

// ---- Arrays ----

std::string TypeName(const py::handle& o) {
  return py::str(py::type::handle_of(o).attr("__name__"));
}

py::array AsArray(const py::object& o, const char* what) {
  if (!py::isinstance<py::array>(o)) {
    throw py::type_error(absl::StrFormat("%s: expected a numpy array, got %s", what, TypeName(o)));
  }
  py::array a = o.cast<py::array>();
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(
        absl::StrFormat("%s: the array must be C-contiguous (use numpy.ascontiguousarray)", what));
  }
  return a;
}

std::string DtypeName(const py::array& a) { return py::str(a.dtype()); }

absl::Span<const uint64_t> KeySpan(const py::object& o) {
  py::array a = AsArray(o, "keys");
  const char kind = a.dtype().kind();
  if (a.ndim() != 1 || a.itemsize() != 8 || (kind != 'u' && kind != 'i')) {
    throw py::type_error(absl::StrFormat(
        "keys: expected a 1-D array of uint64 or int64, got %d-D %s", a.ndim(), DtypeName(a)));
  }
  if (!a.dtype().attr("isnative").cast<bool>()) {
    throw py::type_error("keys: the array is not in native byte order");
  }
  absl::Span<const uint64_t> keys(static_cast<const uint64_t*>(a.data()), a.size());
  if (kind == 'i') {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (static_cast<int64_t>(keys[i]) < 0) {
        throw py::value_error(absl::StrFormat("keys: key %d at position %u is negative",
                                              static_cast<int64_t>(keys[i]), i));
      }
    }
  }
  return keys;
}

py::array FloatArray(const py::object& o, const char* what) {
  py::array a = AsArray(o, what);
  if (a.dtype().kind() != 'f' || a.itemsize() != 4 || !a.dtype().attr("isnative").cast<bool>()) {
    throw py::type_error(
        absl::StrFormat("%s: expected native float32 values, got %s", what, DtypeName(a)));
  }
  return a;
}

absl::Span<const float> FloatSpan(const py::object& o, const char* what) {
  py::array a = FloatArray(o, what);
  return absl::Span<const float>(static_cast<const float*>(a.data()), a.size());
}

absl::Span<float> MutableFloatSpan(const py::object& o, const char* what) {
  py::array a = FloatArray(o, what);
  if (!a.writeable()) throw py::value_error(absl::StrFormat("%s: the array is read-only", what));
  return absl::Span<float>(static_cast<float*>(a.mutable_data()), a.size());
}

// ---- Table configuration <-> dict ----

template <typename T>
const char* Expected() {
  if constexpr (std::is_same_v<T, std::string>) {
    return "a string";
  } else if constexpr (std::is_floating_point_v<T>) {
    return "a number";
  } else if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>) {
    return "a non-negative integer in range";
  } else if constexpr (std::is_integral_v<T>) {
    return "an integer in range";
  } else {
    return "a list of strings";
  }
}

// d[key] as T; None or absent: nullopt. A value of another type raises TypeError naming the key.
template <typename T>
std::optional<T> Opt(const py::dict& d, const char* key) {
  if (!d.contains(key) || d[key].is_none()) return std::nullopt;
  py::object v = d[key];
  try {
    return v.cast<T>();
  } catch (const py::cast_error&) {
    throw py::type_error(absl::StrFormat("%s: expected %s, got %s", key, Expected<T>(),
                                         py::repr(v).cast<std::string>()));
  }
}

TableConfig ConfigFromDict(const py::dict& d) {
  TableConfig c;
  c.name = Opt<std::string>(d, "name").value_or("");
  const std::string kind = Opt<std::string>(d, "kind").value_or("");
  if (kind == "sparse") {
    c.kind = TableKind::kSparse;
  } else if (kind == "dense") {
    c.kind = TableKind::kDense;
  } else {
    throw py::value_error(
        absl::StrFormat("table kind must be 'sparse' or 'dense', got '%s'", kind));
  }
  c.dim = Opt<uint32_t>(d, "dim").value_or(0);
  c.dense_size = Opt<uint64_t>(d, "size").value_or(0);
  c.dense_block_elems = Opt<uint32_t>(d, "block_elems").value_or(0);
  c.optimizer.kind =
      ValueOrThrow(ParseOptimizerKind(Opt<std::string>(d, "optimizer").value_or("sgd")));
  OptimizerConfig& o = c.optimizer;
  o.learning_rate = Opt<float>(d, "learning_rate");
  o.momentum = Opt<float>(d, "momentum");
  o.beta1 = Opt<float>(d, "beta1");
  o.beta2 = Opt<float>(d, "beta2");
  o.epsilon = Opt<float>(d, "epsilon");
  o.initial_accumulator = Opt<float>(d, "initial_accumulator");
  o.l1 = Opt<float>(d, "l1");
  o.l2 = Opt<float>(d, "l2");
  o.ftrl_beta = Opt<float>(d, "ftrl_beta");
  InitializerConfig& i = c.initializer;
  i.kind = ValueOrThrow(ParseInitializerKind(Opt<std::string>(d, "initializer").value_or("zeros")));
  i.low = Opt<float>(d, "low");
  i.high = Opt<float>(d, "high");
  i.mean = Opt<float>(d, "mean");
  i.stddev = Opt<float>(d, "stddev");
  i.seed = Opt<uint64_t>(d, "seed").value_or(0);
  if (d.contains("lifecycle") && !d["lifecycle"].is_none()) {
    const py::dict l = d["lifecycle"].cast<py::dict>();
    LifecycleConfig& lc = c.lifecycle;
    lc.ttl_seconds = Opt<uint64_t>(l, "ttl_seconds").value_or(0);
    lc.capacity_rows = Opt<uint64_t>(l, "capacity_rows").value_or(0);
    lc.capacity_bytes = Opt<uint64_t>(l, "capacity_bytes").value_or(0);
    lc.victims = ValueOrThrow(ParseEvictionVictims(Opt<std::string>(l, "victims").value_or("lru")));
    lc.lfu_half_life_seconds = Opt<uint32_t>(l, "lfu_half_life_seconds").value_or(0);
    lc.dry_run = Opt<bool>(l, "dry_run").value_or(false);
    lc.admission_min_count = Opt<uint32_t>(l, "admission_min_count").value_or(0);
    lc.admission_sketch_width = Opt<uint64_t>(l, "admission_sketch_width").value_or(0);
    lc.admission_sketch_depth = Opt<uint32_t>(l, "admission_sketch_depth").value_or(0);
    lc.admission_aging_sightings = Opt<uint64_t>(l, "admission_aging_sightings").value_or(0);
    lc.tier_ram_rows = Opt<uint64_t>(l, "tier_ram_rows").value_or(0);
    lc.tier_ram_bytes = Opt<uint64_t>(l, "tier_ram_bytes").value_or(0);
    lc.tier_idle_seconds = Opt<uint64_t>(l, "tier_idle_seconds").value_or(0);
    lc.admission_exact = Opt<bool>(l, "admission_exact").value_or(false);
    lc.admission_exact_keys = Opt<uint64_t>(l, "admission_exact_keys").value_or(0);
    lc.ttl_steps = Opt<uint64_t>(l, "ttl_steps").value_or(0);
  }
  return c;
}

template <typename T>
py::object OrNone(const std::optional<T>& v) {
  return v ? py::cast(*v) : py::none();
}

py::dict ConfigToDict(const TableConfig& c) {
  py::dict d;
  d["name"] = c.name;
  d["kind"] = std::string(TableKindName(c.kind));
  d["dim"] = c.dim;
  d["size"] = c.dense_size;
  d["block_elems"] = c.dense_block_elems;
  const OptimizerConfig& o = c.optimizer;
  d["optimizer"] = std::string(OptimizerKindName(o.kind));
  d["learning_rate"] = OrNone(o.learning_rate);
  d["momentum"] = OrNone(o.momentum);
  d["beta1"] = OrNone(o.beta1);
  d["beta2"] = OrNone(o.beta2);
  d["epsilon"] = OrNone(o.epsilon);
  d["initial_accumulator"] = OrNone(o.initial_accumulator);
  d["l1"] = OrNone(o.l1);
  d["l2"] = OrNone(o.l2);
  d["ftrl_beta"] = OrNone(o.ftrl_beta);
  const InitializerConfig& i = c.initializer;
  d["initializer"] = std::string(InitializerKindName(i.kind));
  d["low"] = OrNone(i.low);
  d["high"] = OrNone(i.high);
  d["mean"] = OrNone(i.mean);
  d["stddev"] = OrNone(i.stddev);
  d["seed"] = i.seed;
  if (c.lifecycle.enabled()) {
    const LifecycleConfig& lc = c.lifecycle;
    py::dict l;
    l["ttl_seconds"] = lc.ttl_seconds;
    l["capacity_rows"] = lc.capacity_rows;
    l["capacity_bytes"] = lc.capacity_bytes;
    l["victims"] = std::string(EvictionVictimsName(lc.victims));
    l["lfu_half_life_seconds"] = lc.lfu_half_life_seconds;
    l["dry_run"] = lc.dry_run;
    l["admission_min_count"] = lc.admission_min_count;
    l["admission_sketch_width"] = lc.admission_sketch_width;
    l["admission_sketch_depth"] = lc.admission_sketch_depth;
    l["admission_aging_sightings"] = lc.admission_aging_sightings;
    l["tier_ram_rows"] = lc.tier_ram_rows;
    l["tier_ram_bytes"] = lc.tier_ram_bytes;
    l["tier_idle_seconds"] = lc.tier_idle_seconds;
    l["admission_exact"] = lc.admission_exact;
    l["admission_exact_keys"] = lc.admission_exact_keys;
    l["ttl_steps"] = lc.ttl_steps;
    d["lifecycle"] = l;
  } else {
    d["lifecycle"] = py::none();
  }
  return d;
}

py::dict StatusToDict(const TableStatus& s) {
  py::dict d;
  d["config"] = ConfigToDict(s.config);
  d["rows"] = s.rows;
  d["bytes"] = s.bytes;
  if (s.config.lifecycle.enabled()) {
    py::dict e;
    e["ttl"] = s.evicted_ttl;
    e["capacity"] = s.evicted_capacity;
    e["memory"] = s.evicted_memory;
    e["would"] = s.would_evict;
    d["evicted"] = e;
    py::dict tier;
    tier["demoted"] = s.demoted;
    tier["promoted"] = s.promoted;
    tier["disk_rows"] = s.disk_rows;
    tier["disk_bytes"] = s.disk_bytes;
    d["tier"] = tier;
    d["update_age_quantiles_s"] = s.update_age_quantiles_s;
  }
  return d;
}

// ---- Asynchronous calls ----

class PyClient;

// What an *_async call returns. It keeps the call's arrays (and the client) alive until the
// call completes: dropping a Handle early waits for its call.
class Handle {
 public:
  Handle(Call call, std::shared_ptr<PyClient> client, py::object result,
         std::vector<py::object> borrowed)
      : call_(std::move(call)),
        client_(std::move(client)),
        result_(std::move(result)),
        borrowed_(std::move(borrowed)) {}
  // A moved-from Handle no longer owns the wait (a Call's copies all see the same call).
  Handle(Handle&& other) noexcept
      : call_(std::exchange(other.call_, std::nullopt)),
        client_(std::move(other.client_)),
        result_(std::move(other.result_)),
        borrowed_(std::move(other.borrowed_)) {}
  ~Handle() {
    if (call_ && !call_->done()) WithoutGil([&] { (void)call_->Wait(); });
  }

  bool done() { return call_->done(); }

  // The call's result (the output array of a pull, None for a push), once it completes; raises
  // its error, TimeoutError when it did not complete within `timeout` seconds, or
  // KeyboardInterrupt on Ctrl-C (the call goes on; the handle still holds its arrays).
  py::object Wait(std::optional<double> timeout_s) {
    const std::optional<absl::Duration> timeout = Timeout(timeout_s);
    const absl::Time deadline = timeout ? absl::Now() + *timeout : absl::InfiniteFuture();
    while (true) {
      bool finished;
      {
        py::gil_scoped_release release;
        finished = call_->WaitFor(std::min(deadline - absl::Now(), kSignalCheckInterval));
      }
      if (finished) break;
      CheckSignals();
      if (absl::Now() >= deadline) {
        PyErr_SetString(
            PyExc_TimeoutError,
            absl::StrFormat("the call did not complete within %g s", *timeout_s).c_str());
        throw py::error_already_set();
      }
    }
    borrowed_.clear();
    ThrowIfError(call_->status());
    return result_;
  }

 private:
  // client/call.h; completed on a gRPC thread, which never touches Python. Empty once moved.
  std::optional<Call> call_;
  std::shared_ptr<PyClient> client_;
  py::object result_;
  std::vector<py::object> borrowed_;
};

// ---- Client ----

ClientOptions OptionsFromDict(const py::dict& d) {
  ClientOptions o;
  o.coordinator = Opt<std::string>(d, "coordinator").value_or("");
  o.servers = Opt<std::vector<std::string>>(d, "servers").value_or(std::vector<std::string>{});
  o.shard_map_epoch = Opt<uint64_t>(d, "shard_map_epoch").value_or(o.shard_map_epoch);
  o.num_vshards = Opt<uint32_t>(d, "num_vshards").value_or(o.num_vshards);
  o.channels_per_server = Opt<int>(d, "channels_per_server").value_or(o.channels_per_server);
  o.chunk_bytes = Opt<size_t>(d, "chunk_bytes").value_or(o.chunk_bytes);
  o.max_attempts = Opt<int>(d, "max_attempts").value_or(o.max_attempts);
  auto ms = [&](const char* key, int64_t fallback) {
    const std::optional<double> s = Opt<double>(d, key);
    if (s && !(std::isfinite(*s) && *s > 0 && *s < 1e9)) {
      throw py::value_error(absl::StrFormat("%s must be a finite number of seconds > 0", key));
    }
    return s ? static_cast<int64_t>(*s * 1000) : fallback;
  };
  o.rpc_timeout_ms = ms("rpc_timeout", o.rpc_timeout_ms);
  o.retry_timeout_ms = ms("retry_timeout", o.retry_timeout_ms);
  o.connect_timeout_ms = ms("connect_timeout", o.connect_timeout_ms);
  o.client_id = Opt<uint64_t>(d, "client_id").value_or(0);
  o.credentials.auth_token = Opt<std::string>(d, "auth_token").value_or("");
  o.credentials.tls_ca_file = Opt<std::string>(d, "tls_ca_file").value_or("");
  o.credentials.tls_cert_file = Opt<std::string>(d, "tls_cert_file").value_or("");
  o.credentials.tls_key_file = Opt<std::string>(d, "tls_key_file").value_or("");
  return o;
}

class PyClient : public std::enable_shared_from_this<PyClient> {
 public:
  explicit PyClient(std::shared_ptr<Client> client) : client_(std::move(client)) {}
  ~PyClient() {
    WithoutGil([&] { client_.reset(); });  // waits for the calls in flight
  }

  static std::shared_ptr<PyClient> Connect(const py::dict& options) {
    const ClientOptions o = OptionsFromDict(options);
    absl::StatusOr<std::unique_ptr<Client>> c;
    {
      py::gil_scoped_release release;
      c = Client::Connect(o);
    }
    return std::make_shared<PyClient>(std::shared_ptr<Client>(ValueOrThrow(std::move(c))));
  }

  // Waits for the calls in flight, then disconnects. Later calls raise.
  void Close() {
    std::shared_ptr<Client> c = std::move(client_);
    py::gil_scoped_release release;
    c.reset();
  }

  py::dict CreateTable(const py::dict& config) {
    const TableConfig c = ConfigFromDict(config);
    std::shared_ptr<Client> client = Get();
    absl::StatusOr<TableConfig> r;
    {
      py::gil_scoped_release release;
      r = client->CreateTable(c);
    }
    return ConfigToDict(ValueOrThrow(std::move(r)));
  }

  void DropTable(const std::string& name) {
    Blocking([&](Client& c) { return c.DropTable(name); });
  }

  py::dict TableConfigOf(const std::string& name) {
    std::shared_ptr<Client> client = Get();
    absl::StatusOr<TableConfig> r;
    {
      py::gil_scoped_release release;
      r = client->GetTableConfig(name);
    }
    return ConfigToDict(ValueOrThrow(std::move(r)));
  }

  py::dict DescribeTable(const std::string& name) {
    std::shared_ptr<Client> client = Get();
    absl::StatusOr<TableStatus> r;
    {
      py::gil_scoped_release release;
      r = client->DescribeTable(name);
    }
    return StatusToDict(ValueOrThrow(std::move(r)));
  }

  py::list ListTables() {
    std::shared_ptr<Client> client = Get();
    absl::StatusOr<std::vector<TableStatus>> r;
    {
      py::gil_scoped_release release;
      r = client->ListTables();
    }
    py::list out;
    for (const TableStatus& s : ValueOrThrow(std::move(r))) out.append(StatusToDict(s));
    return out;
  }

  // The blocking data calls are the asynchronous ones waited for: a wait can then be
  // interrupted (Ctrl-C) without freeing arrays a call in flight still uses (see Orphan).
  void PullSparse(const std::string& table, const py::object& keys, const py::object& out) {
    WaitOrOrphan(PullSparseAsync(table, keys, out, py::none()));
  }
  void PushSparse(const std::string& table, const py::object& keys, const py::object& values,
                  uint64_t accumulate_step, bool assign, uint64_t step) {
    WaitOrOrphan(PushSparseAsync(table, keys, values, accumulate_step, assign, step));
  }
  void PullDense(const std::string& table, uint64_t offset, const py::object& out) {
    WaitOrOrphan(PullDenseAsync(table, offset, out, py::none()));
  }
  void PushDense(const std::string& table, uint64_t offset, const py::object& values,
                 uint64_t accumulate_step, bool assign) {
    WaitOrOrphan(PushDenseAsync(table, offset, values, accumulate_step, assign));
  }
  void ApplyStep(const std::string& table, uint64_t step, float scale) {
    Blocking([&](Client& c) { return c.ApplyStep(table, step, scale); });
  }

  uint64_t RemoveRows(const std::string& table, const py::object& keys, bool demote) {
    const absl::Span<const uint64_t> k = KeySpan(keys);
    uint64_t removed = 0;
    Blocking([&](Client& c) {
      absl::StatusOr<uint64_t> r = demote ? c.DemoteRows(table, k) : c.RemoveRows(table, k);
      if (r.ok()) removed = *r;
      return r.status();
    });
    return removed;
  }

  Handle PullSparseAsync(const std::string& table, const py::object& keys, const py::object& out,
                         const py::object& result) {
    const absl::Span<const uint64_t> k = KeySpan(keys);
    const absl::Span<float> o = MutableFloatSpan(out, "out");
    return Async(result, {keys, out}, [&](Client& c, StatusCallback done) {
      c.PullSparseAsync(table, k, o, std::move(done));
    });
  }
  Handle PushSparseAsync(const std::string& table, const py::object& keys, const py::object& values,
                         uint64_t accumulate_step, bool assign, uint64_t step) {
    const absl::Span<const uint64_t> k = KeySpan(keys);
    const absl::Span<const float> v = FloatSpan(values, "values");
    return Async(py::none(), {keys, values}, [&](Client& c, StatusCallback done) {
      c.PushSparseAsync(table, k, v, std::move(done),
                        {.accumulate_step = accumulate_step, .assign = assign, .step = step});
    });
  }
  Handle PullDenseAsync(const std::string& table, uint64_t offset, const py::object& out,
                        const py::object& result) {
    const absl::Span<float> o = MutableFloatSpan(out, "out");
    return Async(result, {out}, [&](Client& c, StatusCallback done) {
      c.PullDenseAsync(table, offset, o, std::move(done));
    });
  }
  Handle PushDenseAsync(const std::string& table, uint64_t offset, const py::object& values,
                        uint64_t accumulate_step, bool assign) {
    const absl::Span<const float> v = FloatSpan(values, "values");
    return Async(py::none(), {values}, [&](Client& c, StatusCallback done) {
      c.PushDenseAsync(table, offset, v, std::move(done),
                       {.accumulate_step = accumulate_step, .assign = assign});
    });
  }

  uint64_t client_id() { return Get()->client_id(); }
  uint64_t retries() { return Get()->retries(); }
  uint64_t duplicate_acks() { return Get()->duplicate_acks(); }
  uint32_t num_shards() { return Get()->shard_map().num_shards(); }
  bool closed() const { return client_ == nullptr; }

 private:
  std::shared_ptr<Client> Get() const {
    if (client_ == nullptr) throw py::value_error("the client is closed");
    return client_;
  }

  template <typename Fn>
  void Blocking(Fn&& fn) {
    std::shared_ptr<Client> client = Get();
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = fn(*client);
    }
    ThrowIfError(s);
  }

  // Issues a call without the GIL (splitting, copying and encoding a large call takes
  // milliseconds, and the first dense call on a table fetches its layout over the network).
  template <typename Fn>
  Handle Async(py::object result, std::vector<py::object> borrowed, Fn&& issue) {
    std::shared_ptr<Client> client = Get();
    auto [call, done] = Call::Pending();
    {
      py::gil_scoped_release release;
      issue(*client, std::move(done));
    }
    return Handle(call, shared_from_this(), std::move(result), std::move(borrowed));
  }

  // Waits for `handle`; when the wait is interrupted, the handle (with the arrays it holds)
  // is kept until its call completes, and the interruption propagates.
  static void WaitOrOrphan(Handle handle) {
    try {
      handle.Wait(std::nullopt);
    } catch (const py::error_already_set&) {
      if (!handle.done()) Orphan(std::move(handle));
      throw;
    }
  }

  static void Orphan(Handle handle) {
    // Guarded by the GIL; never destroyed.
    static auto* orphans = new std::vector<std::unique_ptr<Handle>>();
    std::erase_if(*orphans, [](const std::unique_ptr<Handle>& h) { return h->done(); });
    orphans->push_back(std::make_unique<Handle>(std::move(handle)));
  }

  std::shared_ptr<Client> client_;
};

// ---- Worker clock ----

py::dict ProgressToDict(const JobProgress& p) {
  py::dict d;
  d["min_clock"] = p.min_clock;
  d["live_workers"] = p.live_workers;
  d["dead_workers"] = p.dead_workers;
  return d;
}

class PyWorkerClock {
 public:
  PyWorkerClock(const std::string& coordinator, const std::string& job, uint32_t num_workers,
                uint32_t worker, const std::string& mode, uint32_t staleness, double lease_s,
                bool fail_on_worker_death) {
    WorkerClockOptions o;
    o.coordinator = coordinator;
    o.job = job;
    o.num_workers = num_workers;
    o.worker = worker;
    if (mode == "bsp") {
      o.mode = ConsistencyMode::kBsp;
    } else if (mode == "ssp") {
      o.mode = ConsistencyMode::kSsp;
    } else if (mode == "async") {
      o.mode = ConsistencyMode::kAsync;
    } else {
      throw py::value_error(
          absl::StrFormat("mode must be 'bsp', 'ssp' or 'async', got '%s'", mode));
    }
    o.staleness = staleness;
    if (!(std::isfinite(lease_s) && lease_s > 0 && lease_s <= 3600)) {
      throw py::value_error(absl::StrFormat("lease must be in (0, 3600] seconds, got %g", lease_s));
    }
    o.lease_ms = static_cast<int64_t>(lease_s * 1000);
    o.fail_on_worker_death = fail_on_worker_death;
    absl::StatusOr<std::unique_ptr<WorkerClock>> c;
    {
      py::gil_scoped_release release;
      c = WorkerClock::Join(o);
    }
    clock_ = ValueOrThrow(std::move(c));
    mode_ = mode;
  }

  ~PyWorkerClock() {
    WithoutGil([&] { clock_.reset(); });  // joins the lease thread
  }

  uint64_t clock() const { return clock_->clock(); }
  const std::string& mode() const { return mode_; }
  uint32_t staleness() const { return clock_->options().staleness; }
  uint32_t worker() const { return clock_->options().worker; }
  uint32_t num_workers() const { return clock_->options().num_workers; }

  py::dict WaitFor(uint64_t step, std::optional<double> timeout_s) {
    return Sliced(timeout_s, [&](absl::Duration slice) { return clock_->WaitFor(step, slice); });
  }
  py::dict WaitToStart(std::optional<double> timeout_s) {
    return WaitFor(clock_->clock() + 1, timeout_s);
  }
  py::dict WaitForAll(double timeout_s) {
    return Sliced(timeout_s, [&](absl::Duration slice) { return clock_->WaitForAll(slice); });
  }
  void Finish() {
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = clock_->Finish();
    }
    ThrowIfError(s);
  }

 private:
  // Runs wait(slice) in slices without the GIL until it succeeds, fails for good or
  // `timeout_s` passes, checking for Ctrl-C between slices.
  template <typename Fn>
  py::dict Sliced(std::optional<double> timeout_s, Fn&& wait) {
    const std::optional<absl::Duration> timeout = Timeout(timeout_s);
    const absl::Time deadline = timeout ? absl::Now() + *timeout : absl::InfiniteFuture();
    while (true) {
      const absl::Duration slice =
          std::clamp(deadline - absl::Now(), absl::ZeroDuration(), absl::Milliseconds(250));
      absl::StatusOr<JobProgress> p;
      {
        py::gil_scoped_release release;
        p = wait(slice);
      }
      const bool retry = !p.ok() && (p.status().code() == absl::StatusCode::kDeadlineExceeded ||
                                     p.status().code() == absl::StatusCode::kUnavailable);
      if (!retry || absl::Now() >= deadline) return ProgressToDict(ValueOrThrow(std::move(p)));
      CheckSignals();
    }
  }

  std::unique_ptr<WorkerClock> clock_;
  std::string mode_;
};

// ---- Checkpoints ----

// The servers that write and restore checkpoints: `servers` (static shards, in order), or the
// primaries of the coordinator's shards.
std::vector<std::string> CheckpointServers(const std::string& coordinator,
                                           const std::vector<std::string>& servers) {
  if (coordinator.empty() == servers.empty()) {
    throw py::value_error("give coordinator='host:port' or servers=[...], not both");
  }
  if (servers.empty()) {
    absl::StatusOr<std::vector<std::string>> primaries;
    {
      py::gil_scoped_release release;
      primaries = PrimaryAddresses(coordinator);
    }
    return ValueOrThrow(std::move(primaries));
  }
  return servers;
}

py::dict Checkpoint(const std::string& dir, const std::string& coordinator,
                    const std::vector<std::string>& servers, size_t keep_last, bool incremental) {
  CheckpointDriverOptions o;
  o.dir = dir;
  o.servers = CheckpointServers(coordinator, servers);
  o.keep_last = keep_last;
  o.incremental = incremental;
  absl::StatusOr<CheckpointRoundResult> r;
  {
    py::gil_scoped_release release;
    r = RunCheckpointRound(o);
  }
  const CheckpointRoundResult result = ValueOrThrow(std::move(r));
  py::dict d;
  d["id"] = result.id;
  d["parent_id"] = result.parent_id;
  d["seconds"] = result.seconds;
  d["rows"] = result.rows;
  d["bytes"] = result.bytes;
  return d;
}

py::dict Restore(const std::string& dir, const std::string& coordinator,
                 const std::vector<std::string>& servers, uint64_t id) {
  const std::vector<std::string> targets = CheckpointServers(coordinator, servers);
  absl::StatusOr<RestoreResult> r;
  {
    py::gil_scoped_release release;
    r = RestoreCluster(dir, targets, /*shard_map_epoch=*/1, id);
  }
  const RestoreResult result = ValueOrThrow(std::move(r));
  py::dict d;
  d["id"] = result.id;
  d["seconds"] = result.seconds;
  d["rows"] = result.rows;
  d["bytes"] = result.bytes;
  return d;
}

// tessera.ServingClient's native half (docs/online_serving.md): lookups against serving
// replicas, the GIL released while a call waits.
class PyServingClient {
 public:
  static std::shared_ptr<PyServingClient> Connect(const py::dict& d) {
    ServingClientOptions o;
    o.replicas = d["replicas"].cast<std::vector<std::string>>();
    o.credentials.auth_token = Opt<std::string>(d, "auth_token").value_or("");
    o.credentials.tls_ca_file = Opt<std::string>(d, "tls_ca_file").value_or("");
    o.credentials.tls_cert_file = Opt<std::string>(d, "tls_cert_file").value_or("");
    o.credentials.tls_key_file = Opt<std::string>(d, "tls_key_file").value_or("");
    if (std::optional<double> t = Opt<double>(d, "rpc_timeout")) {
      if (!(*t > 0)) throw py::value_error("rpc_timeout must be > 0 seconds");
      o.rpc_timeout_ms = static_cast<int64_t>(*t * 1000);
    }
    if (std::optional<int> a = Opt<int>(d, "max_attempts")) {
      if (*a < 1) throw py::value_error("max_attempts must be >= 1");
      o.max_attempts = *a;
    }
    auto out = std::make_shared<PyServingClient>();
    out->client_ = ValueOrThrow(ServingClient::Connect(o));
    return out;
  }

  py::tuple Lookup(const std::string& table, const py::object& keys, uint64_t version) {
    const absl::Span<const uint64_t> k = KeySpan(keys);
    absl::StatusOr<ServingRows> r;
    {
      py::gil_scoped_release release;
      r = client_->LookupRows(table, k, version);
    }
    ThrowIfError(r.status());
    py::array_t<float> rows({static_cast<py::ssize_t>(k.size()), static_cast<py::ssize_t>(r->dim)});
    if (!r->values.empty()) {
      std::memcpy(rows.mutable_data(), r->values.data(), r->values.size() * sizeof(float));
    }
    py::array_t<bool> found(static_cast<py::ssize_t>(k.size()));
    bool* f = found.mutable_data();
    for (size_t i = 0; i < k.size(); ++i) f[i] = r->found[i];
    return py::make_tuple(rows, r->version, found);
  }

  py::tuple LookupDense(const std::string& table, uint64_t version) {
    std::vector<float> values;
    absl::StatusOr<uint64_t> v;
    {
      py::gil_scoped_release release;
      v = client_->LookupDense(table, &values, version);
    }
    ThrowIfError(v.status());
    py::array_t<float> out(static_cast<py::ssize_t>(values.size()));
    if (!values.empty()) std::memcpy(out.mutable_data(), values.data(), values.size() * 4);
    return py::make_tuple(out, *v);
  }

  py::dict Status(size_t replica) {
    absl::StatusOr<ServingStatusInfo> s;
    {
      py::gil_scoped_release release;
      s = client_->Status(replica);
    }
    ThrowIfError(s.status());
    py::list tables;
    for (const ServingTableStatus& t : s->tables) {
      py::dict d;
      d["name"] = t.name;
      d["kind"] = t.dense ? "dense" : "sparse";
      d["dim"] = t.dim;
      d["dense_size"] = t.dense_size;
      d["rows"] = t.rows;
      d["digest"] = t.digest;
      tables.append(d);
    }
    py::dict d;
    d["version"] = s->version;
    d["newest_version"] = s->newest_version;
    d["held_versions"] = s->held_versions;
    d["pinned"] = s->pinned;
    d["staleness_seconds"] = s->staleness_seconds;
    d["bytes"] = s->bytes;
    d["source"] = s->source;
    d["last_error"] = s->last_error;
    d["tables"] = tables;
    return d;
  }

  uint64_t Rollback(size_t replica, uint64_t version) {
    absl::StatusOr<uint64_t> v;
    {
      py::gil_scoped_release release;
      v = client_->Rollback(replica, version);
    }
    return ValueOrThrow(std::move(v));
  }

  uint64_t Resume(size_t replica) {
    absl::StatusOr<uint64_t> v;
    {
      py::gil_scoped_release release;
      v = client_->Resume(replica);
    }
    return ValueOrThrow(std::move(v));
  }

 private:
  std::unique_ptr<ServingClient> client_;
};

}  // namespace
}  // namespace tessera

PYBIND11_MODULE(_tessera, m) {
  using namespace tessera;
  m.doc() = "Native part of the tessera package; use the `tessera` module instead.";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      py::object make = py::module_::import("tessera.errors").attr("error_from_status");
      py::object error = make(e.code(), e.message());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
    }
  });

  py::class_<Handle>(m, "Handle",
                     "An asynchronous call in flight. wait(timeout=None) returns its result "
                     "(the output of a pull, None for a push) or raises its error.")
      .def("done", &Handle::done, "Whether the call has completed.")
      .def("wait", &Handle::Wait, py::arg("timeout") = py::none(),
           "Waits for the call (at most `timeout` seconds: TimeoutError after that) and returns "
           "its result or raises its error.")
      .def("result", &Handle::Wait, py::arg("timeout") = py::none(), "Same as wait().");

  py::class_<PyServingClient, std::shared_ptr<PyServingClient>>(m, "ServingClient")
      .def_static("connect", &PyServingClient::Connect, py::arg("options"))
      .def("lookup", &PyServingClient::Lookup, py::arg("table"), py::arg("keys"),
           py::arg("version"))
      .def("lookup_dense", &PyServingClient::LookupDense, py::arg("table"), py::arg("version"))
      .def("status", &PyServingClient::Status, py::arg("replica"))
      .def("rollback", &PyServingClient::Rollback, py::arg("replica"), py::arg("version"))
      .def("resume", &PyServingClient::Resume, py::arg("replica"));

  py::class_<PyClient, std::shared_ptr<PyClient>>(m, "Client")
      .def_static("connect", &PyClient::Connect, py::arg("options"))
      .def("close", &PyClient::Close)
      .def_property_readonly("closed", &PyClient::closed)
      .def("create_table", &PyClient::CreateTable, py::arg("config"))
      .def("drop_table", &PyClient::DropTable, py::arg("name"))
      .def("describe_table", &PyClient::DescribeTable, py::arg("name"))
      .def("table_config", &PyClient::TableConfigOf, py::arg("name"))
      .def("list_tables", &PyClient::ListTables)
      .def("pull_sparse", &PyClient::PullSparse, py::arg("table"), py::arg("keys"), py::arg("out"))
      .def("push_sparse", &PyClient::PushSparse, py::arg("table"), py::arg("keys"),
           py::arg("values"), py::arg("accumulate_step") = 0, py::arg("assign") = false,
           py::arg("step") = 0)
      .def("pull_dense", &PyClient::PullDense, py::arg("table"), py::arg("offset"), py::arg("out"))
      .def("push_dense", &PyClient::PushDense, py::arg("table"), py::arg("offset"),
           py::arg("values"), py::arg("accumulate_step") = 0, py::arg("assign") = false)
      .def("apply_step", &PyClient::ApplyStep, py::arg("table"), py::arg("step"), py::arg("scale"))
      .def("remove_rows", &PyClient::RemoveRows, py::arg("table"), py::arg("keys"),
           py::arg("demote") = false)
      .def("pull_sparse_async", &PyClient::PullSparseAsync, py::arg("table"), py::arg("keys"),
           py::arg("out"), py::arg("result"))
      .def("push_sparse_async", &PyClient::PushSparseAsync, py::arg("table"), py::arg("keys"),
           py::arg("values"), py::arg("accumulate_step") = 0, py::arg("assign") = false,
           py::arg("step") = 0)
      .def("pull_dense_async", &PyClient::PullDenseAsync, py::arg("table"), py::arg("offset"),
           py::arg("out"), py::arg("result"))
      .def("push_dense_async", &PyClient::PushDenseAsync, py::arg("table"), py::arg("offset"),
           py::arg("values"), py::arg("accumulate_step") = 0, py::arg("assign") = false)
      .def_property_readonly("client_id", &PyClient::client_id)
      .def_property_readonly("retries", &PyClient::retries)
      .def_property_readonly("duplicate_acks", &PyClient::duplicate_acks)
      .def_property_readonly("num_shards", &PyClient::num_shards);

  py::class_<PyWorkerClock>(m, "WorkerClock")
      .def(py::init<const std::string&, const std::string&, uint32_t, uint32_t, const std::string&,
                    uint32_t, double, bool>(),
           py::arg("coordinator"), py::arg("job"), py::arg("num_workers"), py::arg("worker"),
           py::arg("mode"), py::arg("staleness"), py::arg("lease"), py::arg("fail_on_worker_death"))
      .def_property_readonly("clock", &PyWorkerClock::clock)
      .def_property_readonly("mode", &PyWorkerClock::mode)
      .def_property_readonly("staleness", &PyWorkerClock::staleness)
      .def_property_readonly("worker", &PyWorkerClock::worker)
      .def_property_readonly("num_workers", &PyWorkerClock::num_workers)
      .def("wait_to_start", &PyWorkerClock::WaitToStart, py::arg("timeout") = py::none())
      .def("wait_for", &PyWorkerClock::WaitFor, py::arg("step"), py::arg("timeout") = py::none())
      .def("wait_for_all", &PyWorkerClock::WaitForAll, py::arg("timeout"))
      .def("finish", &PyWorkerClock::Finish);

  m.def("checkpoint", &Checkpoint, py::arg("dir"), py::arg("coordinator"), py::arg("servers"),
        py::arg("keep_last"), py::arg("incremental"));
  m.def("restore", &Restore, py::arg("dir"), py::arg("coordinator"), py::arg("servers"),
        py::arg("id"));
}
