"""tessera.Client against a real local cluster: round trips of every accepted dtype and shape,
zero-copy outputs, asynchronous calls, the GIL, errors, and the worker clock."""

import gc
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

import tessera
import tessera.testing
from tessera import errors

DIM = 8


def assign_table(client, name, dim=DIM):
    """A sparse table whose pushes write values (so a round trip must return them exactly)."""
    client.create_table(name, dim=dim, optimizer=tessera.Assign())


@pytest.mark.parametrize("dtype", [np.uint64, np.int64, np.int32, np.uint32, np.int16, np.uint8])
def test_sparse_round_trip_every_key_dtype(client, table_name, dtype):
    assign_table(client, table_name)
    keys = np.array([5, 1, 250, 7], dtype=dtype)
    values = np.random.default_rng(1).standard_normal((4, DIM)).astype(np.float32)
    client.push_sparse(table_name, keys, values)
    out = client.pull_sparse(table_name, keys)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (4, DIM)
    np.testing.assert_array_equal(out, values)
    # The same rows through uint64 keys (every dtype names the same rows).
    np.testing.assert_array_equal(
        client.pull_sparse(table_name, keys.astype(np.uint64)), values)


def test_sparse_round_trip_lists_torch_and_shapes(client, table_name):
    assign_table(client, table_name)
    rng = np.random.default_rng(2)
    values = rng.standard_normal((6, DIM)).astype(np.float32)
    client.push_sparse(table_name, [10, 11, 12, 13, 14, 15], values)  # a Python list
    # 2-D keys are flattened; pulls may repeat keys.
    out = client.pull_sparse(table_name, np.array([[10, 15], [15, 12]]))
    np.testing.assert_array_equal(out, values[[0, 5, 5, 2]])
    # torch in, torch out (int64 and int32 ids).
    for ids in (torch.tensor([11, 14]), torch.tensor([11, 14], dtype=torch.int32)):
        t = client.pull_sparse(table_name, ids)
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
        np.testing.assert_array_equal(t.numpy(), values[[1, 4]])
    # Values as a flat array, a torch tensor, and a non-contiguous view (copied, same values).
    client.push_sparse(table_name, np.array([20, 21], np.uint64), values[:2].reshape(-1))
    client.push_sparse(table_name, torch.tensor([22]), torch.from_numpy(values[2:3]))
    wide = np.zeros((2, DIM * 2), np.float32)
    wide[:, ::2] = values[3:5]
    client.push_sparse(table_name, [23, 24], wide[:, ::2])
    np.testing.assert_array_equal(client.pull_sparse(table_name, [20, 21, 22, 23, 24]),
                                  values[:5])
    # No keys: an empty (0, dim) result without a call failing.
    assert client.pull_sparse(table_name, []).shape == (0, DIM)
    client.push_sparse(table_name, np.array([], np.uint64), np.zeros((0, DIM), np.float32))


def test_sparse_full_uint64_range_and_large_batches(client, table_name):
    assign_table(client, table_name, dim=4)
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, 2**64 - 1, size=120_000, dtype=np.uint64, endpoint=True))
    keys[0] = 2**64 - 1  # the high bit set: not representable as int64
    values = rng.standard_normal((keys.size, 4)).astype(np.float32)
    client.push_sparse(table_name, keys, values)  # several chunks per shard
    out = np.empty((keys.size, 4), np.float32)
    assert client.pull_sparse(table_name, keys, out=out) is out
    np.testing.assert_array_equal(out, values)
    assert client.describe_table(table_name).rows == keys.size


def test_pull_writes_into_out_without_a_copy(client, table_name):
    assign_table(client, table_name)
    values = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM)
    client.push_sparse(table_name, [1, 2, 3], values)
    out_t = torch.zeros(3, DIM)
    assert client.pull_sparse(table_name, [1, 2, 3], out=out_t) is out_t
    np.testing.assert_array_equal(out_t.numpy(), values)
    flat = np.zeros(3 * DIM, np.float32)  # any shape with the right number of elements
    client.pull_sparse(table_name, [1, 2, 3], out=flat)
    np.testing.assert_array_equal(flat, values.reshape(-1))


