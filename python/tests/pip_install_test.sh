#!/usr/bin/env bash
# The documented install: a wheel built with `pip wheel --no-build-isolation ./python` (no
# network; tagged for this Python and platform, as it carries the native module), installed into
# a virtual environment that sees Debian's packages, then an import from elsewhere that must
# find the installed package (not the source tree) and talk to a real server.
# Usage: pip_install_test.sh PYTHON BUILD_DIR
set -euo pipefail
python=$1
build=$(cd "$2" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
if ! "$python" -c 'import ensurepip' 2>/dev/null; then
  echo "SKIPPED: python3-venv is not installed (tools/setup.sh installs it)"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m venv --system-site-packages "$work/venv"
# Everything pip needs is local: no index, no build isolation.
TESSERA_BUILD_DIR=$build "$work/venv/bin/pip" wheel --no-deps --no-index --no-build-isolation \
  -q -w "$work/dist" "$root/python"
tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
wheel=$(ls "$work"/dist/tessera-*.whl)
case "$(basename "$wheel")" in
  tessera-*-"$tag"-"$tag"-linux_*.whl) ;;
  *) echo "FAIL: $(basename "$wheel") is not tagged for $tag on Linux"; exit 1 ;;
esac
listing=$("$python" -m zipfile -l "$wheel")
grep -q 'tessera/_tessera.*\.so' <<<"$listing" ||
  { echo "FAIL: the wheel carries no native module"; exit 1; }
"$work/venv/bin/pip" install --no-index -q "$wheel"
cd "$work"
TESSERA_BUILD_DIR=$build "$work/venv/bin/python" - <<'PY'
import os, numpy as np, tessera, tessera.testing
assert "site-packages" in tessera.__file__, tessera.__file__
assert os.path.dirname(tessera._tessera.__file__) == os.path.dirname(tessera.__file__)
with tessera.testing.LocalCluster(num_servers=1) as c, tessera.Client(servers=c.addresses) as cl:
    cl.create_table("t", dim=3, optimizer="assign")
    cl.push_sparse("t", [1, 2], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert (cl.pull_sparse("t", [2]) == [[3, 4, 5]]).all()
print("installed", tessera.__file__)
PY
