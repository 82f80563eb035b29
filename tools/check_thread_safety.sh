#!/usr/bin/env bash
# Runs clang's -Wthread-safety analysis (which checks every ABSL_GUARDED_BY / ..._LOCKS_REQUIRED
# annotation) over Tessera's own sources, using build/compile_commands.json from tools/build.sh.
# Needs clang++ (Debian package clang). Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang++ >/dev/null || { echo "check_thread_safety: clang++ is not installed" >&2; exit 2; }
[ -f build/compile_commands.json ] || tools/build.sh
python3 - <<'PY'
import json, shlex, subprocess, sys
failed = 0
for c in json.load(open("build/compile_commands.json")):
    f = c["file"]
    if "/build/" in f or not f.endswith(".cc"):
        continue
    args = shlex.split(c["command"].replace("/usr/bin/ccache ", ""))
    args[0] = "clang++"
    if "-o" in args:
        i = args.index("-o")
        del args[i:i + 2]
    args = [a for a in args if a != "-c"] + ["-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=c["directory"])
    if r.returncode != 0:
        failed += 1
        sys.stdout.write(r.stderr)
print("check_thread_safety: %s" % ("clean" if failed == 0 else "%d file(s) with findings" % failed))
sys.exit(1 if failed else 0)
PY