def test_dense_round_trips(client, table_name):
    size = 300_001  # several blocks and chunks, not a multiple of anything
    client.create_table(table_name, size=size, optimizer="assign", block_elems=4096)
    values = np.random.default_rng(4).standard_normal(size).astype(np.float32)
    client.push_dense(table_name, values)
    np.testing.assert_array_equal(client.pull_dense(table_name), values)
    np.testing.assert_array_equal(client.pull_dense(table_name, offset=1000, count=5000),
                                  values[1000:6000])
    # A torch parameter's storage as out (what tessera.torch does): no copy.
    param = torch.nn.Parameter(torch.zeros(100, 3))
    view = param.detach()
    assert client.pull_dense(table_name, offset=7, out=view) is view
    np.testing.assert_array_equal(param.detach().numpy().reshape(-1), values[7:307])
    # Push a slice from torch; pull it back.
    client.push_dense(table_name, torch.ones(10), offset=size - 10)
    np.testing.assert_array_equal(client.pull_dense(table_name, offset=size - 10),
                                  np.ones(10, np.float32))


def test_optimizer_runs_on_the_servers(client, table_name):
    client.create_table(table_name, dim=2, optimizer=tessera.SGD(lr=0.5),
                        initializer=tessera.Normal(mean=1.0, stddev=0.0))
    client.push_sparse(table_name, [9], np.array([[2.0, -4.0]], np.float32))
    np.testing.assert_allclose(client.pull_sparse(table_name, [9]), [[0.0, 3.0]])
    info = client.describe_table(table_name)
    assert (info.kind, info.dim, info.optimizer, info.config["learning_rate"]) == \
        ("sparse", 2, "sgd", 0.5)
    assert table_name in [t.name for t in client.list_tables()]


def test_assign_loads_weights_and_keeps_the_optimizer(client, table_name):
    client.create_table(table_name, dim=2, optimizer=tessera.Adagrad(lr=0.5))
    client.create_table(table_name + "_d", size=5, optimizer=tessera.SGD(lr=0.5))
    weights = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
    client.push_sparse(table_name, [7, 8], weights, assign=True)  # rows created by the push
    np.testing.assert_array_equal(client.pull_sparse(table_name, [7, 8]), weights)
    client.push_dense(table_name + "_d", np.arange(5, dtype=np.float32), assign=True)
    np.testing.assert_array_equal(client.pull_dense(table_name + "_d"), np.arange(5))
    # Ordinary pushes still run the optimizer from there (Adagrad: the first step is lr * sign).
    client.push_sparse(table_name, [7], np.array([[2.0, -1.0]], np.float32))
    np.testing.assert_allclose(client.pull_sparse(table_name, [7]), [[0.5, -1.5]], rtol=1e-6)
    client.push_dense(table_name + "_d", np.ones(5, np.float32))
    np.testing.assert_allclose(client.pull_dense(table_name + "_d"), np.arange(5) - 0.5)
    with pytest.raises(errors.InvalidArgumentError, match="cannot both assign values and "
                                                         "accumulate step 3"):
        client.push_dense(table_name + "_d", np.ones(5, np.float32), accumulate_step=3,
                          assign=True)


def test_assigned_weights_survive_a_failover(tmp_path):
    """Backups replay an assigning push as such: the promoted backup has the weights."""
    with tessera.testing.LocalCluster(num_servers=2, replication=2, num_shards=1,
                                      log_dir=str(tmp_path)) as c, \
            tessera.Client(coordinator=c.coordinator_address) as client:
        client.create_table("w", size=1000, optimizer=tessera.Adam(lr=0.1))
        values = np.linspace(-1, 1, 1000, dtype=np.float32)
        client.push_dense("w", values, assign=True)
        primary = c.replicas_of(0)[0]
        c.stop_server(primary)
        np.testing.assert_array_equal(client.pull_dense("w"), values)
        assert c.replicas_of(0)[0] != primary


