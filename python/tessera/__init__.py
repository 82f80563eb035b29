"""Tessera: the Python client of the Tessera parameter server.

    import numpy as np
    import tessera

    client = tessera.Client(coordinator="127.0.0.1:7300")        # or servers=[...]
    client.create_table("emb", dim=16, optimizer=tessera.Adagrad(lr=0.05))
    rows = client.pull_sparse("emb", np.array([3, 7, 11]))        # (3, 16) float32
    client.push_sparse("emb", np.array([3, 7, 11]), grads)        # the servers apply Adagrad
    handle = client.pull_dense_async("w")                         # ... handle.wait()

Keys are any integer array (uint64 and int64 without a copy); values are float32 (NumPy arrays
or CPU torch tensors, without a copy when C-contiguous). A pull returns a torch tensor when its
keys (or ``out``) are torch tensors, else a NumPy array. Calls release the GIL while they wait.
Errors raise :mod:`tessera.errors` exceptions carrying the gRPC code and message.
``tessera.torch`` has the PyTorch modules (docs/python.md).
"""

import collections
import os
import sys
import zlib

import numpy as np

from . import errors
from .errors import Error

__version__ = "0.1.0"


def _load_native():
    """Imports the compiled module: installed beside this file, or in a build tree
    ($TESSERA_BUILD_DIR, else build/ of the source checkout this package sits in)."""
    try:
        from . import _tessera
        return _tessera
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = []
    if os.environ.get("TESSERA_BUILD_DIR"):
        candidates.append(os.environ["TESSERA_BUILD_DIR"])
    candidates.append(os.path.join(here, "..", "..", "build"))
    for build in candidates:
        native_dir = os.path.join(os.path.abspath(build), "python", "tessera")
        if os.path.isdir(native_dir) and native_dir not in __path__:
            __path__.append(native_dir)
            try:
                from . import _tessera
                return _tessera
            except ImportError:
                __path__.remove(native_dir)
    raise ImportError(
        "tessera: the native module _tessera is not built. Build it with tools/build.sh "
        "(it needs pybind11-dev and python3-dev; tools/setup.sh installs them) or install the "
        "package with `pip install --no-build-isolation ./python` (docs/python.md). Looked in: "
        + ", ".join(candidates))


_tessera = _load_native()
Handle = _tessera.Handle

# ---------------------------------------------------------------------------------------------
# Optimizers and initializers: what the servers run on a table's rows (docs/design.md,
# "Optimizers"). Unset fields take the servers' defaults.


class _Spec:
    """A kind plus the fields the caller set (None: the servers' default)."""

    kind = ""
    _key = ""  # the kind's key in a table config

    def __init__(self, **fields):
        self._fields = {k: v for k, v in fields.items() if v is not None}

    def config(self):
        return {self._key: self.kind, **self._fields}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._fields.items())
        return f"{type(self).__name__}({args})"


class Optimizer(_Spec):
    """Base of the optimizer specs; the servers apply the optimizer to pushed gradients."""

    _key = "optimizer"


class SGD(Optimizer):
    """w -= lr * g (default lr 0.01)."""
    kind = "sgd"

    def __init__(self, lr=None):
        super().__init__(learning_rate=lr)


class Momentum(Optimizer):
    """v = momentum * v + g; w -= lr * v (PyTorch's SGD with momentum, no dampening)."""
    kind = "momentum"

    def __init__(self, lr=None, momentum=None):
        super().__init__(learning_rate=lr, momentum=momentum)


class Adagrad(Optimizer):
    """a += g^2; w -= lr * g / (sqrt(a) + eps) (PyTorch's Adagrad without decay)."""
    kind = "adagrad"

    def __init__(self, lr=None, eps=None, initial_accumulator=None):
        super().__init__(learning_rate=lr, epsilon=eps, initial_accumulator=initial_accumulator)


class Adam(Optimizer):
    """Adam with bias correction, as PyTorch's (default lr 0.001, betas 0.9/0.999, eps 1e-8).
    On sparse tables each row keeps its own step count (rows untouched by a step do not move)."""
    kind = "adam"

    def __init__(self, lr=None, betas=(None, None), eps=None):
        super().__init__(learning_rate=lr, beta1=betas[0], beta2=betas[1], epsilon=eps)


