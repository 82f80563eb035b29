"""tessera.ServingClient against real tessera-serving processes following a real cluster's
checkpoints (docs/online_serving.md)."""

import numpy as np
import pytest

import tessera
import tessera.testing
from tessera import errors


def wait_for_version(serving, version, timeout=60.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = serving.status()
        if status["version"] >= version:
            return status
        time.sleep(0.02)
    raise AssertionError(f"version {version} not reached: {serving.status()}")


def test_lookups_follow_versions_bit_for_bit(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    with tessera.testing.LocalCluster(num_servers=2, server_args=[f"--checkpoint_dir={ckpt}"],
                                      log_dir=str(tmp_path)) as c, \
            tessera.Client(servers=c.addresses) as client:
        client.create_table("emb", dim=4, optimizer=tessera.Adagrad(lr=0.1),
                            initializer=tessera.Normal(stddev=0.1, seed=3))
        client.create_table("w", size=1000, optimizer=tessera.SGD(lr=0.5))
        keys = np.arange(1, 2001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        client.push_sparse("emb", keys, np.ones((keys.size, 4), dtype=np.float32))
        client.push_dense("w", np.full(1000, 0.25, dtype=np.float32))
        first = tessera.checkpoint(ckpt, servers=c.addresses)["id"]
        with tessera.testing.ServingReplica(f"--checkpoint_dir={ckpt}", "--poll_ms=50",
                                            log_path=str(tmp_path / "serving.log")) as replica:
            serving = tessera.ServingClient([replica.address])
            status = wait_for_version(serving, first)
            assert status["source"] == f"checkpoint_dir {ckpt}"
            assert sorted(t["name"] for t in status["tables"]) == ["emb", "w"]
            unseen = np.array([7, 8], dtype=np.uint64)
            result = serving.lookup("emb", np.concatenate([keys, unseen]))
            assert result.version == first
            assert result.rows.shape == (keys.size + 2, 4)
            assert result.found[:keys.size].all() and not result.found[keys.size:].any()
            # Pulls give the same rows, and a pull of an unseen key the initializer's values.
            np.testing.assert_array_equal(result.rows[:keys.size], client.pull_sparse("emb", keys))
            np.testing.assert_array_equal(result.rows[keys.size:], client.pull_sparse("emb", unseen))
            values, version = serving.lookup_dense("w")
            assert version == first
            np.testing.assert_array_equal(values, client.pull_dense("w"))

            # An increment, then a rollback to the first version and back.
            client.push_sparse("emb", keys[:100], np.ones((100, 4), dtype=np.float32))
            second = tessera.checkpoint(ckpt, servers=c.addresses)["id"]
            wait_for_version(serving, second)
            np.testing.assert_array_equal(serving.lookup("emb", keys).rows,
                                          client.pull_sparse("emb", keys))
            before = serving.lookup("emb", keys[:100], version=first)
            np.testing.assert_array_equal(before.rows, result.rows[:100])
            assert serving.rollback(first) == first
            assert serving.lookup("emb", keys[:5]).version == first
            assert serving.status()["pinned"]
            assert serving.resume() == second

            with pytest.raises(errors.NotFoundError):
                serving.lookup("nope", keys[:1])
            with pytest.raises(errors.FailedPreconditionError):
                serving.rollback(12345)
            with pytest.raises(TypeError):
                tessera.ServingClient([replica.address], bogus=1)