def test_a_lost_shard_fails_fast_and_the_other_shards_serve(tmp_path):
    """With a shard LOST, a new client connects, reads the healthy shard (its table config
    comes from any shard) and gets UnavailableError naming the lost one at once."""
    with tessera.testing.LocalCluster(num_servers=2, replication=1, num_shards=2,
                                      server_args=["--heartbeat_ms=100"],
                                      coordinator_args=["--lease_ms=1000"],
                                      log_dir=str(tmp_path)) as c:
        with tessera.Client(coordinator=c.coordinator_address) as creator:
            creator.create_table("emb", dim=2, optimizer=tessera.Adagrad(lr=0.1))
            creator.push_sparse("emb", np.arange(32), np.ones((32, 2), np.float32))
        c.kill_server(c.replicas_of(0)[0])
        deadline = time.monotonic() + 30
        while c.replicas_of(0) and time.monotonic() < deadline:  # (empty once LOST)
            time.sleep(0.05)
        assert c.replicas_of(0) == []
        with tessera.Client(coordinator=c.coordinator_address) as client:
            served, lost = 0, 0
            for key in range(32):
                start = time.monotonic()
                try:
                    assert client.pull_sparse("emb", np.array([key])).shape == (1, 2)
                    served += 1
                except tessera.errors.UnavailableError as e:
                    assert "shard 0 is LOST" in str(e)
                    assert time.monotonic() - start < 5  # not after 30 s of retries
                    lost += 1
            assert served > 0 and lost > 0


def test_bad_arguments_raise_before_any_call(client, table_name):
    assign_table(client, table_name)
    with pytest.raises(TypeError, match="keys: expected integer ids, got float64"):
        client.pull_sparse(table_name, np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="keys: expected integer ids"):
        client.pull_sparse(table_name, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="key -3 at position 1 is negative"):
        client.pull_sparse(table_name, np.array([1, -3], np.int64))
    with pytest.raises(TypeError, match="grads: expected float32 values, got float64"):
        client.push_sparse(table_name, [1], np.zeros((1, DIM)))
    with pytest.raises(TypeError, match="expected float32 values, got torch.float64"):
        client.push_sparse(table_name, [1], torch.zeros(1, DIM, dtype=torch.float64))
    with pytest.raises(ValueError, match="grads: 2 rows for 1 keys"):
        client.push_sparse(table_name, [1], np.zeros((2, DIM), np.float32))
    with pytest.raises(ValueError, match="out: expected 16 elements"):
        client.pull_sparse(table_name, [1, 2], out=np.zeros(15, np.float32))
    with pytest.raises(ValueError, match="not contiguous"):
        client.pull_sparse(table_name, [1], out=np.zeros((DIM, 2), np.float32)[:, 0])
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros((1, DIM), np.float32)
        ro.flags.writeable = False
        client.pull_sparse(table_name, [1], out=ro)
    with pytest.raises(ValueError, match="out: expected a contiguous float32 CPU tensor"):
        client.pull_sparse(table_name, [1], out=torch.zeros(1, DIM, dtype=torch.float64))
    with pytest.raises(ValueError, match="give dim= .sparse. or size= .dense."):
        client.create_table("x", dim=4, size=4)
    with pytest.raises(TypeError, match="optimizer must be one of"):
        client.create_table("x", dim=4, optimizer="rmsprop")
    with pytest.raises(TypeError, match="unknown options"):
        tessera.Client(servers=["127.0.0.1:1"], timeout=3)


def test_server_errors_map_to_exceptions(client, table_name):
    assign_table(client, table_name)
    with pytest.raises(errors.NotFoundError) as e:
        client.pull_sparse("no_such_table", [1])
    assert e.value.code == 5 and e.value.code_name == "NOT_FOUND"
    assert "table 'no_such_table' does not exist" in e.value.message
    assert isinstance(e.value, LookupError) and isinstance(e.value, tessera.Error)
    # Wrong dimension: the server's precise message, and a ValueError.
    with pytest.raises(errors.InvalidArgumentError, match="has dim 8, request has dim 4"):
        client.push_sparse(table_name, [1, 2], np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError):
        client.push_sparse(table_name, [1, 2], np.zeros((2, 4), np.float32))
    # Repeated keys in one push.
    with pytest.raises(errors.InvalidArgumentError, match="repeat|distinct|more than once"):
        client.push_sparse(table_name, [3, 3], np.zeros((2, DIM), np.float32))
    # A bad table spec; the same name with another spec.
    with pytest.raises(errors.InvalidArgumentError, match="sparse dim must be in"):
        client.create_table("bad_dim", dim=0)
    with pytest.raises(errors.Error) as e:
        client.create_table(table_name, dim=DIM + 1)
    assert e.value.code_name in ("ALREADY_EXISTS", "FAILED_PRECONDITION")
    # Dense range outside the table; a dense call on a sparse table.
    client.create_table(table_name + "_d", size=10)
    with pytest.raises(errors.InvalidArgumentError, match=r"range \[5, 15\) is outside"):
        client.push_dense(table_name + "_d", np.zeros(10, np.float32), offset=5)
    with pytest.raises(errors.FailedPreconditionError, match="is sparse, not dense"):
        client.pull_dense(table_name)
    # Nothing above changed the table's state.
    client.push_sparse(table_name, [3], np.full((1, DIM), 2.0, np.float32))
    np.testing.assert_array_equal(client.pull_sparse(table_name, [3]), np.full((1, DIM), 2.0))


