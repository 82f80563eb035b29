#!/usr/bin/env bash
# Fails on an #include that points up or sideways in Tessera's layering (docs/layout.md):
#
#   tools -> worker -> client -> common/storage -> proto    (testing, python: beside tools)
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
    "client": {"storage", "common", "proto"},
    "worker": {"client", "optimizer", "storage", "common", "proto"},
    "testing": {"client", "common", "proto"},
    "python": {"client", "testing", "common", "proto"},
    "tools": {"worker", "client", "testing", "server", "optimizer", "storage", "common", "proto"},
}
UNRESTRICTED = {"tests", "fuzz", "bench", "examples"}
FOLDERS = set(ALLOWED) | UNRESTRICTED
SOURCE = (".h", ".cc", ".cu", ".cuh")
include = re.compile(r'^\s*#\s*include\s+"([A-Za-z0-9_]+)/')
bad = 0
for folder in sorted(set(ALLOWED)):
    top = os.path.join(root, folder)
    for dirpath, _, files in os.walk(top):
        for name in sorted(files):
            if not name.endswith(SOURCE):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    m = include.match(line)
                    if not m or m.group(1) not in FOLDERS or m.group(1) == folder:
                        continue
                    if m.group(1) not in ALLOWED[folder]:
                        bad += 1
                        rel = os.path.relpath(path, root)
                        print(f"{rel}:{number}: {folder}/ may not include {m.group(1)}/ "
                              f"(allowed: {', '.join(sorted(ALLOWED[folder])) or 'nothing'}): "
                              f"{line.strip()}")
print("check_includes: " + ("clean" if bad == 0 else f"{bad} include(s) against the layering"))
sys.exit(1 if bad else 0)
PY
