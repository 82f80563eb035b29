#!/usr/bin/env bash
# Installs the Debian 12 packages Tessera's build, tests and demo need. Idempotent: a second run
# installs nothing and returns quickly. Needs root (or sudo).
#   tools/setup.sh            the build (with the Python module), the demo, the C++ tests
#   tools/setup.sh --python   also PyTorch and pytest (about 1.3 GB): the Python tests, examples
#                             and benchmark (docs/python.md); tools/test.sh asks for it
set -euo pipefail

packages=(
  build-essential dpkg-dev file adduser cmake ninja-build pkg-config git ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev librocksdb-dev prometheus-cpp-dev libcivetweb-dev catch2 libssl-dev openssl
  libopenblas-dev zlib1g-dev dataset-fashion-mnist
  iperf3 curl procps prometheus systemd nodejs
  pybind11-dev python3-dev python3-numpy python3-venv python3-setuptools python3-wheel
  clang libclang-rt-14-dev libgloo-dev
)
for arg in "$@"; do
  case "$arg" in
    --python) packages+=(python3-torch python3-pytest) ;;
    *) echo "setup: unknown argument $arg (known: --python)" >&2; exit 2 ;;
  esac
done
# npm comes with Node.js from some sources (NodeSource's nodejs conflicts with Debian's npm).
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o DPkg::Lock::Timeout=600 --no-install-recommends)
$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install "${missing[@]}"