def test_oversized_request_is_resource_exhausted(tmp_path):
    with tessera.testing.LocalCluster(num_servers=1, server_args=["--max_keys_per_request=100"],
                                      log_dir=str(tmp_path)) as c, \
            tessera.Client(servers=c.addresses, chunk_bytes=1 << 20) as client:
        client.create_table("t", dim=2)
        with pytest.raises(errors.ResourceExhaustedError, match="over the limit of 100"):
            client.pull_sparse("t", np.arange(1000))


def test_unreachable_server_is_unavailable(tmp_path):
    c = tessera.testing.LocalCluster(num_servers=1, log_dir=str(tmp_path))
    client = tessera.Client(servers=c.addresses, max_attempts=2, rpc_timeout=2.0)
    client.create_table("t", dim=2)
    c.stop()
    with pytest.raises(errors.UnavailableError) as e:
        client.pull_sparse("t", [1])
    assert isinstance(e.value, ConnectionError) and e.value.code == 14
    client.close()


def test_a_push_with_a_repeated_key_changes_nothing(client, table_name):
    """The repeat is found before anything is sent: no shard applies its part."""
    assign_table(client, table_name)
    keys = np.arange(200, dtype=np.uint64)  # on both shards
    client.push_sparse(table_name, keys, np.zeros((200, DIM), np.float32))
    with pytest.raises(errors.InvalidArgumentError, match="key 7 occurs more than once"):
        client.push_sparse(table_name, np.append(keys, np.uint64(7)), np.ones((201, DIM), np.float32))
    np.testing.assert_array_equal(client.pull_sparse(table_name, keys), np.zeros((200, DIM)))


def test_byte_order_is_respected(client, table_name):
    assign_table(client, table_name)
    values = np.arange(2 * DIM, dtype=">f4").reshape(2, DIM)
    client.push_sparse(table_name, np.array([1, 2], ">i8"), values)
    np.testing.assert_array_equal(client.pull_sparse(table_name, np.array([1, 2], "<u8")),
                                  values.astype(np.float32))
    assert client.describe_table(table_name).rows == 2


def test_bad_configs_and_options_name_the_field(client, cluster):
    with pytest.raises(TypeError, match="dim: expected a non-negative integer in range, got -1"):
        client.create_table("c", dim=-1)
    with pytest.raises(TypeError, match="dim: expected a non-negative integer in range, got 8.0"):
        client.create_table("c", dim=8.0)
    with pytest.raises(TypeError, match="dim: expected .* got 8589934592"):
        client.create_table("c", dim=2**33)
    with pytest.raises(TypeError, match="learning_rate: expected a number, got 'x'"):
        client.create_table("c", dim=2, optimizer=tessera.SGD(lr="x"))
    with pytest.raises(ValueError, match="rpc_timeout must be a finite number of seconds"):
        tessera.Client(servers=cluster.addresses, rpc_timeout=float("nan"))
    client.create_table("c_ok", dim=2)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        client.pull_sparse_async("c_ok", [1]).wait(timeout=float("nan"))


def test_pull_dense_past_the_end(client, table_name):
    client.create_table(table_name, size=10)
    with pytest.raises(errors.InvalidArgumentError, match="offset 11 is outside"):
        client.pull_dense(table_name, offset=11)
    assert client.pull_dense(table_name, offset=10).shape == (0,)


