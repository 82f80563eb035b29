#!/usr/bin/env bash
# Fails on an #include that points up or sideways in Tessera's layering (docs/layout.md):
#
#   tools -> worker -> client -> common/storage -> proto    (testing, python: beside tools)
#            worker -> worker/models -> worker/data, worker/cuda
#   tools -> server -> optimizer/storage/common -> proto
#
# Each folder may include itself and the folders listed for it below; tests/, fuzz/ and bench/
# may include anything. The build enforces the same through per-target include roots; this
# check names the offending line, and also covers headers no target compiles yet.
# Usage: tools/check_includes.sh [SOURCE_ROOT]   (default: this checkout)
set -euo pipefail
root=${1:-"$(dirname "$0")/.."}
python3 - "$root" <<'PY'
import os, re, sys

root = sys.argv[1]
ALLOWED = {
    "proto": set(),
    "common": {"proto"},
    "storage": {"common", "proto"},
    "optimizer": {"common"},
    "server": {"optimizer", "storage", "common", "proto"},
    "serving": {"optimizer", "storage", "common", "proto"},
    "client": {"storage", "common", "proto"},
    # worker/ in layers: cuda (the kernels, standalone) <- models (and their CPU kernels;
    # they load cuda/ through its header) <- worker (train loop, jobs, Worker); data beside.
    "worker/cuda": set(),
    "worker/data": {"common"},
    "worker/models": {"worker/data", "worker/cuda", "optimizer", "common"},
    "worker": {"worker/data", "worker/models", "worker/cuda", "client", "optimizer", "storage",
               "common", "proto"},
    "testing": {"client", "common", "proto"},
    "python": {"client", "testing", "common", "proto"},
    "tools": {"worker", "worker/data", "worker/models", "worker/cuda", "client", "testing", "server", "serving", "optimizer", "storage", "common", "proto"},
}
UNRESTRICTED = {"tests", "fuzz", "bench", "examples"}
TOP = {layer.split("/")[0] for layer in ALLOWED} | UNRESTRICTED
SOURCE = (".h", ".cc", ".cu", ".cuh")
include = re.compile(r'^\s*#\s*include\s+"([A-Za-z0-9_/]+)/[A-Za-z0-9_.]+"')


def layer_of(folder):
    """The most specific layer a folder (relative to the root) belongs to."""
    parts = folder.split("/")
    for n in range(len(parts), 0, -1):
        if "/".join(parts[:n]) in ALLOWED:
            return "/".join(parts[:n])
    return None


bad = 0
for top in sorted({layer.split("/")[0] for layer in ALLOWED}):
    for dirpath, _, files in os.walk(os.path.join(root, top)):
        here = layer_of(os.path.relpath(dirpath, root))
        for name in sorted(files):
            if not name.endswith(SOURCE):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    m = include.match(line)
                    if not m or m.group(1).split("/")[0] not in TOP:
                        continue
                    target = layer_of(m.group(1)) or m.group(1).split("/")[0]
                    if target == here or target in ALLOWED[here]:
                        continue
                    bad += 1
                    rel = os.path.relpath(path, root)
                    print(f"{rel}:{number}: {here}/ may not include {target}/ "
                          f"(allowed: {', '.join(sorted(ALLOWED[here])) or 'nothing'}): "
                          f"{line.strip()}")
print("check_includes: " + ("clean" if bad == 0 else f"{bad} include(s) against the layering"))
sys.exit(1 if bad else 0)
PY