class FTRL(Optimizer):
    """FTRL-Proximal (McMahan et al. 2013) with alpha, beta, l1, l2."""
    kind = "ftrl"

    def __init__(self, alpha=None, beta=None, l1=None, l2=None, initial_accumulator=None):
        super().__init__(learning_rate=alpha, ftrl_beta=beta, l1=l1, l2=l2,
                         initial_accumulator=initial_accumulator)


class Add(Optimizer):
    """w += g: the table accumulates what is pushed."""
    kind = "add"


class Assign(Optimizer):
    """w = g: a push writes the values."""
    kind = "assign"


class Initializer(_Spec):
    """Base of the initializer specs. Initial values are a pure function of (seed, key or
    element, column): every server and every run computes the same ones."""

    _key = "initializer"


class Zeros(Initializer):
    kind = "zeros"


class Uniform(Initializer):
    """Uniform in [low, high) (defaults -0.01, 0.01)."""
    kind = "uniform"

    def __init__(self, low=None, high=None, seed=0):
        super().__init__(low=low, high=high, seed=seed)


class Normal(Initializer):
    """Normal(mean, stddev) (defaults 0, 0.01); stddev 0 gives the constant `mean`."""
    kind = "normal"

    def __init__(self, mean=None, stddev=None, seed=0):
        super().__init__(mean=mean, stddev=stddev, seed=seed)


class Lifecycle:
    """A sparse table's embedding lifecycle (docs/embedding_lifecycle.md): rows not pushed for
    `ttl_seconds`, or beyond a per-server capacity (`capacity_rows`, `capacity_bytes`; the least
    recently (victims="lru") or frequently ("lfu") updated go first), are removed on every
    replica. `dry_run=True` only counts what would go. `admission_min_count=k` (k >= 2): a key
    becomes a row at the push that is its k-th sighting (counted in a count-min sketch per
    vshard, or exactly with `admission_exact=True`; until then its pushes only count). Rows of
    such a table are not created by pulls: a
    key without a row reads as the initializer's values. The disk tier (`tier_ram_rows`,
    `tier_ram_bytes`, `tier_idle_seconds`): rows beyond the RAM capacity or idle that long move
    to the server's RocksDB store and come back, bit-exact, at their next push. `ttl_steps`: a
    TTL in training steps instead of seconds (pushes then carry `step=`)."""

    def __init__(self, ttl_seconds=0, capacity_rows=0, capacity_bytes=0, victims="lru",
                 lfu_half_life_seconds=None, dry_run=False, admission_min_count=0,
                 admission_sketch_width=None, admission_sketch_depth=None,
                 admission_aging_sightings=None, tier_ram_rows=0, tier_ram_bytes=0,
                 tier_idle_seconds=0, admission_exact=False, admission_exact_keys=None,
                 ttl_steps=0):
        self.ttl_seconds = ttl_seconds
        self.capacity_rows = capacity_rows
        self.capacity_bytes = capacity_bytes
        self.victims = victims
        self.lfu_half_life_seconds = lfu_half_life_seconds
        self.dry_run = dry_run
        self.admission_min_count = admission_min_count
        self.admission_sketch_width = admission_sketch_width
        self.admission_sketch_depth = admission_sketch_depth
        self.admission_aging_sightings = admission_aging_sightings
        self.tier_ram_rows = tier_ram_rows
        self.tier_ram_bytes = tier_ram_bytes
        self.tier_idle_seconds = tier_idle_seconds
        self.admission_exact = admission_exact
        self.admission_exact_keys = admission_exact_keys
        self.ttl_steps = ttl_steps

    def config(self):
        return dict(ttl_seconds=self.ttl_seconds, capacity_rows=self.capacity_rows,
                    capacity_bytes=self.capacity_bytes, victims=self.victims,
                    lfu_half_life_seconds=self.lfu_half_life_seconds, dry_run=self.dry_run,
                    admission_min_count=self.admission_min_count,
                    admission_sketch_width=self.admission_sketch_width,
                    admission_sketch_depth=self.admission_sketch_depth,
                    admission_aging_sightings=self.admission_aging_sightings,
                    tier_ram_rows=self.tier_ram_rows, tier_ram_bytes=self.tier_ram_bytes,
                    tier_idle_seconds=self.tier_idle_seconds,
                    admission_exact=self.admission_exact,
                    admission_exact_keys=self.admission_exact_keys, ttl_steps=self.ttl_steps)

    def __repr__(self):
        return "Lifecycle(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"


