"""PyTorch modules whose parameters live on a Tessera cluster.

    import tessera, tessera.torch as tt

    client = tessera.Client(coordinator=...)
    emb = tt.Embedding(client, "ctr.emb", 16, optimizer=tessera.Adagrad(lr=0.05))
    mlp = torch.nn.Sequential(...)
    dense = tt.DenseParameters(client, mlp, "ctr.mlp", optimizer=tessera.Adam(lr=1e-3))
    worker = tt.Worker(client, [emb, dense], clock=tessera.WorkerClock(...))   # clock optional
    for ids, y in batches:
        with worker.step():                      # waits for the clock, pulls the dense weights
            loss = loss_fn(mlp(emb(ids).flatten(1)), y)
            loss.backward()                      # the embedding's gradients are pushed here
        # leaving the block pushes the dense gradients, waits for every push, ticks the clock
        # (BSP: the step's gradients are summed on the servers and applied once, as the mean)

There is no optimizer in Python: the servers apply each table's optimizer to the pushed
gradients. `Embedding`/`EmbeddingBag` pull only the batch's distinct ids in forward and push one
summed gradient per id from backward; `DenseParameters` copies the servers' values into a
module's parameters (in place) and pushes their .grad. See docs/python.md.
"""

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

import tessera


class _Pushes:
    """Pushes in flight of one module, and the BSP step they belong to."""

    def __init__(self):
        self.pending = []
        self.accumulate_step = 0

    def add(self, handle):
        self.pending.append(handle)

    def flush(self):
        pending, self.pending = self.pending, []
        error = None
        for h in pending:  # wait for all, even after a failure: they borrow our tensors
            try:
                h.wait()
            except tessera.Error as e:
                error = error or e
        if error is not None:
            raise error


class _SparseModule(nn.Module):
    def __init__(self, client, table, embedding_dim, num_embeddings, optimizer, initializer,
                 create):
        super().__init__()
        if embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be > 0, got {embedding_dim}")
        self.client = client
        self.table = table
        self.embedding_dim = embedding_dim
        self.num_embeddings = num_embeddings
        self.tables = [table]
        self._pushes = _Pushes()
        if create:
            if initializer is None:  # as torch.nn.Embedding: N(0, 1)
                initializer = tessera.Normal(0.0, 1.0, seed=tessera.seed_of(table))
            info = client.create_table(table, dim=embedding_dim,
                                       optimizer=optimizer or tessera.Adagrad(),
                                       initializer=initializer)
        else:
            info = client.describe_table(table)
        if info.kind != "sparse" or info.dim != embedding_dim:
            raise ValueError(f"table '{table}' is {info!r}, not sparse with dim {embedding_dim}")

    def _rows(self, ids):
        """(rows of the distinct ids, index of each id's row): rows is a leaf whose gradient
        (summed per id by autograd) is pushed when backward reaches it."""
        if ids.is_floating_point():
            raise TypeError(f"{type(self).__name__}: ids must be integers, got {ids.dtype}")
        if self.num_embeddings is not None and ids.numel() > 0:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.num_embeddings:
                raise IndexError(f"{type(self).__name__} '{self.table}': ids must be in "
                                 f"[0, {self.num_embeddings}), got [{lo}, {hi}]")
        self._pushes.flush()  # this module's earlier pushes are visible to its pulls
        unique, inverse = torch.unique(ids.detach().cpu(), return_inverse=True)
        rows = self.client.pull_sparse(self.table, unique)
        if torch.is_grad_enabled():
            rows.requires_grad_(True)
            rows.register_hook(lambda grad: self._push(unique, grad))
        return rows.to(ids.device), inverse.to(ids.device)

    def _push(self, keys, grad):
        grad = grad.detach().to(torch.float32).contiguous()
        self._pushes.add(self.client.push_sparse_async(
            self.table, keys, grad, accumulate_step=self._pushes.accumulate_step))

    def flush(self):
        """Waits for this module's pushes (raising the first error)."""
        self._pushes.flush()

    # Hooks for Worker.
    def begin_step(self, accumulate_step):
        self._pushes.accumulate_step = accumulate_step

    def end_step(self):
        pass

    def extra_repr(self):
        return f"table={self.table!r}, embedding_dim={self.embedding_dim}"


class Embedding(_SparseModule):
    """nn.Embedding over a sparse table: forward(ids) -> ids.shape + (embedding_dim,).

    Any integer ids (no vocabulary size needed; pass num_embeddings to have ids checked).
    forward pulls the distinct ids' rows; backward pushes one summed gradient per id,
    asynchronously; the next forward (or flush(), or Worker.step's end) waits for it. One
    forward per step: two forwards would push (and apply) two updates.
    Defaults: Adagrad on the servers, rows initialized N(0, 1) like torch.nn.Embedding.
    create=False uses an existing table.
    """

    def __init__(self, client, table, embedding_dim, *, num_embeddings=None, optimizer=None,
                 initializer=None, create=True):
        super().__init__(client, table, embedding_dim, num_embeddings, optimizer, initializer,
                         create)

    def forward(self, ids):
        rows, inverse = self._rows(ids)
        return F.embedding(inverse, rows)


