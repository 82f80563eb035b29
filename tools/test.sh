#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: installs the packages, builds, and runs every test
# (unit tests, multi-process tests with real tessera-server processes, CLI end-to-end tests, the
# Python client's pytest suites and examples).
# GPU tests report "Skipped" with the reason when no CUDA device is present.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --python
tools/build.sh
jobs=$(nproc 2>/dev/null || echo 2)
status=0
# Static checks first (they are quick to fail): the include layering (docs/layout.md) and
# clang's thread-safety analysis of every ABSL_GUARDED_BY annotation.
tools/check_includes.sh || status=$?
tools/check_thread_safety.sh || status=$?
ctest --test-dir build -j "$jobs" --output-on-failure --timeout 600 || status=$?
# Skipped tests say why (e.g. no CUDA device); show it rather than a bare "Skipped".
log=build/Testing/Temporary/LastTest.log
if [ -f "$log" ] && grep -q '^SKIPPED:' "$log"; then
  echo "Why tests were skipped:"
  grep '^SKIPPED:' "$log" | sed 's/^/  /'
fi
exit $status
