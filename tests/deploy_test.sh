#!/usr/bin/env bash
# Offline validation of deploy/ (docs/operations.md), run by CTest:
#   tests/deploy_test.sh SOURCE_DIR BUILD_DIR files   promtool and systemd-analyze
#   tests/deploy_test.sh SOURCE_DIR BUILD_DIR k8s     Kubernetes, dashboard, alert metrics
# files:
# - Prometheus: `promtool check config` (with the alert rules) and the rules' unit tests;
# - systemd: `systemd-analyze verify` of every unit (ExecStart pointed at the built binaries);
#   any complaint fails the test.
# k8s:
# - Kubernetes manifests against their schemas, house rules (requests and limits, gRPC probes,
#   scrape annotations), and the dashboard's and alerts' metrics against the documented ones:
#   tools/deploy-check/validate.mjs, with kubernetes-models and js-yaml installed from the npm
#   registry under BUILD_DIR/deploy-check by `npm ci` from the committed lock file. Where the
#   registry cannot be reached (no network, or a TLS-intercepting proxy whose CA Node does not
#   trust: set NODE_EXTRA_CA_CERTS), it exits 77: CTest reports it skipped, with the reason.
set -euo pipefail
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
mode=${3:-files}
tools=(promtool systemd-analyze)
[ "$mode" = k8s ] && tools=(node npm)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "deploy_test: $tool is missing (tools/setup.sh installs it)"; exit 1; }
done

if [ "$mode" = k8s ]; then
  deps="$build/deploy-check"
  mkdir -p "$deps"
  if ! cmp -s "$src/tools/deploy-check/package-lock.json" "$deps/package-lock.json" ||
     [ ! -d "$deps/node_modules" ]; then
    cp "$src/tools/deploy-check/package.json" "$src/tools/deploy-check/package-lock.json" "$deps/"
    rm -f "$deps/.installed"
    cafile=()
    [ -f /etc/ssl/certs/ca-certificates.crt ] && cafile=(--cafile=/etc/ssl/certs/ca-certificates.crt)
    if ! log=$(cd "$deps" && npm ci --no-audit --no-fund --loglevel=error "${cafile[@]}" 2>&1); then
      rm -f "$deps/package-lock.json"  # (retried next time)
      why=$(echo "$log" | grep -m1 -E "reason:|ERR! code|error code" || echo "$log" | tail -1)
      echo "SKIPPED: cannot install kubernetes-models and js-yaml from the npm registry ($why)"
      echo "$log" | tail -5
      exit 77
    fi
  fi
  cp "$src/tools/deploy-check/validate.mjs" "$deps/"
  exec node "$deps/validate.mjs" "$src"
fi

echo "== promtool"
promtool check config "$src/deploy/prometheus/prometheus.yml"
(cd "$src/deploy/prometheus" && promtool test rules alerts_test.yml)

echo "== systemd-analyze verify"
units=$(mktemp -d)
trap 'rm -rf "$units"' EXIT
for f in "$src"/deploy/systemd/*.service; do
  sed -e "s#/usr/local/bin/tessera-worker#$build/worker/tessera-worker#" \
      -e "s#/usr/local/bin/tessera-serving#$build/serving/tessera-serving#" \
      -e "s#/usr/local/bin/#$build/server/#" "$f" > "$units/$(basename "$f")"
done
out=$(cd "$units" && systemd-analyze verify tessera-coordinator.service tessera-server@0.service \
  tessera-serving@0.service tessera-worker@0.service 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "4 units verified"