class EmbeddingBag(_SparseModule):
    """nn.EmbeddingBag over a sparse table: sums, means or maxes of bags of ids.

    forward(input, offsets=None, per_sample_weights=None) takes what
    torch.nn.functional.embedding_bag takes (2-D input of fixed-size bags, or 1-D input with
    offsets).
    """

    def __init__(self, client, table, embedding_dim, *, mode="mean", num_embeddings=None,
                 optimizer=None, initializer=None, create=True):
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        super().__init__(client, table, embedding_dim, num_embeddings, optimizer, initializer,
                         create)
        self.mode = mode

    def forward(self, input, offsets=None, per_sample_weights=None):
        rows, inverse = self._rows(input)
        return F.embedding_bag(inverse, rows, offsets, mode=self.mode,
                               per_sample_weights=per_sample_weights)


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm,
          nn.modules.instancenorm._InstanceNorm)


def default_initializer(table, owner, attr, param):
    """The server-side initializer DenseParameters gives parameter `attr` of layer `owner`,
    after PyTorch's defaults: norms' weights 1 and biases 0, PReLU 0.25, embeddings N(0, 1),
    everything else uniform(+-1/sqrt(fan_in)) (PyTorch's rule for Linear and Conv weights and
    biases; other layers such as LSTM differ: pass `initializer` for them). Depends only on the
    layer types, names and shapes, not on the module's current values, so every worker asks
    for the same table whatever its module holds."""
    seed = tessera.seed_of(table)
    if isinstance(owner, _NORMS):
        return tessera.Normal(mean=1.0 if attr == "weight" else 0.0, stddev=0.0, seed=seed)
    if isinstance(owner, nn.PReLU):
        return tessera.Normal(mean=0.25, stddev=0.0, seed=seed)
    if isinstance(owner, (nn.Embedding, nn.EmbeddingBag)):
        return tessera.Normal(mean=0.0, stddev=1.0, seed=seed)
    weight = getattr(owner, "weight", None)
    if attr == "bias" and isinstance(weight, torch.Tensor) and weight.dim() >= 2:
        fan_in = weight[0].numel()
    elif param.dim() >= 2:
        fan_in = param[0].numel()
    else:
        fan_in = param.numel()
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return tessera.Uniform(-bound, bound, seed=seed)


class DenseParameters:
    """Keeps `module`'s parameters on Tessera: one dense table per parameter, named
    f"{prefix}.{parameter name}".

    The tables are created (or found, with the same spec) and their values pulled into the
    module, so every worker starts from the same weights: the module's own values are replaced
    by the servers' initial values (see default_initializer) unless upload=True. pull() copies
    the servers' values into the parameters in place and clears their .grad (like
    optimizer.zero_grad()); push() sends the .grads; the servers apply `optimizer`. initializer: None (default_initializer),
    one tessera.Initializer for all, or a function (name, parameter) -> tessera.Initializer.
    upload=True (or upload()) writes the module's own values instead, e.g. pretrained weights:
    from one process, before the workers start.
    """

    def __init__(self, client, module, prefix, *, optimizer=None, initializer=None,
                 create=True, upload=False):
        self.client = client
        self.module = module
        named = dict(module.named_parameters())
        if not named:
            raise ValueError(f"DenseParameters('{prefix}'): the module has no parameters")
        owners = {}  # id(parameter) -> (layer, attribute), for default_initializer
        for _, layer in module.named_modules():
            for attr, p in layer.named_parameters(recurse=False):
                owners.setdefault(id(p), (layer, attr))
        self.params = [(f"{prefix}.{name}", p) for name, p in named.items()]
        self.tables = [t for t, _ in self.params]
        self._pushes = _Pushes()
        self._staging = {}
        for (table, p), name in zip(self.params, named):
            if create:
                if initializer is None:
                    init = default_initializer(table, *owners[id(p)], p)
                elif isinstance(initializer, tessera.Initializer):
                    init = initializer
                else:
                    init = initializer(name, p)
                info = client.create_table(table, size=p.numel(),
                                           optimizer=optimizer or tessera.Adam(),
                                           initializer=init)
            else:
                info = client.describe_table(table)
            if info.kind != "dense" or info.size != p.numel():
                raise ValueError(f"table '{table}' is {info!r}; parameter '{name}' has "
                                 f"{p.numel()} elements")
        if upload:
            self.upload()
        self.pull()

    def upload(self):
        """Writes the module's current values to the servers (e.g. pretrained weights): they
        replace the tables' weights; the optimizer does not run and its state is kept. Do it
        from one process before the workers train (they pull what is there when they start)."""
        self._pushes.flush()
        for t, p in self.params:
            self._pushes.add(self.client.push_dense_async(
                t, p.detach().to(torch.float32).reshape(-1), assign=True))
        self._pushes.flush()

    def _host(self, table, p):
        """A CPU float32 tensor the pull writes into: the parameter itself when it is a
        contiguous CPU float32 tensor (no copy), else a staging buffer."""
        if p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous():
            return p.detach().view(-1)
        buf = self._staging.get(table)
        if buf is None:
            buf = self._staging[table] = torch.empty(p.numel(), dtype=torch.float32)
        return buf

    def pull(self):
        """Copies the servers' values into the parameters and clears their gradients."""
        self._pushes.flush()
        handles = [(p, self.client.pull_dense_async(t, out=self._host(t, p)))
                   for t, p in self.params]
        for p, h in handles:
            out = h.wait()
            if out.data_ptr() != p.data_ptr():
                with torch.no_grad():
                    p.copy_(out.view_as(p))
            p.grad = None

    def push(self, accumulate_step=None):
        """Sends every parameter's .grad (parameters without one are skipped), asynchronously;
        flush() (or the next pull) waits for them. The pushes read the .grad tensors until
        then: do not change them before flush() (Worker.step does not)."""
        step = self._pushes.accumulate_step if accumulate_step is None else accumulate_step
        for t, p in self.params:
            if p.grad is not None:
                g = p.grad.detach().to(torch.float32).reshape(-1)
                self._pushes.add(self.client.push_dense_async(t, g, accumulate_step=step))

    def flush(self):
        self._pushes.flush()

    # Hooks for Worker.
    def begin_step(self, accumulate_step):
        self._pushes.accumulate_step = accumulate_step
        self.pull()

    def end_step(self):
        self.push()


