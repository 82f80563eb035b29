#!/usr/bin/env bash
# Builds the Debian packages (docs/install.md): tessera-server, tessera-worker,
# libtessera-client-dev and python3-tessera, from the tree in BUILD_DIR (built first if needed),
# into OUT_DIR. Dependencies come from dpkg-shlibdeps, so they name Debian's runtime packages.
# Usage: tools/package.sh [--no-build] [BUILD_DIR [OUT_DIR]]   (defaults: build, build/packages)
#   --no-build  package what BUILD_DIR holds (tests/package_test.sh: ctest has built it)
set -euo pipefail
cd "$(dirname "$0")/.."
build_first=1
if [ "${1:-}" = --no-build ]; then
  build_first=0
  shift
fi
build=${1:-build}
out=${2:-$build/packages}
# CPack's DEB generator finds the binaries for dpkg-shlibdeps with file(1).
for tool in dpkg-shlibdeps:dpkg-dev file:file; do
  command -v "${tool%%:*}" >/dev/null || {
    echo "package: ${tool%%:*} is missing (apt install ${tool#*:}; tools/setup.sh does)" >&2
    exit 1
  }
done
if [ "$build_first" = 1 ]; then
  if [ ! -f "$build/CMakeCache.txt" ]; then
    generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
  fi
  cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)"
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
# CPack stages under its own directory; -B puts the .deb files where asked.
(cd "$build" && cpack -G DEB -B "$out/.cpack" >"$out/cpack.log" 2>&1) ||
  { tail -30 "$out/cpack.log" >&2; echo "package: cpack failed (log: $out/cpack.log)" >&2; exit 1; }
mv "$out"/.cpack/*.deb "$out"/
rm -rf "$out/.cpack"
ls -1 "$out"/*.deb
