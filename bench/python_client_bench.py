#!/usr/bin/python3
"""The Python client against the C++ client, and a training step through Tessera against the
same step in local PyTorch, each pair measured in the same run on the same machine.

    PYTHONPATH=python /usr/bin/python3 bench/python_client_bench.py [--seconds=3] [--rounds=2]

1. Sparse pull and push (Adagrad) of --keys distinct random uint64 keys x --dim floats against
   one local server: `tessera bench` (the C++ client, its own process) and this process's
   tessera.Client, alternating, --rounds times. Reported as keys/s and Python/C++ ratios (goal
   >= 0.8 for 100k-key batches).
2. One training step of an MLP (784-256-10, batch 128, Adam) three ways: local PyTorch (the
   baseline), the raw transfers alone (pull every parameter, push every gradient, through the
   client), and the whole step with tessera.torch.DenseParameters + Worker (1 worker, no
   clock). Reported as ms/step and the overhead over local PyTorch, split into transfers and
   what the Python layer adds.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import tessera  # noqa: E402
import tessera.testing  # noqa: E402


def measure(seconds, fn):
    """Calls fn (after one warm-up) until `seconds` have passed: (calls, elapsed)."""
    fn()
    start = time.perf_counter()
    n = 0
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n, elapsed


def cpp_sparse(address, args):
    """keys/s of the C++ client's sparse pull and push (`tessera bench`, JSON lines)."""
    out = subprocess.run(
        [tessera.testing.find_binary("tessera"), "bench", f"--connect={address}", "--json",
         "--iperf3=false", f"--seconds={args.seconds}", f"--sparse_keys={args.keys}",
         f"--sparse_dim={args.dim}", "--dense_bytes=4096"],
        check=True, capture_output=True, text=True, timeout=600).stdout
    result = {}
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r["workload"].startswith("sparse_pull_"):
            result["pull"] = r["value"] * 1e6
        elif r["workload"].startswith("sparse_push_"):
            result["push"] = r["value"] * 1e6
    if set(result) != {"pull", "push"}:
        sys.exit(f"no sparse results from tessera bench:\n{out}")
    return result


def python_sparse(client, args, table):
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 2**64 - 1, size=args.keys, dtype=np.uint64, endpoint=True)
    values = np.full((args.keys, args.dim), 0.25, np.float32)
    out = np.empty((args.keys, args.dim), np.float32)
    result = {}
    n, t = measure(args.seconds, lambda: client.pull_sparse(table, keys, out=out))
    result["pull"] = n * args.keys / t
    n, t = measure(args.seconds, lambda: client.push_sparse(table, keys, values))
    result["push"] = n * args.keys / t
    n, t = measure(args.seconds, lambda: client.pull_sparse(table, keys))  # allocates
    result["pull_new_array"] = n * args.keys / t
    return result


def training_step(client, args):
    import torch
    from torch import nn

    import tessera.torch as tt

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 784, generator=g), torch.randint(0, 10, (128,), generator=g)
    loss_fn = nn.CrossEntropyLoss()

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))

    local = model()
    opt = torch.optim.Adam(local.parameters(), lr=1e-3)

    def local_step():
        opt.zero_grad()
        loss_fn(local(x), y).backward()
        opt.step()

    remote = model()
    params = tt.DenseParameters(client, remote, "bench_step", optimizer=tessera.Adam(lr=1e-3))
    worker = tt.Worker(client, [params])

    def tessera_step():
        with worker.step():
            loss_fn(remote(x), y).backward()

    grads = [(t, p.detach().clone()) for t, p in params.params]

    def transfers_only():
        handles = [client.pull_dense_async(t, out=p.detach().view(-1)) for t, p in params.params]
        for h in handles:
            h.wait()
        handles = [client.push_dense_async(t, gr.view(-1)) for t, gr in grads]
        for h in handles:
            h.wait()

    def pull_only():
        handles = [client.pull_dense_async(t, out=p.detach().view(-1)) for t, p in params.params]
        for h in handles:
            h.wait()

    def push_only():
        handles = [client.push_dense_async(t, gr.view(-1)) for t, gr in grads]
        for h in handles:
            h.wait()

    # The first layer's weight alone (784 x 256: 99% of the parameters; docs/dense_allreduce.md).
    (w1_table, w1), (_, w1_grad) = params.params[0], grads[0]

    def pull_first_layer():
        client.pull_dense_async(w1_table, out=w1.detach().view(-1)).wait()

    def push_first_layer():
        client.push_dense_async(w1_table, w1_grad.view(-1)).wait()

    result = {}
    for name, fn in (("local_pytorch", local_step), ("transfers_only", transfers_only),
                     ("pull_only", pull_only), ("push_only", push_only),
                     ("pull_first_layer", pull_first_layer),
                     ("push_first_layer", push_first_layer),
                     ("tessera", tessera_step), ("local_pytorch_again", local_step)):
        n, t = measure(args.seconds, fn)
        result[name] = 1000 * t / n
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    report = {"keys": args.keys, "dim": args.dim, "rounds": []}
    with tessera.testing.LocalCluster(num_servers=1, log_dir="/tmp/tessera-bench-logs") as c, \
            tessera.Client(servers=c.addresses) as client:
        table = f"bench_py_sparse_{os.getpid()}"
        client.create_table(table, dim=args.dim, optimizer=tessera.Adagrad(lr=0.01))
        print(f"sparse: {args.keys} keys x {args.dim} floats, one local server, "
              f"{args.seconds:g} s per measurement")
        print(f"{'round':>5} {'op':>5} {'C++ keys/s':>12} {'Python keys/s':>14} {'ratio':>6}")
        for r in range(args.rounds):
            cpp = cpp_sparse(c.addresses[0], args)
            py = python_sparse(client, args, table)
            report["rounds"].append({"cpp": cpp, "python": py})
            for op in ("pull", "push"):
                print(f"{r + 1:>5} {op:>5} {cpp[op]:>12.0f} {py[op]:>14.0f} "
                      f"{py[op] / cpp[op]:>6.2f}")
            print(f"{'':>5} {'':>5} {'':>12} {py['pull_new_array']:>14.0f}   "
                  "(pull into a new array each call)")
        for op in ("pull", "push"):
            ratios = [x["python"][op] / x["cpp"][op] for x in report["rounds"]]
            report[f"{op}_ratio_median"] = float(np.median(ratios))
        print(f"median Python/C++: pull {report['pull_ratio_median']:.2f}, "
              f"push {report['push_ratio_median']:.2f} (goal >= 0.8)")

        step = training_step(client, args)
        report["step_ms"] = step
        base = (step["local_pytorch"] + step["local_pytorch_again"]) / 2
        print("\ntraining step, MLP 784-256-10, batch 128, Adam, 1 thread:")
        print(f"  local PyTorch            {base:7.2f} ms")
        print(f"  transfers alone          {step['transfers_only']:7.2f} ms "
              "(pull + push of every parameter)")
        print(f"    pull alone             {step['pull_only']:7.2f} ms "
              f"(first layer {step['pull_first_layer']:.2f} ms)")
        print(f"    push alone             {step['push_only']:7.2f} ms "
              f"(first layer {step['push_first_layer']:.2f} ms; the servers apply Adam)")
        print(f"  through Tessera          {step['tessera']:7.2f} ms "
              f"({step['tessera'] / base:.2f}x local; overhead {step['tessera'] - base:.2f} ms, "
              f"of which transfers {step['transfers_only']:.2f} ms)")
        report["step_ratio_to_local"] = step["tessera"] / base
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
