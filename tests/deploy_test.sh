#!/usr/bin/env bash
# Offline validation of deploy/ (docs/operations.md), run by CTest:
#   tests/deploy_test.sh SOURCE_DIR BUILD_DIR
# - Prometheus: `promtool check config` (with the alert rules) and the rules' unit tests;
# - systemd: `systemd-analyze verify` of every unit (ExecStart pointed at the built binaries);
#   any complaint fails the test;
# - Kubernetes manifests against their schemas, house rules (requests and limits, gRPC probes,
#   scrape annotations), and the dashboard's and alerts' metrics against the documented ones:
#   tools/deploy-check/validate.mjs (kubernetes-models and js-yaml from the npm registry,
#   installed under BUILD_DIR/deploy-check by `npm ci` from the committed lock file).
set -euo pipefail
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
for tool in promtool systemd-analyze node npm; do
  command -v "$tool" >/dev/null || { echo "deploy_test: $tool is missing (tools/setup.sh installs it)"; exit 1; }
done

echo "== promtool"
promtool check config "$src/deploy/prometheus/prometheus.yml"
(cd "$src/deploy/prometheus" && promtool test rules alerts_test.yml)

echo "== systemd-analyze verify"
units=$(mktemp -d)
trap 'rm -rf "$units"' EXIT
for f in "$src"/deploy/systemd/*.service; do
  sed -e "s#/usr/local/bin/tessera-worker#$build/worker/tessera-worker#" \
      -e "s#/usr/local/bin/#$build/server/#" "$f" > "$units/$(basename "$f")"
done
out=$(cd "$units" && systemd-analyze verify tessera-coordinator.service tessera-server@0.service \
  tessera-worker@0.service 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "3 units verified"

echo "== kubernetes, dashboard, alerts"
deps="$build/deploy-check"
mkdir -p "$deps"
if ! cmp -s "$src/tools/deploy-check/package-lock.json" "$deps/package-lock.json" ||
   [ ! -d "$deps/node_modules" ]; then
  cp "$src/tools/deploy-check/package.json" "$src/tools/deploy-check/package-lock.json" "$deps/"
  (cd "$deps" && npm ci --no-audit --no-fund --loglevel=error)
fi
cp "$src/tools/deploy-check/validate.mjs" "$deps/"
node "$deps/validate.mjs" "$src"
