"""Local clusters of real tessera-server processes, for tests, examples and experiments.

    with tessera.testing.LocalCluster(num_servers=2) as cluster:
        client = tessera.Client(servers=cluster.addresses)

With replication=1..3 a tessera-coordinator starts first and places the servers into shards
(client and worker clocks then use cluster.coordinator_address). The processes listen on
127.0.0.1 (free ports) and die with the thread that started them (PR_SET_PDEATHSIG).
"""

import os
import shutil

from . import _tessera


def find_binary(name):
    """Path of a Tessera binary: $TESSERA_BUILD_DIR, the source checkout's build/, or PATH."""
    here = os.path.dirname(os.path.abspath(__file__))
    builds = [os.environ.get("TESSERA_BUILD_DIR"), os.path.join(here, "..", "..", "build")]
    subdir = {"tessera": "tools", "tessera-worker": "worker"}.get(name, "server")
    for build in filter(None, builds):
        path = os.path.abspath(os.path.join(build, subdir, name))
        if os.access(path, os.X_OK):
            return path
    path = shutil.which(name)
    if path:
        return path
    raise FileNotFoundError(
        f"{name} not found in $TESSERA_BUILD_DIR, the checkout's build/ or PATH "
        "(build it with tools/build.sh)")


class LocalCluster:
    """num_servers servers; replication=0 gives static shards (connect with servers=), 1-3 a
    coordinator and replicated shards (connect with coordinator=)."""

    def __init__(self, num_servers=2, replication=0, num_shards=0, server_args=(),
                 coordinator_args=(), log_dir=""):
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
        server = find_binary("tessera-server")
        coordinator = find_binary("tessera-coordinator") if replication else ""
        self._native = _tessera.LocalCluster(server, coordinator, num_servers, replication,
                                             num_shards, list(server_args),
                                             list(coordinator_args), log_dir)

    addresses = property(lambda self: self._native.addresses,
                         doc="host:port of each server, in shard order")
    metrics_ports = property(lambda self: self._native.metrics_ports)
    coordinator_address = property(lambda self: self._native.coordinator_address)

    def pid(self, i):
        return self._native.pid(i)

    def stop_server(self, i, timeout=30.0):
        """SIGTERM to server i; returns its exit code."""
        return self._native.stop_server(i, timeout)

    def replicas_of(self, shard):
        """With replication: the indices of `shard`'s servers, the primary first."""
        return self._native.replicas_of(shard)

    def kill_server(self, i):
        """SIGKILL to server i (a crash); returns once it is gone."""
        self._native.kill_server(i)

    def restart_server(self, i):
        self._native.restart_server(i)

    def stop(self, timeout=30.0):
        self._native.stop(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def launch_local(script, args, num_workers, num_servers=2, log_dir=""):
    """Runs a training script as `num_workers` worker processes against a new local cluster
    (a coordinator and `num_servers` shards): each gets `args` plus --coordinator=ADDRESS
    --worker=I. Returns the first non-zero exit code of the workers, else 0. What the examples
    do when they are not given a coordinator."""
    import subprocess
    import sys

    with LocalCluster(num_servers=num_servers, replication=1, log_dir=log_dir) as cluster:
        print(f"local cluster: coordinator {cluster.coordinator_address}, servers "
              f"{', '.join(cluster.addresses)}; {num_workers} worker(s)", flush=True)
        workers = [subprocess.Popen([sys.executable, script, *args,
                                     f"--coordinator={cluster.coordinator_address}",
                                     f"--worker={w}"]) for w in range(num_workers)]
        codes = [w.wait() for w in workers]
    return next((c for c in codes if c != 0), 0)
