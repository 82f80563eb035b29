#!/usr/bin/env bash
# The checks that need a GPU, in one short run (for a machine with a CUDA device, e.g. the
# device tool's H200): builds with CUDA required, runs the GPU-vs-CPU tests (they fail on any
# difference beyond float tolerance) and times the same training jobs on both backends.
# Usage: tools/gpu_check.sh   (after tools/setup.sh on a fresh machine)
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
tools/build.sh -DTESSERA_CUDA=ON
build/worker/lr_kernels_gpu_test
build/worker/nn_gpu_test
for job in ctr lr; do
  for device in gpu cpu; do
    echo "== tessera local --job=$job --device=$device"
    build/tools/tessera local --job=$job --device=$device --mode=async --epochs=1 2>&1 |
      grep -E "backend|done:|samples/s|test AUC|summary" | tail -6
  done
done
