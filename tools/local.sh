#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: installs the packages, builds, and runs
# `tessera local` (a local cluster training a model, with progress and metrics).
# Extra arguments go to `tessera local`, e.g. tools/local.sh --servers=3.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
exec build/tools/tessera local "$@"