_OPTIMIZERS = {c.kind: c for c in (SGD, Momentum, Adagrad, Adam, FTRL, Add, Assign)}
_INITIALIZERS = {c.kind: c for c in (Zeros, Uniform, Normal)}


def _spec(value, table, base, by_name, what):
    if isinstance(value, base):
        return value
    if isinstance(value, str) and value in by_name:
        return by_name[value]()
    raise TypeError(f"table '{table}': {what} must be one of {sorted(by_name)} or a "
                    f"tessera.{base.__name__}, got {value!r}")


def seed_of(name):
    """A stable seed derived from a name (the same in every process and run)."""
    return zlib.crc32(name.encode()) + 1


class TableInfo:
    """A table as the cluster holds it: its resolved configuration (every default filled in),
    and for describe_table/list_tables its rows (sparse rows or dense elements) and bytes."""

    def __init__(self, d):
        config = d.get("config", d)
        self.config = config
        self.name = config["name"]
        self.kind = config["kind"]
        self.dim = config["dim"]
        self.size = config["size"]
        self.optimizer = config["optimizer"]
        self.lifecycle = config.get("lifecycle")  # a dict, None without a policy
        self.rows = d.get("rows")
        self.bytes = d.get("bytes")
        # {"ttl", "capacity", "memory", "would"}: rows the lifecycle removed (describe/list)
        self.evicted = d.get("evicted")
        # {"demoted", "promoted", "disk_rows", "disk_bytes"}: the disk tier (rows counts RAM's)
        self.tier = d.get("tier")
        # Seconds since the rows' last update, quantiles 0.5, 0.9, 0.99 of a sample (lifecycle).
        self.update_age_quantiles_s = d.get("update_age_quantiles_s")

    def __repr__(self):
        shape = f"dim={self.dim}" if self.kind == "sparse" else f"size={self.size}"
        extra = "" if self.rows is None else f", rows={self.rows}, bytes={self.bytes}"
        return f"TableInfo({self.name!r}, {self.kind}, {shape}, {self.optimizer}{extra})"


# ---------------------------------------------------------------------------------------------
# Array conversion: zero copy where the layout allows.


def _torch_tensor_type():
    torch = sys.modules.get("torch")  # never imported here: a tensor implies torch is loaded
    return torch.Tensor if torch is not None else None


def _is_tensor(x):
    t = _torch_tensor_type()
    return t is not None and isinstance(x, t)


def _keys(keys):
    """A 1-D uint64/int64 NumPy array of the keys (a view when possible)."""
    if _is_tensor(keys):
        if keys.is_floating_point() or keys.is_complex() or \
                keys.dtype == sys.modules["torch"].bool:
            raise TypeError(f"keys: expected integer ids, got a {keys.dtype} tensor")
        keys = keys.detach()
        if keys.device.type != "cpu":
            keys = keys.cpu()
        if keys.element_size() != 8:
            keys = keys.long()
        return keys.reshape(-1).contiguous().numpy()
    if isinstance(keys, np.ndarray):
        arr = keys
    else:
        arr = np.asarray(keys)
        if arr.size == 0:
            return np.empty(0, dtype=np.uint64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"keys: expected integer ids, got {arr.dtype}")
    if arr.dtype.itemsize != 8 or not arr.dtype.isnative:
        arr = arr.astype(np.uint64 if arr.dtype.kind == "u" else np.int64)
    return np.ascontiguousarray(arr.reshape(-1))


