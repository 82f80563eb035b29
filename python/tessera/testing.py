"""Local clusters of real tessera-server processes, for tests, examples and experiments.

    with tessera.testing.LocalCluster(num_servers=2) as cluster:
        client = tessera.Client(servers=cluster.addresses)

With replication=1..3 a tessera-coordinator starts first and places the servers into shards
(client and worker clocks then use cluster.coordinator_address). The processes listen on
127.0.0.1 (free ports) and die with the thread that started them (PR_SET_PDEATHSIG).
"""

import os
import select
import shutil
import subprocess
import threading
import time

from . import errors


def find_binary(name):
    """Path of a Tessera binary: $TESSERA_BUILD_DIR, the source checkout's build/, or PATH."""
    here = os.path.dirname(os.path.abspath(__file__))
    builds = [os.environ.get("TESSERA_BUILD_DIR"), os.path.join(here, "..", "..", "build")]
    subdir = {"tessera": "tools", "tessera-worker": "worker",
              "tessera-serving": "serving"}.get(name, "server")
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
    coordinator and replicated shards (connect with coordinator=).

    The processes are started and watched by `tessera local-cluster` (the C++ harness the
    tests use, driven over a pipe; tools/cmd_local_cluster.cc), so the native client module
    never links test code. Errors raise tessera.errors.Error subclasses."""

    def __init__(self, num_servers=2, replication=0, num_shards=0, server_args=(),
                 coordinator_args=(), log_dir=""):
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
        options = [("server_binary", find_binary("tessera-server")),
                   ("num_servers", num_servers), ("replication", replication),
                   ("num_shards", num_shards), ("log_dir", log_dir)]
        if replication:
            options.append(("coordinator_binary", find_binary("tessera-coordinator")))
        options += [("server_arg", a) for a in server_args]
        options += [("coordinator_arg", a) for a in coordinator_args]
        self._lock = threading.Lock()
        self._control = subprocess.Popen([find_binary("tessera"), "local-cluster"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True, bufsize=1)
        try:
            for name, value in options:
                value = str(value)
                if "\n" in value:
                    raise ValueError(f"{name} must not contain a newline: {value!r}")
                self._call(f"option {name} {value}")
            self._call("start")
            self._addresses = self._call("addresses")
            self._metrics_ports = [int(p) for p in self._call("metrics_ports")]
            self._coordinator_address = " ".join(self._call("coordinator_address"))
        except BaseException:
            self._control.kill()
            self._control.wait()
            raise

    def _call(self, request):
        """Sends one request line; returns the answer's values, or raises its error."""
        with self._lock:
            if self._control.poll() is not None:
                raise ValueError("the cluster is stopped")
            self._control.stdin.write(request + "\n")
            self._control.stdin.flush()
            answer = self._control.stdout.readline().rstrip("\n")
        if not answer:
            raise errors.InternalError(
                13, f"tessera local-cluster exited ({self._control.wait()}) during '{request}'")
        kind, _, rest = answer.partition(" ")
        if kind == "error":
            code, _, message = rest.partition(" ")
            raise errors.error_from_status(int(code), message)
        return rest.split() if rest else []

    addresses = property(lambda self: list(self._addresses),
                         doc="host:port of each server, in shard order")
    metrics_ports = property(lambda self: list(self._metrics_ports))
    coordinator_address = property(lambda self: self._coordinator_address)

    def pid(self, i):
        return int(self._call(f"pid {int(i)}")[0])

    def stop_server(self, i, timeout=30.0):
        """SIGTERM to server i; returns its exit code."""
        return int(self._call(f"stop_server {int(i)} {float(timeout)}")[0])

    def replicas_of(self, shard):
        """With replication: the indices of `shard`'s servers, the primary first."""
        return [int(i) for i in self._call(f"replicas_of {int(shard)}")]

    def kill_server(self, i):
        """SIGKILL to server i (a crash); returns once it is gone."""
        self._call(f"kill_server {int(i)}")

    def restart_server(self, i):
        """Starts server i again on its old ports; returns once it serves."""
        self._call(f"restart_server {int(i)}")

    def stop(self, timeout=30.0):
        """SIGTERM to every process and waits for them; an error names those that did not exit
        cleanly. Later calls do nothing."""
        if self._control.poll() is not None:
            return
        try:
            self._call(f"stop {float(timeout)}")
        finally:
            self._control.stdin.close()
            self._control.wait()
            self._control.stdout.close()

    def __del__(self):
        control = getattr(self, "_control", None)
        if control is not None and control.poll() is None:
            control.kill()  # its servers die with it (PR_SET_PDEATHSIG)
            control.wait()

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


class ServingReplica:
    """A tessera-serving process for tests (docs/online_serving.md), started with `args` (its
    source: --checkpoint_dir=DIR or --upstream=HOST:PORT); .address once it listens."""

    def __init__(self, *args, log_path=None, timeout=30.0):
        read_fd, write_fd = os.pipe()
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                [find_binary("tessera-serving"), "--port=0", "--metrics_port=-1",
                 f"--ready_fd={write_fd}", *args],
                pass_fds=(write_fd,), stdout=log, stderr=log)
        finally:
            os.close(write_fd)
            if log_path:
                log.close()
        line = b""
        deadline = time.monotonic() + timeout
        with os.fdopen(read_fd, "rb") as ready:
            while not line.endswith(b"\n") and time.monotonic() < deadline:
                if not select.select([ready], [], [], 0.1)[0]:
                    continue
                chunk = os.read(ready.fileno(), 256)
                if not chunk:
                    break
                line += chunk
        fields = dict(f.split("=", 1) for f in line.decode().split()[1:] if "=" in f)
        if "port" not in fields:
            self._proc.kill()
            self._proc.wait()
            raise RuntimeError(f"tessera-serving did not start (exit {self._proc.returncode})")
        self.address = f"127.0.0.1:{fields['port']}"

    def stop(self, timeout=30.0):
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout)

    def __del__(self):
        try:
            self.stop()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
