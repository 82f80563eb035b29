#!/usr/bin/env bash
# `cmake --install` into a fresh prefix, then what a C++ user does (docs/install.md): a project
# outside the tree finds the package with find_package(Tessera), links tessera::client, and
# talks to a tessera-server started from the installed binaries. Also checks that the public
# headers include no protobuf or gRPC header and that libtessera_client exports only the API.
# Usage: install_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
work=$(mktemp -d)
controller_pid=""
cleanup() {
  [ -n "$controller_pid" ] && kill "$controller_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
prefix=$work/prefix
fail() { echo "FAIL: $*"; exit 1; }

cmake --install "$build" --prefix "$prefix" >"$work/install.log"
for f in bin/tessera-server bin/tessera-coordinator bin/tessera bin/tessera-worker \
    include/tessera/client/call.h include/tessera/client/client.h include/tessera/client/worker_clock.h \
    include/tessera/common/table_config.h lib/cmake/Tessera/TesseraConfig.cmake \
    lib/cmake/Tessera/TesseraTargets.cmake lib/systemd/system/tessera-server@.service \
    lib/systemd/system/tessera-coordinator.service lib/systemd/system/tessera-worker@.service; do
  [ -e "$prefix/$f" ] || fail "cmake --install did not install $f"
done
grep -q "^ExecStart=$prefix/bin/tessera-server " "$prefix/lib/systemd/system/tessera-server@.service" ||
  fail "the installed server unit does not start $prefix/bin/tessera-server"

# Public headers: no generated or gRPC headers, only what is installed beside them and Abseil.
if grep -rnE '#include [<"](grpc|grpcpp|google/protobuf|proto/|server/|storage/)' "$prefix/include"; then
  fail "an installed header includes protobuf, gRPC or an internal header"
fi
for h in $(cd "$prefix/include/tessera" && find . -name '*.h'); do
  { grep -hoE '#include "[a-z_]+/[a-z_]+\.h"' "$prefix/include/tessera/$h" || true; } | cut -d'"' -f2 |
    while read -r inc; do
      [ -e "$prefix/include/tessera/$inc" ] || fail "$h includes $inc, which is not installed"
    done
done

lib=$(ls "$prefix"/lib/libtessera_client.so.* 2>/dev/null | head -1 || true)
if [ -n "$lib" ]; then
  exported=$(nm -DC --defined-only "$lib")
  grep -q 'tessera::Client::Connect' <<<"$exported" || fail "libtessera_client exports no Client::Connect"
  if grep -E 'tessera::v1::|google::protobuf|grpc::|tessera::client_internal' <<<"$exported" | head -5; then
    fail "libtessera_client exports internals (above)"
  fi
  echo "libtessera_client.so exports $(wc -l <<<"$exported") symbols"
fi

# The application: its own directory, only the installed package on its paths.
cp -r "$src/tests/install_consumer" "$work/app"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$work/app" -B "$work/app/build" "${generator[@]}" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release >"$work/app.log" || { cat "$work/app.log"; fail "configure"; }
cmake --build "$work/app/build" >>"$work/app.log" 2>&1 || { cat "$work/app.log"; fail "build"; }

# A server from the installed binaries, run by the installed CLI's local-cluster controller.
coproc CONTROL { exec "$prefix/bin/tessera" local-cluster 2>"$work/cluster.log"; }
controller_pid=$CONTROL_PID
ask() {
  echo "$1" >&"${CONTROL[1]}"
  local answer
  read -r -t 120 answer <&"${CONTROL[0]}" || fail "no answer to '$1' ($(tail -3 "$work/cluster.log"))"
  [[ $answer == ok* ]] || fail "'$1': $answer"
  reply=${answer#ok}
  reply=${reply# }
}
ask "option server_binary $prefix/bin/tessera-server"
ask "option num_servers 1"
ask "start"
ask "addresses"
"$work/app/build/consumer" "$reply"
ask "stop 30"
echo "install_test: ok"
