"""tessera.torch against a real local cluster: the Embedding's updates equal a local
torch.nn.Embedding with the same optimizer, dense parameters kept on Tessera train like local
ones, and BSP over two workers equals one worker on the whole batch."""

import threading

import numpy as np
import pytest
import torch
from torch import nn

import tessera
import tessera.testing
import tessera.torch as tt

STEPS = 6


def assert_close(actual, expected, rtol=1e-5, what=""):
    """Relative difference (to the largest magnitude) at most rtol."""
    actual = torch.as_tensor(actual, dtype=torch.float32)
    expected = torch.as_tensor(expected, dtype=torch.float32)
    scale = expected.abs().max().clamp_min(1e-12)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rtol, f"{what}: relative difference {err:.3g} > {rtol}"


def batches(vocab, seed, count=STEPS, size=(16, 3)):
    g = torch.Generator().manual_seed(seed)
    # Repeated ids within and across batches, and ids never seen before.
    return [torch.randint(0, vocab, size, generator=g) for _ in range(count)]


@pytest.mark.parametrize("server_opt,local_opt", [
    (tessera.Adagrad(lr=0.3), lambda p: torch.optim.Adagrad(p, lr=0.3)),
    (tessera.SGD(lr=0.5), lambda p: torch.optim.SGD(p, lr=0.5)),
], ids=["adagrad", "sgd"])
def test_embedding_matches_local_embedding(client, table_name, server_opt, local_opt):
    vocab, dim = 40, 8
    emb = tt.Embedding(client, table_name, dim, optimizer=server_opt)
    local = nn.Embedding(vocab, dim)
    with torch.no_grad():  # the same starting rows
        local.weight.copy_(client.pull_sparse(table_name, torch.arange(vocab)))
    opt = local_opt(local.parameters())
    target = torch.randn(dim)
    for step, ids in enumerate(batches(vocab, seed=1)):
        # A loss whose gradient differs per id and per occurrence.
        w = torch.linspace(0.5, 1.5, ids.numel()).reshape(ids.shape + (1,))
        loss = ((emb(ids) * w - target) ** 2).mean()
        loss.backward()
        opt.zero_grad()
        local_loss = ((local(ids) * w - target) ** 2).mean()
        local_loss.backward()
        opt.step()
        assert_close(loss.detach(), local_loss.detach(), what=f"loss at step {step}")
        emb.flush()
        assert_close(client.pull_sparse(table_name, torch.arange(vocab)), local.weight.detach(),
                     what=f"rows after step {step}")


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_embedding_bag_matches_local(client, table_name, mode):
    vocab, dim = 30, 4
    bag = tt.EmbeddingBag(client, table_name, dim, mode=mode, optimizer=tessera.Adagrad(lr=0.2))
    local = nn.EmbeddingBag(vocab, dim, mode=mode)
    with torch.no_grad():
        local.weight.copy_(client.pull_sparse(table_name, torch.arange(vocab)))
    opt = torch.optim.Adagrad(local.parameters(), lr=0.2)
    for step, ids in enumerate(batches(vocab, seed=2, size=(40,))):
        offsets = torch.tensor([0, 5, 5, 17, 30])  # an empty bag too
        bag(ids, offsets).pow(2).sum().backward()
        opt.zero_grad()
        local(ids, offsets).pow(2).sum().backward()
        opt.step()
        bag.flush()
        assert_close(client.pull_sparse(table_name, torch.arange(vocab)), local.weight.detach(),
                     what=f"{mode} rows after step {step}")


def test_embedding_checks_ids(client, table_name):
    emb = tt.Embedding(client, table_name, 4, num_embeddings=10)
    with pytest.raises(IndexError, match=r"ids must be in \[0, 10\), got \[0, 10\]"):
        emb(torch.tensor([0, 10]))
    with pytest.raises(TypeError, match="ids must be integers"):
        emb(torch.tensor([1.0]))
    with torch.no_grad():  # no gradient, no push
        assert emb(torch.tensor([[1, 2], [3, 1]])).shape == (2, 2, 4)
    with pytest.raises(ValueError, match="not sparse with dim 5"):
        tt.Embedding(client, table_name, 5, create=False)


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16),
                         nn.ReLU(), nn.Linear(16, 3))


