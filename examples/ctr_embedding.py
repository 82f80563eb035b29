#!/usr/bin/python3
"""A CTR-style model (embeddings of categorical fields + MLP) trained through Tessera on
synthetic clicks drawn from a planted model.

    PYTHONPATH=python /usr/bin/python3 examples/ctr_embedding.py           # local cluster
    /usr/bin/python3 examples/ctr_embedding.py --coordinator=HOST:PORT --worker=0 --workers=2

Every example has --fields categorical ids (each field --vocabulary ids, Zipf-distributed).
The embedding table lives on the servers (Adagrad there; any uint64 id, no vocabulary size),
so do the MLP's weights (Adam). Worker 0 compares the test AUC with the AUC of the planted
model that drew the labels (the best any model can do) and exits 1 when it is more than
--max_auc_gap below.
"""

import argparse
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import tessera  # noqa: E402
import tessera.testing  # noqa: E402
import tessera.torch as tt  # noqa: E402


def synthetic_clicks(n, fields, vocabulary, seed):
    """(ids (n, fields) as field << 32 | id, labels, planted logits): the planted model has a
    weight per id and an interaction between the first two fields."""
    planted = np.random.default_rng(1000)  # the same planted model for every split
    w = planted.normal(0, 1.0, (fields, vocabulary))
    inter = planted.normal(0, 1.0, (vocabulary, vocabulary))
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, vocabulary + 1) ** 1.1
    ids = rng.choice(vocabulary, size=(n, fields), p=zipf / zipf.sum())
    logits = w[np.arange(fields), ids].sum(1) + inter[ids[:, 0], ids[:, 1]] - 1.0
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    keys = (np.arange(fields, dtype=np.int64) << 32) | ids
    return torch.from_numpy(keys), torch.from_numpy(labels), logits


def auc(scores, labels):
    """Area under the ROC curve (rank statistic; ties get their average rank)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class CtrModel(nn.Module):
    def __init__(self, embedding, fields, dim, hidden):
        super().__init__()
        self.embedding = embedding
        self.mlp = nn.Sequential(nn.Linear(fields * dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, keys):
        return self.mlp(self.embedding(keys).flatten(1)).squeeze(1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--coordinator", help="host:port; none: start a local cluster")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--job", default="ctr-py")
    p.add_argument("--mode", default="async", choices=["bsp", "ssp", "async"])
    p.add_argument("--staleness", type=int, default=0)
    p.add_argument("--examples", type=int, default=200_000)
    p.add_argument("--fields", type=int, default=8)
    p.add_argument("--vocabulary", type=int, default=50)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=256, help="per worker")
    p.add_argument("--report_every", type=int, default=100)
    p.add_argument("--max_auc_gap", type=float, default=1.0,
                   help="exit 1 when the test AUC is further below the planted AUC")
    args = p.parse_args()
    if args.coordinator is None:
        sys.exit(tessera.testing.launch_local(os.path.abspath(__file__), sys.argv[1:],
                                              args.workers))

    torch.set_num_threads(1)
    torch.manual_seed(args.worker)
    keys, labels, _ = synthetic_clicks(args.examples, args.fields, args.vocabulary, seed=1)
    client = tessera.Client(coordinator=args.coordinator)
    clock = tessera.WorkerClock(args.coordinator, args.job, args.workers, args.worker,
                                mode=args.mode, staleness=args.staleness)
    embedding = tt.Embedding(client, f"{args.job}.emb", args.dim,
                             optimizer=tessera.Adagrad(lr=0.05),
                             initializer=tessera.Normal(0.0, 0.05, seed=1))
    model = CtrModel(embedding, args.fields, args.dim, args.hidden)
    dense = tt.DenseParameters(client, model.mlp, f"{args.job}.mlp",
                               optimizer=tessera.Adam(lr=1e-3))
    worker = tt.Worker(client, [embedding, dense], clock=clock)
    loss_fn = nn.BCEWithLogitsLoss()

    progress = tt.Progress(args.worker, args.batch, args.report_every)
    for epoch, b in tt.worker_batches(len(keys), args.batch, args.worker, args.workers,
                                      args.epochs):
        with worker.step():
            loss = loss_fn(model(keys[b]), labels[b])
            loss.backward()
        progress.step(epoch, loss.item())
    clock.wait_for_all(timeout=600)
    progress.done()
    if args.worker == 0:
        dense.pull()
        test_keys, test_labels, planted = synthetic_clicks(20_000, args.fields,
                                                           args.vocabulary, seed=2)
        with torch.no_grad():
            scores = model(test_keys).numpy()
        model_auc, planted_auc = auc(scores, test_labels), auc(planted, test_labels)
        rows = client.describe_table(f"{args.job}.emb").rows
        print(f"test AUC {model_auc:.4f}, planted model {planted_auc:.4f} "
              f"(gap {planted_auc - model_auc:.4f}); {rows} embedding rows on the servers",
              flush=True)
        if planted_auc - model_auc > args.max_auc_gap:
            print(f"the gap is over --max_auc_gap {args.max_auc_gap}", file=sys.stderr)
            return 1
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