def test_async_calls(client, table_name):
    assign_table(client, table_name)
    rng = np.random.default_rng(5)
    batches = [(np.arange(i * 1000, (i + 1) * 1000, dtype=np.uint64),
                rng.standard_normal((1000, DIM)).astype(np.float32)) for i in range(20)]
    pushes = [client.push_sparse_async(table_name, k, v) for k, v in batches]
    assert all(h.wait(timeout=30) is None for h in pushes)
    pulls = [client.pull_sparse_async(table_name, k) for k, _ in batches]
    for h, (_, v) in zip(pulls, batches):
        np.testing.assert_array_equal(h.wait(), v)
        assert h.done()
    # torch keys: a torch result; a dropped handle still completes (its arrays stay alive).
    t = client.pull_sparse_async(table_name, torch.arange(3)).result()
    assert isinstance(t, torch.Tensor) and t.shape == (3, DIM)
    client.push_sparse_async(table_name, np.array([99], np.uint64), np.ones((1, DIM), np.float32))
    np.testing.assert_array_equal(client.pull_sparse(table_name, [99]), np.ones((1, DIM)))
    # Dropped pulls whose keys and output exist only in the handle: the handle keeps them alive
    # until the call completes (else the call would write into freed memory).
    for _ in range(20):
        client.pull_sparse_async(table_name, np.arange(5000, dtype=np.uint64))
        gc.collect()
    np.testing.assert_array_equal(client.pull_sparse(table_name, [0]), batches[0][1][:1])
    # Errors surface at wait().
    h = client.push_sparse_async(table_name, [1, 1], np.zeros((2, DIM), np.float32))
    with pytest.raises(errors.InvalidArgumentError):
        h.wait()


def longest_gap_while(busy, spinning):
    """Spins on this thread while busy() holds, setting the event `spinning` once it spins;
    returns the longest pause between two spins (a call on another thread that kept the GIL
    through a 300 ms wait shows as a gap >= 300 ms)."""
    longest, last = 0.0, time.monotonic()
    deadline = last + 30
    while busy() and last < deadline:
        now = time.monotonic()
        longest, last = max(longest, now - last), now
        if not spinning.is_set():
            spinning.set()
    return longest


def test_wait_timeout_and_the_gil(tmp_path):
    # Every push takes 300 ms on this server: long enough to observe both.
    with tessera.testing.LocalCluster(num_servers=1, server_args=["--testing_push_delay_ms=300"],
                                      log_dir=str(tmp_path)) as c, \
            tessera.Client(servers=c.addresses) as client:
        client.create_table("t", dim=2)
        h = client.push_sparse_async("t", [1], np.ones((1, 2), np.float32))
        with pytest.raises(TimeoutError, match="did not complete within 0.01 s"):
            h.wait(timeout=0.01)
        assert not h.done()
        h.wait(timeout=30)
        # A blocking push on another thread must not hold the GIL while it waits. It starts once
        # this thread spins, so that a held GIL would show as a pause in the spinning.
        spinning = threading.Event()

        def push():
            spinning.wait(timeout=30)
            client.push_sparse("t", [2], np.ones((1, 2), np.float32))

        thread = threading.Thread(target=push)
        thread.start()
        gap = longest_gap_while(thread.is_alive, spinning)
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert gap < 0.15, f"this thread stalled {gap:.3f} s during the other thread's push"


def interrupt_after(seconds):
    """SIGINT to this process after `seconds` (what Ctrl-C sends)."""
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_interrupts_waits(tmp_path, coordinated):
    with tessera.testing.LocalCluster(num_servers=1, server_args=["--testing_push_delay_ms=2000"],
                                      log_dir=str(tmp_path)) as c, \
            tessera.Client(servers=c.addresses) as client:
        client.create_table("t", dim=2)
        h = client.push_sparse_async("t", [1], np.ones((1, 2), np.float32))
        start = time.monotonic()
        interrupt_after(0.2)
        with pytest.raises(KeyboardInterrupt):
            h.wait()
        assert time.monotonic() - start < 1.5  # not the 2 s the push takes
        h.wait(timeout=30)  # the call went on
        start = time.monotonic()
        interrupt_after(0.2)
        with pytest.raises(KeyboardInterrupt):
            client.push_sparse("t", [2], np.ones((1, 2), np.float32))
        assert time.monotonic() - start < 1.5
        gc.collect()  # the interrupted call goes on; the module keeps its arrays until it ends
        expected = np.full((2, 2), -0.01, np.float32)  # SGD, rate 0.01, gradient 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # await the orphaned push's effect (bounded)
            if np.allclose(client.pull_sparse("t", [1, 2]), expected):
                break
        np.testing.assert_allclose(client.pull_sparse("t", [1, 2]), expected)
    # A worker waiting at a BSP barrier for a worker that never comes.
    clock = tessera.WorkerClock(coordinated.coordinator_address, "ctrl_c_job", 2, 0)
    clock.wait_to_start(timeout=30)
    clock.finish()
    start = time.monotonic()
    interrupt_after(0.3)
    with pytest.raises(KeyboardInterrupt):
        clock.wait_to_start()
    assert time.monotonic() - start < 3.0