def data(seed, n=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_dense_parameters_train_like_local_pytorch(client, table_name):
    model = mlp(seed=1)
    dense = tt.DenseParameters(client, model, table_name, optimizer=tessera.Adam(lr=0.01))
    # The module now holds the servers' initial values; LayerNorm's ones stay ones.
    assert torch.equal(model[3].weight.detach(), torch.ones(16))
    local = mlp(seed=2)
    local.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(local.parameters(), lr=0.01)
    worker = tt.Worker(client, [dense])
    x, y = data(seed=3)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(STEPS):
        with worker.step():
            loss = loss_fn(model(x), y)
            loss.backward()
        opt.zero_grad()
        local_loss = loss_fn(local(x), y)
        local_loss.backward()
        opt.step()
        assert_close(loss.detach(), local_loss.detach(), what=f"loss at step {step}")
    dense.pull()
    for (name, p), q in zip(model.named_parameters(), local.parameters()):
        assert_close(p.detach(), q.detach(), rtol=1e-4, what=name)
    assert worker.steps == STEPS


def test_dense_parameters_upload_a_modules_own_weights(client, table_name):
    trained = mlp(seed=9)
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(3.0).add_(0.5)  # not what any initializer gives
    tt.DenseParameters(client, trained, table_name, upload=True)
    fresh = mlp(seed=10)
    tt.DenseParameters(client, fresh, table_name)  # another worker: pulls what is there
    for (name, p), q in zip(trained.named_parameters(), fresh.parameters()):
        assert torch.equal(p.detach(), q.detach()), name


def run_workers(cluster, n, job, mode, staleness, train):
    """Runs train(client, clock, w) for w in 0..n-1 on threads, each with its own client and
    clock; re-raises the first failure."""
    errors = [None] * n

    def run(w):
        try:
            with tessera.Client(coordinator=cluster.coordinator_address) as client:
                clock = tessera.WorkerClock(cluster.coordinator_address, job, n, w, mode=mode,
                                            staleness=staleness)
                train(client, clock, w)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors[w] = e

    threads = [threading.Thread(target=run, args=(w,)) for w in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a worker did not finish in 300 s"
    for e in errors:
        if e is not None:
            raise e


def test_bsp_two_workers_equal_one_worker_on_the_whole_batch(coordinated, table_name):
    """Each worker computes the mean loss of half of every batch; BSP applies the mean of the
    two gradients once per step: exactly full-batch training."""
    vocab = 20
    x, y = data(seed=4, n=32)
    ids = torch.randint(0, vocab, (32, 2), generator=torch.Generator().manual_seed(5))

    class Net(nn.Module):
        def __init__(self, emb):
            super().__init__()
            self.emb = emb
            self.body = mlp(seed=6)
            self.head_in = nn.Linear(12 + 2 * 4, 12)

        def forward(self, x, ids):
            return self.body(self.head_in(torch.cat([x, self.emb(ids).flatten(1)], 1)))

    def make(client):
        net = Net(tt.Embedding(client, table_name + ".emb", 4, optimizer=tessera.SGD(lr=0.2)))
        dense = tt.DenseParameters(client, net, table_name, optimizer=tessera.SGD(lr=0.2))
        return net, dense

    # The starting point, before any worker runs: the tables' initial values.
    with tessera.Client(coordinator=coordinated.coordinator_address) as client:
        net, _ = make(client)
        start = {n: p.detach().clone() for n, p in net.named_parameters()}
        start_rows = client.pull_sparse(table_name + ".emb", torch.arange(vocab))

    results = {}

    def train(client, clock, w):
        net, dense = make(client)
        worker = tt.Worker(client, [net.emb, dense], clock=clock)
        half = slice(w * 16, (w + 1) * 16)
        for _ in range(STEPS):
            with worker.step():
                nn.functional.cross_entropy(net(x[half], ids[half]), y[half]).backward()
        clock.wait_for_all(timeout=60)
        dense.pull()
        results[w] = {n: p.detach().clone() for n, p in net.named_parameters()}
        results[w]["emb"] = client.pull_sparse(table_name + ".emb", torch.arange(vocab))

    run_workers(coordinated, 2, table_name, "bsp", 0, train)

    # The same model trained locally on whole batches from the same starting values.
    local = Net(nn.Embedding(vocab, 4))
    with torch.no_grad():
        for n, p in local.named_parameters():
            p.copy_(start_rows if n == "emb.weight" else start[n])
    opt = torch.optim.SGD(local.parameters(), lr=0.2)
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(local(x, ids), y).backward()
        opt.step()
    for n, p in local.named_parameters():
        for w in range(2):
            got = results[w]["emb"] if n == "emb.weight" else results[w][n]
            assert_close(got, p.detach(), what=f"{n} (worker {w})")
        if n != "emb.weight":
            assert not torch.equal(p.detach(), start[n]), f"{n} did not train"


@pytest.mark.parametrize("mode,staleness", [("ssp", 1), ("async", 0)])
def test_ssp_and_async_workers_train(coordinated, table_name, mode, staleness):
    x, y = data(seed=7, n=256)
    losses = {}

    def train(client, clock, w):
        model = mlp(seed=8)
        dense = tt.DenseParameters(client, model, table_name, optimizer=tessera.Adam(lr=0.02))
        worker = tt.Worker(client, [dense], clock=clock)
        part = slice(w * 128, (w + 1) * 128)
        history = []
        for _ in range(30):
            with worker.step() as progress:
                assert clock.clock - progress["min_clock"] <= staleness or mode == "async"
                loss = nn.functional.cross_entropy(model(x[part]), y[part])
                loss.backward()
            history.append(loss.item())
        losses[w] = history

    run_workers(coordinated, 2, table_name, mode, staleness, train)
    for w in range(2):
        assert np.mean(losses[w][-5:]) < 0.8 * np.mean(losses[w][:5]), losses[w]


def test_embedding_training_survives_a_primary_failover(tmp_path):
    """The primary of the only shard is SIGKILLed while a push is in flight; the client follows
    the failover and the rows still equal a local torch.nn.Embedding's: no push lost or applied
    twice."""
    vocab, dim = 30, 4
    with tessera.testing.LocalCluster(num_servers=2, replication=2, num_shards=1,
                                      coordinator_args=["--lease_ms=500"],
                                      log_dir=str(tmp_path)) as c, \
            tessera.Client(coordinator=c.coordinator_address) as client:
        emb = tt.Embedding(client, "emb", dim, optimizer=tessera.SGD(lr=0.3))
        local = nn.Embedding(vocab, dim)
        with torch.no_grad():
            local.weight.copy_(client.pull_sparse("emb", torch.arange(vocab)))
        opt = torch.optim.SGD(local.parameters(), lr=0.3)
        primary = c.replicas_of(0)[0]
        for step, ids in enumerate(batches(vocab, seed=3, count=12)):
            emb(ids).pow(2).sum().backward()  # pushes asynchronously
            if step == 6:
                c.kill_server(primary)
            opt.zero_grad()
            local(ids).pow(2).sum().backward()
            opt.step()
        emb.flush()
        assert c.replicas_of(0)[0] != primary
        assert_close(client.pull_sparse("emb", torch.arange(vocab)), local.weight.detach(),
                     what="rows after the failover")


@pytest.mark.parametrize("replicated", [False, True], ids=["static", "coordinated"])
def test_checkpoint_and_restore_from_python(tmp_path, replicated):
    """Train, checkpoint, train on, restore: the rows are the checkpoint's again."""
    directory = str(tmp_path / "checkpoints")
    with tessera.testing.LocalCluster(num_servers=2, replication=1 if replicated else 0,
                                      server_args=[f"--checkpoint_dir={directory}"],
                                      log_dir=str(tmp_path / "logs")) as c:
        target = dict(coordinator=c.coordinator_address) if replicated else \
            dict(servers=c.addresses)
        with tessera.Client(**target) as client:
            emb = tt.Embedding(client, "emb", 12, optimizer=tessera.Adagrad(lr=0.1))
            model = mlp(seed=11)
            dense = tt.DenseParameters(client, model, "mlp")
            worker = tt.Worker(client, [emb, dense])
            ids = batches(50, seed=4, count=6, size=(12, 3))
            x, y = data(seed=5, n=12)

            def train(steps):
                for b in steps:
                    with worker.step():
                        nn.functional.cross_entropy(model(x + emb(b).sum(1)), y).backward()

            train(ids[:3])
            first = tessera.checkpoint(directory, **target)
            assert first["id"] > 0 and first["parent_id"] == 0 and first["rows"] > 0
            rows = client.pull_sparse("emb", torch.arange(50))
            weights = client.pull_dense("mlp.0.weight")
            train(ids[3:])
            assert not torch.equal(client.pull_sparse("emb", torch.arange(50)), rows)
            second = tessera.checkpoint(directory, **target)  # incremental on the first
            assert second["parent_id"] == first["id"]
            restored = tessera.restore(directory, id=first["id"], **target)
            assert restored["id"] == first["id"]
            assert torch.equal(client.pull_sparse("emb", torch.arange(50)), rows)
            np.testing.assert_array_equal(client.pull_dense("mlp.0.weight"), weights)
            with pytest.raises(tessera.errors.Error, match="9999"):
                tessera.restore(directory, id=9999, **target)