def _values(values, what):
    """A C-contiguous float32 NumPy array of the values (a view when possible)."""
    if _is_tensor(values):
        values = values.detach()
        if values.dtype != sys.modules["torch"].float32:
            raise TypeError(f"{what}: expected float32 values, got {values.dtype} "
                            "(convert with .float())")
        if values.device.type != "cpu":
            values = values.cpu()
        return values.contiguous().numpy()
    arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=np.float32)
    if arr.dtype.kind == "f" and arr.dtype.itemsize == 4 and not arr.dtype.isnative:
        arr = arr.astype(np.float32)  # big-endian float32: the same values, native order
    if arr.dtype != np.float32:
        raise TypeError(f"{what}: expected float32 values, got {arr.dtype} "
                        "(convert with .astype(numpy.float32))")
    return np.ascontiguousarray(arr)


def _out(out, shape):
    """(NumPy view the call writes into, object returned to the caller) for `out`, or a new
    array. An `out` the call cannot write into in place is refused, never silently copied."""
    size = int(np.prod(shape))
    if out is None:
        arr = np.empty(shape, dtype=np.float32)
        return arr, arr
    if _is_tensor(out):
        torch = sys.modules["torch"]
        if out.dtype != torch.float32 or out.device.type != "cpu" or not out.is_contiguous():
            raise ValueError("out: expected a contiguous float32 CPU tensor, got "
                             f"{out.dtype} on {out.device}"
                             f"{'' if out.is_contiguous() else ', not contiguous'}")
        if out.numel() != size:
            raise ValueError(f"out: expected {size} elements {tuple(shape)}, got {out.numel()}")
        return out.detach().numpy(), out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy array or torch tensor, got {type(out).__name__}")
    if out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out: expected a writable C-contiguous float32 array, got "
                         f"{out.dtype}{'' if out.flags.c_contiguous else ', not contiguous'}"
                         f"{'' if out.flags.writeable else ', read-only'}")
    if out.size != size:
        raise ValueError(f"out: expected {size} elements {tuple(shape)}, got {out.size}")
    return out, out


def _as_result(arr, like_tensor):
    if like_tensor:
        return sys.modules["torch"].from_numpy(arr)
    return arr


# ---------------------------------------------------------------------------------------------