def test_closed_client_raises(cluster):
    client = tessera.Client(servers=cluster.addresses)
    client.close()
    with pytest.raises(ValueError, match="the client is closed"):
        client.list_tables()


def test_worker_clock_orders_workers(coordinated):
    """Two workers of a BSP job: neither starts step 2 before both finished step 1."""
    clocks = [tessera.WorkerClock(coordinated.coordinator_address, "clock_job", 2, w, mode="bsp")
              for w in range(2)]
    clocks[0].wait_to_start(timeout=30)
    clocks[0].finish()
    with pytest.raises(errors.DeadlineExceededError):
        clocks[0].wait_to_start(timeout=0.3)  # worker 1 has not finished step 1
    progress = clocks[1].wait_to_start(timeout=30)
    assert progress["live_workers"] == 2
    clocks[1].finish()
    assert clocks[0].wait_to_start(timeout=30)["min_clock"] == 1
    assert clocks[0].clock == 1 and clocks[0].mode == "bsp"
    with pytest.raises(ValueError, match="mode must be"):
        tessera.WorkerClock(coordinated.coordinator_address, "j", 1, 0, mode="sync")
    with pytest.raises(ValueError, match="lease must be in"):
        tessera.WorkerClock(coordinated.coordinator_address, "j", 1, 0, lease=float("nan"))


def test_coordinated_client(coordinated, table_name):
    with tessera.Client(coordinator=coordinated.coordinator_address) as client:
        assert client.num_shards == 2
        assign_table(client, table_name)
        client.push_sparse(table_name, np.arange(100), np.ones((100, DIM), np.float32))
        assert client.pull_sparse(table_name, np.arange(100)).sum() == 100 * DIM


def test_lifecycle_ttl_removes_rows_not_pushed_for_its_time(client, table_name):
    info = client.create_table(table_name, dim=2, optimizer="adagrad",
                               lifecycle=tessera.Lifecycle(ttl_seconds=1))
    assert info.lifecycle["ttl_seconds"] == 1 and info.lifecycle["victims"] == "lru"
    client.push_sparse(table_name, [1, 2], np.ones((2, 2), np.float32))
    # A pull of a key without a row reads the initializer's values and creates nothing.
    np.testing.assert_array_equal(client.pull_sparse(table_name, [3]), np.zeros((1, 2)))
    assert client.describe_table(table_name).rows == 2
    # Both rows go once a second has passed without a push (bounded wait on the condition).
    deadline = time.monotonic() + 20
    while client.describe_table(table_name).rows != 0:
        assert time.monotonic() < deadline, "rows not removed by their TTL within 20 s"
        time.sleep(0.05)
    assert client.describe_table(table_name).evicted == {"ttl": 2, "capacity": 0, "memory": 0,
                                                         "would": 0}
    np.testing.assert_array_equal(client.pull_sparse(table_name, [1]), np.zeros((1, 2)))
    with pytest.raises(errors.InvalidArgumentError, match="need a policy"):
        client.create_table(table_name + "_x", dim=2, lifecycle=tessera.Lifecycle(dry_run=True))
    with pytest.raises(errors.InvalidArgumentError, match="only to sparse tables"):
        client.create_table(table_name + "_d", size=4,
                            lifecycle=tessera.Lifecycle(ttl_seconds=5))


def test_lifecycle_ttl_in_steps_counts_the_pushes_steps(client, table_name):
    client.create_table(table_name, dim=2, optimizer="add",
                        lifecycle=tessera.Lifecycle(ttl_steps=5))
    with pytest.raises(errors.InvalidArgumentError, match="training steps"):
        client.push_sparse(table_name, [1], np.ones((1, 2), np.float32))
    client.push_sparse(table_name, [1, 2], np.ones((2, 2), np.float32), step=1)
    # Step 6 (a server's step is the highest its pushes carried: keys on both shards).
    later = np.arange(100, 200, dtype=np.uint64)
    client.push_sparse(table_name, later, np.ones((100, 2), np.float32), step=6)
    # Keys 1 and 2 (step 1) are 5 steps old once step 6 is applied: removed by the next rounds.
    deadline = time.monotonic() + 20
    while client.describe_table(table_name).rows != 100:
        assert time.monotonic() < deadline, "rows not removed by their TTL in steps within 20 s"
        time.sleep(0.05)
    np.testing.assert_array_equal(client.pull_sparse(table_name, [1, 100]), [[0, 0], [1, 1]])