def _leader(progress):
    """The lowest worker index not counted dead: it applies BSP steps."""
    dead = set(progress["dead_workers"])
    leader = 0
    while leader in dead:
        leader += 1
    return leader


class Worker:
    """Runs training steps over Tessera-backed modules (Embedding, EmbeddingBag,
    DenseParameters, or anything with begin_step/end_step/flush and `tables`).

    With a tessera.WorkerClock the steps follow the job's mode: BSP (every worker's gradients
    of a step are summed on the servers and applied once, as their mean, before any worker
    starts the next step), SSP(s) (no worker more than s steps ahead of the slowest) or async.
    Without a clock each step simply pulls, computes and pushes.
    """

    def __init__(self, client, modules, clock=None):
        self.client = client
        self.modules = list(modules)
        self.clock = clock
        self.steps = 0
        self.last_progress = None

    @contextlib.contextmanager
    def step(self):
        """A training step: forward and backward go inside the block. Yields the job's progress
        (None without a clock). On an exception the dense gradients are not pushed and the clock
        does not advance, but the embeddings' gradients pushed during backward stay applied (or
        in the BSP step's sums): a worker should stop after a failed step, not retry it (the job
        goes on without it once its lease lapses, or fails, by the clock's policy)."""
        clock = self.clock
        progress = clock.wait_to_start() if clock is not None else None
        bsp = clock is not None and clock.mode == "bsp"
        step = clock.clock // 2 + 1 if bsp else 0
        for m in self.modules:
            m.begin_step(step)
        self.last_progress = progress
        yield progress
        for m in self.modules:
            m.end_step()
        self.flush()
        if clock is not None:
            clock.finish()  # BSP: "pushed"
            if bsp:
                if clock.worker == _leader(progress):
                    pushed = clock.wait_to_start()  # every live worker pushed
                    scale = 1.0 / max(pushed["live_workers"], 1)
                    for m in self.modules:
                        for t in m.tables:
                            self.client.apply_step(t, step, scale)
                clock.finish()  # "applied"
        self.steps += 1

    def flush(self):
        for m in self.modules:
            m.flush()


def worker_batches(num_examples, batch_size, worker, num_workers, epochs, seed=0):
    """This worker's share of the training batches: yields (epoch, example indices).

    Every epoch shuffles the examples in the same order on every worker (seeded by seed +
    epoch) and worker i takes batches i, i + n, i + 2n, ...; every worker gets the same number
    of batches (the last num_batches % n of an epoch are left out), as BSP needs."""
    per_worker = num_examples // batch_size // num_workers
    if per_worker == 0:
        raise ValueError(f"{num_examples} examples give no batch of {batch_size} to each of "
                         f"{num_workers} workers")
    for epoch in range(epochs):
        order = torch.randperm(num_examples,
                               generator=torch.Generator().manual_seed(seed + epoch))
        for j in range(per_worker):
            start = (worker + j * num_workers) * batch_size
            yield epoch, order[start:start + batch_size]


class Progress:
    """Prints a progress line every `every` steps: mean loss and samples/s since the last."""

    def __init__(self, worker, batch_size, every=100):
        self.worker, self.batch_size, self.every = worker, batch_size, every
        self.steps = 0
        self._losses = []
        self._last = self.start = time.monotonic()

    def step(self, epoch, loss):
        self.steps += 1
        self._losses.append(float(loss))
        if self.steps % self.every == 0:
            now = time.monotonic()
            print(f"worker {self.worker} epoch {epoch + 1} step {self.steps} "
                  f"loss {sum(self._losses) / len(self._losses):.4f} "
                  f"{self.every * self.batch_size / (now - self._last):.0f} samples/s",
                  flush=True)
            self._losses.clear()
            self._last = now

    def done(self):
        print(f"worker {self.worker}: {self.steps} steps in "
              f"{time.monotonic() - self.start:.1f} s", flush=True)
