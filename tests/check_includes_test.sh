#!/usr/bin/env bash
# tools/check_includes.sh passes on this tree and fails, naming the line, on a copy of it with
# an upward include planted in common/, a sideways one planted in server/ and an upward one
# between worker/'s layers (data/ may not use models/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/check_includes.sh" "$root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for folder in proto common storage optimizer server client worker testing python tools; do
  cp -r "$root/$folder" "$work/"
done
echo '#include "server/server.h"' >> "$work/common/logging.cc"
echo '#include "client/client.h"' >> "$work/server/main.cc"
echo '#include "worker/models/mlp.h"' >> "$work/worker/data/idx.cc"
if out=$("$root/tools/check_includes.sh" "$work"); then
  echo "FAIL: check_includes.sh accepted planted includes"; exit 1
fi
echo "$out"
grep -q '^common/logging.cc:[0-9]*: common/ may not include server/' <<<"$out"
grep -q '^server/main.cc:[0-9]*: server/ may not include client/' <<<"$out"
grep -q '^worker/data/idx.cc:[0-9]*: worker/data/ may not include worker/models/' <<<"$out"
grep -q '3 include(s) against the layering' <<<"$out"
echo "check_includes_test: ok"