def test_remove_rows_on_every_shard_and_a_changed_spec_is_named(client, table_name):
    client.create_table(table_name, dim=2, optimizer="add")
    keys = np.arange(1, 101, dtype=np.uint64)  # spread over both shards
    client.push_sparse(table_name, keys, np.ones((100, 2), np.float32))
    assert client.remove_rows(table_name, keys[:40]) == 40
    assert client.remove_rows(table_name, keys[:40]) == 0  # (already gone: a retry is safe)
    assert client.describe_table(table_name).rows == 60
    np.testing.assert_array_equal(client.pull_sparse(table_name, keys[[0, 50]]),
                                  [[0, 0], [1, 1]])  # removed: as if never seen
    with pytest.raises(errors.AlreadyExistsError,
                       match=r"lifecycle: none here, ttl 5 s requested"):
        client.create_table(table_name, dim=2, optimizer="add",
                            lifecycle=tessera.Lifecycle(ttl_seconds=5))


def test_disk_tier_rows_move_to_disk_and_back_bit_exact(client, table_name):
    info = client.create_table(table_name, dim=3, optimizer="adam",
                               lifecycle=tessera.Lifecycle(tier_ram_rows=1000))
    assert info.lifecycle["tier_ram_rows"] == 1000
    ref = table_name + "_ref"
    client.create_table(ref, dim=3, optimizer="adam")
    keys = np.arange(1, 201, dtype=np.uint64)  # spread over both shards
    rng = np.random.default_rng(3)
    for _ in range(3):
        g = rng.standard_normal((200, 3)).astype(np.float32)
        for t in (table_name, ref):
            client.push_sparse(t, keys, g)
    assert client.demote_rows(table_name, keys[:120]) == 120
    status = client.describe_table(table_name)
    assert (status.rows, status.tier["disk_rows"], status.tier["demoted"]) == (80, 120, 120)
    # Pulls read rows on disk where they are; pushes bring them back with slots and steps.
    np.testing.assert_array_equal(client.pull_sparse(table_name, keys),
                                  client.pull_sparse(ref, keys))
    g = rng.standard_normal((200, 3)).astype(np.float32)
    for t in (table_name, ref):
        client.push_sparse(t, keys, g)
    np.testing.assert_array_equal(client.pull_sparse(table_name, keys),
                                  client.pull_sparse(ref, keys))
    status = client.describe_table(table_name)
    assert (status.rows, status.tier["disk_rows"], status.tier["promoted"]) == (200, 0, 120)
    with pytest.raises(errors.InvalidArgumentError, match="has no disk tier"):
        client.demote_rows(ref, keys[:3])
    with pytest.raises(errors.InvalidArgumentError, match="takes no capacity_rows"):
        client.create_table(table_name + "_x", dim=2,
                            lifecycle=tessera.Lifecycle(capacity_rows=10, tier_ram_rows=5))


def test_lifecycle_admission_creates_a_row_at_the_kth_push(client, table_name):
    info = client.create_table(table_name, dim=2, optimizer="add",
                               lifecycle=tessera.Lifecycle(admission_min_count=2))
    assert info.lifecycle["admission_sketch_width"] == 2 ** 21  # resolved default
    client.push_sparse(table_name, [5], np.ones((1, 2), np.float32))
    assert client.describe_table(table_name).rows == 0  # one sighting: counted only
    client.push_sparse(table_name, [5], np.ones((1, 2), np.float32))
    assert client.describe_table(table_name).rows == 1
    np.testing.assert_array_equal(client.pull_sparse(table_name, [5]), [[1, 1]])
    # Counted exactly instead (pending keys per vshard): the same, with no false admission.
    exact = table_name + "_exact"
    info = client.create_table(exact, dim=2, optimizer="add",
                               lifecycle=tessera.Lifecycle(admission_min_count=2,
                                                           admission_exact=True))
    assert info.lifecycle["admission_exact"] and info.lifecycle["admission_exact_keys"] == 2 ** 20
    keys = np.arange(1, 1001, dtype=np.uint64)
    client.push_sparse(exact, keys, np.ones((1000, 2), np.float32))
    client.push_sparse(exact, keys[:300], np.ones((300, 2), np.float32))
    assert client.describe_table(exact).rows == 300