class Client:
    """A connection to a Tessera cluster. Thread-safe.

    Client(coordinator="host:port") follows the coordinator's shard map (and failovers);
    Client(servers=["host:port", ...]) talks to static shards, in shard order. Options (all
    optional): shard_map_epoch, num_vshards, channels_per_server, chunk_bytes, max_attempts,
    rpc_timeout, retry_timeout, connect_timeout (seconds), client_id, auth_token (presented to
    daemons started with --auth_token_file), tls_ca_file (TLS: the daemons' CA), tls_cert_file
    and tls_key_file (a client certificate, for mutual TLS); docs/security.md.
    """

    _OPTIONS = ("shard_map_epoch", "num_vshards", "channels_per_server", "chunk_bytes",
                "max_attempts", "rpc_timeout", "retry_timeout", "connect_timeout", "client_id",
                "auth_token", "tls_ca_file", "tls_cert_file", "tls_key_file")

    def __init__(self, coordinator=None, servers=None, **options):
        unknown = sorted(set(options) - set(self._OPTIONS))
        if unknown:
            raise TypeError(f"Client: unknown options {unknown}; known: {list(self._OPTIONS)}")
        if isinstance(servers, str):
            servers = [s for s in servers.split(",") if s]
        if not coordinator and not servers:
            raise ValueError("Client: give coordinator='host:port' or servers=['host:port', ...]")
        self._native = _tessera.Client.connect(
            dict(options, coordinator=coordinator or "", servers=list(servers or [])))
        self._tables = {}  # name -> resolved config dict (for output shapes)

    # -- lifetime --
    def close(self):
        """Waits for the calls in flight, then disconnects; later calls raise ValueError."""
        self._native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def client_id(self):
        return self._native.client_id

    @property
    def num_shards(self):
        return self._native.num_shards

    @property
    def retries(self):
        """RPC attempts retried after UNAVAILABLE (e.g. across a failover)."""
        return self._native.retries

    # -- tables --
    def create_table(self, name, *, dim=None, size=None, optimizer="sgd", initializer="zeros",
                     block_elems=None, lifecycle=None):
        """Creates a sparse table (rows of `dim` floats, created on first pull) or a dense one
        (`size` floats). Succeeds when the table exists with the same spec, so every worker may
        call it. `lifecycle`: a tessera.Lifecycle (sparse only). Returns the resolved
        TableInfo."""
        if (dim is None) == (size is None):
            raise ValueError(f"create_table('{name}'): give dim= (sparse) or size= (dense), "
                             "not both")
        optimizer = _spec(optimizer, name, Optimizer, _OPTIMIZERS, "optimizer")
        initializer = _spec(initializer, name, Initializer, _INITIALIZERS, "initializer")
        config = dict(name=name, kind="sparse" if dim is not None else "dense",
                      dim=dim, size=size, block_elems=block_elems)
        config.update(optimizer.config())
        config.update(initializer.config())
        if lifecycle is not None:
            if not isinstance(lifecycle, Lifecycle):
                raise TypeError(f"table '{name}': lifecycle must be a tessera.Lifecycle, "
                                f"got {lifecycle!r}")
            config["lifecycle"] = lifecycle.config()
        resolved = self._native.create_table(config)
        self._tables[name] = resolved
        return TableInfo(resolved)

    def describe_table(self, name):
        """TableInfo with rows and bytes summed over the servers; NotFoundError if absent."""
        d = self._native.describe_table(name)
        self._tables[name] = d["config"]
        return TableInfo(d)

    def list_tables(self):
        return [TableInfo(d) for d in self._native.list_tables()]

    def drop_table(self, name):
        self._tables.pop(name, None)
        self._native.drop_table(name)

    def _config(self, name):
        # From any shard that serves (works while another shard is lost); cached.
        config = self._tables.get(name)
        if config is None:
            config = self._native.table_config(name)
            self._tables[name] = config
        return config

    # -- sparse --
    def _pull_sparse_args(self, table, keys, out):
        tensor = _is_tensor(keys) or _is_tensor(out)
        k = _keys(keys)
        dim = self._config(table)["dim"]
        if dim == 0:
            raise errors.FailedPreconditionError(9, f"table '{table}' is dense, not sparse")
        view, result = _out(out, (k.size, dim))
        if out is None:
            result = _as_result(view, tensor)
        return k, view, result

    def pull_sparse(self, table, keys, out=None):
        """The rows of `keys` (repeats allowed) as a (len(keys), dim) float32 array; rows are
        created with the table's initializer on first pull."""
        k, view, result = self._pull_sparse_args(table, keys, out)
        self._native.pull_sparse(table, k, view)
        return result

    def pull_sparse_async(self, table, keys, out=None):
        """As pull_sparse, returning a Handle; handle.wait() returns the rows."""
        k, view, result = self._pull_sparse_args(table, keys, out)
        return self._native.pull_sparse_async(table, k, view, result)

    def _push_sparse_args(self, keys, grads):
        k = _keys(keys)
        v = _values(grads, "grads")
        if v.ndim == 2 and v.shape[0] != k.size:
            raise ValueError(f"grads: {v.shape[0]} rows for {k.size} keys")
        return k, v

    def push_sparse(self, table, keys, grads, accumulate_step=0, assign=False, step=0):
        """Sends gradients of distinct `keys` ((len(keys), dim) float32); the servers apply the
        table's optimizer (or, with accumulate_step, add them to that BSP step's sums). With
        assign=True the values replace the rows' weights instead (loading weights; optimizer
        slots are kept). `step`: the training step, needed by tables whose TTL counts steps
        (Lifecycle(ttl_steps=...))."""
        k, v = self._push_sparse_args(keys, grads)
        self._native.push_sparse(table, k, v, accumulate_step, assign, step)

    def push_sparse_async(self, table, keys, grads, accumulate_step=0, assign=False, step=0):
        k, v = self._push_sparse_args(keys, grads)
        return self._native.push_sparse_async(table, k, v, accumulate_step, assign, step)

    # -- dense --
    def _pull_dense_args(self, table, offset, count, out):
        config = self._config(table)
        size = config["size"]
        if config["kind"] != "dense":
            raise errors.FailedPreconditionError(9, f"table '{table}' is sparse, not dense")
        if offset < 0 or offset > size:
            raise errors.InvalidArgumentError(
                3, f"table '{table}': offset {offset} is outside the table's {size} elements")
        if count is None:
            count = out.numel() if _is_tensor(out) else (out.size if out is not None
                                                         else max(size - offset, 0))
        view, result = _out(out, (count,))
        return view, result

    def pull_dense(self, table, offset=0, count=None, out=None):
        """Elements [offset, offset + count) of a dense table (default: to its end) as a 1-D
        float32 array, or into `out` (any shape with `count` elements)."""
        view, result = self._pull_dense_args(table, offset, count, out)
        self._native.pull_dense(table, offset, view.reshape(-1))
        return result

    def pull_dense_async(self, table, offset=0, count=None, out=None):
        view, result = self._pull_dense_args(table, offset, count, out)
        return self._native.pull_dense_async(table, offset, view.reshape(-1), result)

    def push_dense(self, table, grads, offset=0, accumulate_step=0, assign=False):
        """Sends gradients for elements [offset, offset + grads.size) of a dense table (with
        assign=True: values that replace the weights)."""
        self._native.push_dense(table, offset, _values(grads, "grads").reshape(-1),
                                accumulate_step, assign)

    def push_dense_async(self, table, grads, offset=0, accumulate_step=0, assign=False):
        return self._native.push_dense_async(table, offset, _values(grads, "grads").reshape(-1),
                                             accumulate_step, assign)

    # -- BSP --
    def apply_step(self, table, step, scale):
        """Applies BSP step `step`'s accumulated gradients once, times `scale` (e.g. 1/workers)."""
        self._native.apply_step(table, step, scale)

    # -- the embedding lifecycle --
    def remove_rows(self, table, keys):
        """Removes the rows of `keys` from a sparse table on every replica: each is afterwards
        as if never seen, and absent from the next checkpoint. Returns the rows removed (keys
        without a row are skipped). Needs the admin role."""
        return self._native.remove_rows(table, _keys(keys))

    def demote_rows(self, table, keys):
        """Moves the rows of `keys` of a sparse table with a disk tier to disk on every replica,
        as its policy does (a push brings one back, bit-exact; a pull reads it there). Returns
        the rows moved. Needs the admin role."""
        return self._native.remove_rows(table, _keys(keys), True)


