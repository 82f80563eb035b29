"""The examples, run as a user runs them: each starts a local cluster and two worker processes,
and must reach its bar."""

import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def run(script, *args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                            capture_output=True, text=True, timeout=600)
    print(result.stdout[-3000:])
    print(result.stderr[-3000:], file=sys.stderr)
    return result


def test_fashion_mnist_mlp_reaches_085():  # (needs dataset-fashion-mnist: tools/setup.sh)
    r = run("fmnist_mlp.py", "--min_accuracy=0.85", "--report_every=200")
    accuracy = re.search(r"test accuracy (\d\.\d+) \(2 workers, bsp, 5 epochs\)", r.stdout)
    assert accuracy, "no accuracy reported"
    assert r.returncode == 0 and float(accuracy.group(1)) >= 0.85
    assert re.search(r"worker 1: \d+ steps", r.stdout), "worker 1 did not finish"


def test_ctr_embedding_model_is_near_the_planted_auc():
    r = run("ctr_embedding.py", "--max_auc_gap=0.03", "--report_every=200")
    m = re.search(r"test AUC (\d\.\d+), planted model (\d\.\d+) \(gap (-?\d\.\d+)\); "
                  r"(\d+) embedding rows", r.stdout)
    assert m, "no AUC reported"
    assert r.returncode == 0 and float(m.group(3)) <= 0.03
    assert int(m.group(4)) <= 8 * 50  # one row per (field, id) seen
