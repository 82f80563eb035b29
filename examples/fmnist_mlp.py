#!/usr/bin/python3
"""Fashion-MNIST MLP trained through Tessera from ordinary PyTorch code.

    PYTHONPATH=python /usr/bin/python3 examples/fmnist_mlp.py            # local cluster, 2 workers
    /usr/bin/python3 examples/fmnist_mlp.py --coordinator=HOST:PORT --worker=0 --workers=2

Without --coordinator it starts a local cluster (a coordinator and two servers) and runs
--workers copies of itself as worker processes. Each worker trains on every n-th batch; the
model's parameters live on the servers, which run Adam; worker 0 reports test accuracy at the
end (exit 1 below --min_accuracy). Data: Debian's dataset-fashion-mnist.
"""

import argparse
import gzip
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import tessera  # noqa: E402
import tessera.testing  # noqa: E402
import tessera.torch as tt  # noqa: E402


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--coordinator", help="host:port; none: start a local cluster")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--job", default="fmnist-py")
    p.add_argument("--mode", default="bsp", choices=["bsp", "ssp", "async"])
    p.add_argument("--staleness", type=int, default=0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=128, help="per worker")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--report_every", type=int, default=100)
    p.add_argument("--min_accuracy", type=float, default=0.0)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.data, "train-images-idx3-ubyte.gz")):
        sys.exit(f"no Fashion-MNIST in {args.data}: install Debian's dataset-fashion-mnist "
                 "(tools/setup.sh does)")
    if args.coordinator is None:
        sys.exit(tessera.testing.launch_local(os.path.abspath(__file__), sys.argv[1:],
                                              args.workers))

    torch.set_num_threads(1)  # workers share the machine's cores with the servers
    x, y = load(args.data, "train")
    client = tessera.Client(coordinator=args.coordinator)
    clock = tessera.WorkerClock(args.coordinator, args.job, args.workers, args.worker,
                                mode=args.mode, staleness=args.staleness)
    model = nn.Sequential(nn.Linear(784, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10))
    # The parameters live on the servers, which run Adam on the pushed gradients.
    params = tt.DenseParameters(client, model, args.job, optimizer=tessera.Adam(lr=args.lr))
    worker = tt.Worker(client, [params], clock=clock)
    loss_fn = nn.CrossEntropyLoss()

    progress = tt.Progress(args.worker, args.batch, args.report_every)
    for epoch, b in tt.worker_batches(len(x), args.batch, args.worker, args.workers,
                                      args.epochs):
        with worker.step():
            loss = loss_fn(model(x[b]), y[b])
            loss.backward()
        progress.step(epoch, loss.item())
    clock.wait_for_all(timeout=600)
    progress.done()
    if args.worker == 0:
        params.pull()  # the final weights
        tx, ty = load(args.data, "test")
        with torch.no_grad():
            accuracy = (model(tx).argmax(1) == ty).float().mean().item()
        print(f"test accuracy {accuracy:.4f} ({args.workers} workers, {args.mode}, "
              f"{args.epochs} epochs)", flush=True)
        if accuracy < args.min_accuracy:
            print(f"below --min_accuracy {args.min_accuracy}", file=sys.stderr)
            return 1
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