class WorkerClock:
    """This worker's clock in a job hosted by the coordinator: "bsp", "ssp" (with staleness)
    or "async". Every worker of the job passes the same job, num_workers and mode.
    tessera.torch.Worker drives it; call wait_to_start() before a step and finish() after its
    pushes were acknowledged when driving it yourself."""

    def __init__(self, coordinator, job, num_workers, worker, mode="bsp", staleness=0,
                 lease=5.0, fail_on_worker_death=False):
        self._native = _tessera.WorkerClock(coordinator, job, num_workers, worker, mode,
                                            staleness, lease, fail_on_worker_death)

    clock = property(lambda self: self._native.clock, doc="steps this worker finished")
    mode = property(lambda self: self._native.mode)
    staleness = property(lambda self: self._native.staleness)
    worker = property(lambda self: self._native.worker)
    num_workers = property(lambda self: self._native.num_workers)

    def wait_to_start(self, timeout=None):
        """Blocks until step clock + 1 may start; returns the job's progress (min_clock,
        live_workers, dead_workers)."""
        return self._native.wait_to_start(timeout)

    def wait_for(self, step, timeout=None):
        return self._native.wait_for(step, timeout)

    def wait_for_all(self, timeout):
        """Blocks until every live worker finished at least `clock` steps."""
        return self._native.wait_for_all(timeout)

    def finish(self):
        """The current step's pushes are acknowledged: reports clock + 1."""
        self._native.finish()


LookupResult = collections.namedtuple("LookupResult", "rows version found")
LookupResult.__doc__ = """A serving lookup's answer: rows ((len(keys), dim) float32), the version
that answered, and found (bool per key: False where the key has no row and its values are the
table's initializer's, what a trainer's pull of it answers)."""


class ServingClient:
    """Lookups against tessera-serving replicas (docs/online_serving.md): read-only copies of
    the trainers' tables at versions (complete checkpoints), for inference.

        serving = tessera.ServingClient(["10.0.0.5:7600", "10.0.0.6:7600"])
        rows, version, found = serving.lookup("emb", keys)

    Calls go round robin over the replicas and skip one that does not answer. Options:
    auth_token (a reader or worker token), tls_ca_file, tls_cert_file, tls_key_file,
    rpc_timeout (seconds, one attempt), max_attempts (replicas tried per call)."""

    _OPTIONS = ("auth_token", "tls_ca_file", "tls_cert_file", "tls_key_file", "rpc_timeout",
                "max_attempts")

    def __init__(self, replicas, **options):
        unknown = sorted(set(options) - set(self._OPTIONS))
        if unknown:
            raise TypeError(f"ServingClient: unknown options {unknown}; known: {list(self._OPTIONS)}")
        if isinstance(replicas, str):
            replicas = [r for r in replicas.split(",") if r]
        if not replicas:
            raise ValueError("ServingClient: give replicas=['host:port', ...]")
        self._native = _tessera.ServingClient.connect(dict(options, replicas=list(replicas)))

    def lookup(self, table, keys, version=0):
        """Rows of `keys` of sparse table `table` at `version` (0: the newest the replica
        serves; another held version: GetServingStatus's held_versions). Returns a
        LookupResult(rows, version, found)."""
        rows, answered, found = self._native.lookup(table, _keys(keys), version)
        return LookupResult(rows, answered, found)

    def lookup_dense(self, table, version=0):
        """A dense table's weights at the served version: (values, version)."""
        return self._native.lookup_dense(table, version)

    def status(self, replica=0):
        """Replica `replica`'s versions (served, newest, held), staleness, source, last error
        and tables (rows, digest) as a dict."""
        return self._native.status(replica)

    def rollback(self, version, replica=0):
        """Replica `replica` serves held `version` until resume() (needs an admin token)."""
        return self._native.rollback(replica, version)

    def resume(self, replica=0):
        """Replica `replica` applies what arrived meanwhile and serves the newest again."""
        return self._native.resume(replica)


def checkpoint(directory, *, coordinator=None, servers=None, keep_last=0, incremental=True):
    """Takes a consistent checkpoint of every table while training may go on
    (docs/checkpoints.md): each server (the primaries, with a coordinator) writes its part into
    `directory`, the directory every server was started with (--checkpoint_dir). Incremental
    on the newest checkpoint when possible; keep_last > 0 removes older ones afterwards.
    Returns {id, parent_id (0: full), seconds, rows, bytes}."""
    if isinstance(servers, str):
        servers = [s for s in servers.split(",") if s]
    return _tessera.checkpoint(directory, coordinator or "", list(servers or []), keep_last,
                               incremental)


def restore(directory, *, coordinator=None, servers=None, id=0):
    """Every server replaces its tables with checkpoint `id` (0: the newest), all or none
    (docs/checkpoints.md). Stop training first. Returns {id, seconds, rows, bytes}."""
    if isinstance(servers, str):
        servers = [s for s in servers.split(",") if s]
    return _tessera.restore(directory, coordinator or "", list(servers or []), id)


__all__ = [
    "checkpoint", "restore",
    "Client", "WorkerClock", "Handle", "TableInfo", "Error", "errors",
    "Optimizer", "SGD", "Momentum", "Adagrad", "Adam", "FTRL", "Add", "Assign",
    "Initializer", "Zeros", "Uniform", "Normal", "seed_of", "Lifecycle",
]
