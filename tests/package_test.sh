#!/usr/bin/env bash
# The Debian packages (docs/install.md, tools/package.sh), checked the way an operator uses them:
#  1. dpkg-deb: each package's name, its files (binaries in /usr/bin, the units in
#     /usr/lib/systemd/system naming /usr/bin, the maintainer scripts) and its Depends, whose
#     every name must be a Debian package (they are installed here, since the build linked them);
#  2. `dpkg -i` of all four into a copy-on-write view of this Debian 12 root (an overlay in a
#     private mount namespace, so the host is untouched): postinst creates the `tessera` system
#     user and /var/lib/tessera; python3-tessera imports from dist-packages and its LocalCluster
#     runs the installed tessera-server; then tessera-coordinator and tessera-server run as that user
#     with the installed units' ExecStart lines (variables from env files written like the
#     shipped examples) and form a cluster that `tessera status` reports serving; `dpkg -r`
#     removes the files again. Without root or overlay mounts, step 2 runs the same command lines
#     from the packages unpacked with dpkg-deb -x instead, and says so
#     (TESSERA_PACKAGE_TEST_UNPACK=1 chooses that way).
# Usage: package_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
if [ "${1:-}" = --in-namespace ]; then
  shift
  in_namespace=1
else
  in_namespace=0
fi
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
fail() { echo "FAIL: $*"; exit 1; }

if [ "$in_namespace" = 0 ]; then
  command -v dpkg-deb >/dev/null || { echo "SKIPPED: dpkg-deb is not installed"; exit 77; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$src/tools/package.sh" --no-build "$build" "$work/debs" >"$work/package.log" 2>&1 ||
    { cat "$work/package.log"; fail "tools/package.sh"; }
  debs=("$work"/debs/*.deb)
  [ ${#debs[@]} -eq 4 ] || fail "expected 4 packages, got: ${debs[*]}"
  declare -A by_name
  for d in "${debs[@]}"; do by_name[$(dpkg-deb -f "$d" Package)]=$d; done
  for p in tessera-server tessera-worker libtessera-client-dev python3-tessera; do
    [ -n "${by_name[$p]:-}" ] || fail "no package $p"
    depends=$(dpkg-deb -f "${by_name[$p]}" Depends)
    [ -n "$depends" ] || fail "$p declares no Depends"
    # Every dependency is a real Debian package name (installed here: the build uses it).
    for dep in $(tr ',|' '\n\n' <<<"$depends" | sed -E 's/\(.*\)//; s/ //g' | sort -u); do
      [ "$(dpkg-query -W -f='${Status}' "$dep" 2>/dev/null)" = "install ok installed" ] ||
        fail "$p depends on '$dep', which is not an installed Debian package here"
    done
    echo "$p: Depends: $depends"
  done
  [[ $(dpkg-deb -f "${by_name[tessera-server]}" Depends) == *librocksdb* ]] || fail "server: no librocksdb"
  [[ $(dpkg-deb -f "${by_name[python3-tessera]}" Depends) == *python3-numpy* ]] || fail "python: no numpy"
  # (Listings in variables: `producer | grep -q` can fail the pipeline with SIGPIPE.)
  declare -A listing
  for p in "${!by_name[@]}"; do listing[$p]=$(dpkg-deb -c "${by_name[$p]}" | awk '{print $6}'); done
  has() { grep -qx -- "$2" <<<"${listing[$1]}"; }
  for f in ./usr/bin/tessera-server ./usr/bin/tessera-coordinator ./usr/bin/tessera \
      ./usr/lib/systemd/system/tessera-server@.service \
      ./usr/lib/systemd/system/tessera-coordinator.service; do
    has tessera-server "$f" || fail "tessera-server lacks $f"
  done
  has tessera-worker ./usr/lib/systemd/system/tessera-worker@.service ||
    fail "tessera-worker lacks its unit"
  has libtessera-client-dev ./usr/lib/cmake/Tessera/TesseraConfig.cmake ||
    fail "libtessera-client-dev lacks TesseraConfig.cmake"
  grep -q '^./usr/lib/python3/dist-packages/tessera/_tessera' <<<"${listing[python3-tessera]}" ||
    fail "python3-tessera lacks the native module"
  for p in tessera-server tessera-worker; do
    dpkg-deb -e "${by_name[$p]}" "$work/control-$p"
    grep -q 'adduser --system' "$work/control-$p/postinst" || fail "$p: postinst adds no system user"
    sh -n "$work/control-$p/postinst" && sh -n "$work/control-$p/postrm"
  done
  echo "dpkg-deb: names, files, dependencies and maintainer scripts check out"

  if [ -z "${TESSERA_PACKAGE_TEST_UNPACK:-}" ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null &&
      unshare -m --propagation private sh -c "mkdir -p $work/probe/u $work/probe/w $work/probe/m &&
        mount -t overlay overlay -o lowerdir=/,upperdir=$work/probe/u,workdir=$work/probe/w \
        $work/probe/m" 2>/dev/null; then
    WORK=$work unshare -m --propagation private "$0" --in-namespace "$src" "$build"
  else
    echo "NOTE: no root or no overlay mounts here: running the units' command lines from the"
    echo "      packages unpacked with dpkg-deb -x (not installed with dpkg)"
    WORK=$work "$0" --in-namespace "$src" "$build"
  fi
  exit 0
fi

# ---- Step 2 (in a private mount namespace when installing) ----
work=$WORK
debs=("$work"/debs/*.deb)
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT
free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

root=$work/root
mounted=0
if [ -z "${TESSERA_PACKAGE_TEST_UNPACK:-}" ] && mkdir -p "$work/ov/u" "$work/ov/w" "$root" && mount -t overlay overlay \
    -o "lowerdir=/,upperdir=$work/ov/u,workdir=$work/ov/w" "$root" 2>/dev/null; then
  mounted=1
  mount --rbind /dev "$root/dev"
  mount -t proc proc "$root/proc"
  mkdir -p "$root/tmp/tessera-debs" && cp "${debs[@]}" "$root/tmp/tessera-debs/"
  in_root=()
  for d in "${debs[@]}"; do in_root+=("/tmp/tessera-debs/$(basename "$d")"); done
  chroot "$root" dpkg -i "${in_root[@]}" >"$work/dpkg.log" 2>&1 ||
    { cat "$work/dpkg.log"; fail "dpkg -i"; }
  chroot "$root" getent passwd tessera >/dev/null || fail "postinst made no tessera user"
  [ "$(chroot "$root" stat -c %U /var/lib/tessera)" = tessera ] ||
    fail "/var/lib/tessera is not owned by tessera"
  # python3-tessera from dist-packages, its LocalCluster on the installed binaries (from PATH).
  chroot "$root" env -u TESSERA_BUILD_DIR -C / /usr/bin/python3 -c '
import numpy as np, tessera, tessera.testing
assert tessera.__file__.startswith("/usr/lib/python3/dist-packages/"), tessera.__file__
with tessera.testing.LocalCluster(num_servers=1) as c, tessera.Client(servers=c.addresses) as cl:
    cl.create_table("t", dim=2, optimizer="assign")
    cl.push_sparse("t", [5], np.array([[1, 2]], dtype=np.float32))
    assert (cl.pull_sparse("t", [5]) == [[1, 2]]).all()
' >"$work/python.log" 2>&1 || { cat "$work/python.log"; fail "python3-tessera against the installed server"; }
  # What systemd's StateDirectory= would create for the units.
  chroot "$root" install -d -o tessera -g tessera /var/lib/tessera/coordinator \
    /var/lib/tessera/checkpoints
  run_as=(chroot "$root" setpriv --reuid=tessera --regid=tessera --init-groups)
  unit_dir=$root/usr/lib/systemd/system
  paths=(cat)
  echo "dpkg -i: 4 packages installed; the tessera user and /var/lib/tessera exist;"
  echo "         python3-tessera's LocalCluster ran on the installed tessera-server"
else
  for d in "${debs[@]}"; do dpkg-deb -x "$d" "$root"; done
  mkdir -p "$work/state/coordinator" "$work/state/checkpoints"
  run_as=()
  unit_dir=$root/usr/lib/systemd/system
  paths=(sed -e "s#/usr/bin/#$root/usr/bin/#g" -e "s#/var/lib/tessera#$work/state#g")
fi

# The unit's ExecStart with its continuation lines joined and ${VAR} taken from ENV_FILE.
exec_start() {
  local unit=$1 env_file=$2 line
  line=$(sed -n '/^ExecStart=/,/[^\\]$/p' "$unit_dir/$unit" | sed 's/\\$//' | tr -d '\n' |
    sed 's/^ExecStart=//')
  [[ $line == /usr/bin/* ]] || fail "$unit: ExecStart does not start /usr/bin: $line"
  while IFS='=' read -r key value; do
    [[ $key =~ ^[A-Z_]+$ ]] && line=${line//\$\{$key\}/$value}
  done <"$env_file"
  [[ $line != *'${'* ]] || fail "$unit: unset variables in $line"
  "${paths[@]}" <<<"$line"
}

coord_port=$(free_port)
server_port=$(free_port)
sed -e "s/^TESSERA_PORT=.*/TESSERA_PORT=$coord_port/" \
  -e "s/^TESSERA_METRICS_PORT=.*/TESSERA_METRICS_PORT=$(free_port)/" \
  -e "s/^TESSERA_SHARDS=.*/TESSERA_SHARDS=1/" -e "s/^TESSERA_REPLICATION=.*/TESSERA_REPLICATION=1/" \
  "$src/deploy/systemd/coordinator.env.example" >"$work/coordinator.env"
sed -e "s/^TESSERA_COORDINATOR=.*/TESSERA_COORDINATOR=127.0.0.1:$coord_port/" \
  -e "s/^TESSERA_PORT=.*/TESSERA_PORT=$server_port/" \
  -e "s/^TESSERA_METRICS_PORT=.*/TESSERA_METRICS_PORT=$(free_port)/" \
  -e "s/^TESSERA_ADVERTISE=.*/TESSERA_ADVERTISE=127.0.0.1:$server_port/" \
  "$src/deploy/systemd/server.env.example" >"$work/server-0.env"
coordinator_cmd=$(exec_start tessera-coordinator.service "$work/coordinator.env")
server_cmd=$(exec_start tessera-server@.service "$work/server-0.env")
echo "coordinator: $coordinator_cmd"
echo "server:      $server_cmd"
# shellcheck disable=SC2086  # the unit's command line, split into words as systemd does
"${run_as[@]}" $coordinator_cmd >"$work/coordinator.log" 2>&1 &
pids+=($!)
# shellcheck disable=SC2086
"${run_as[@]}" $server_cmd >"$work/server.log" 2>&1 &
pids+=($!)

cli=$root/usr/bin/tessera
[ "$mounted" = 1 ] && cli=(chroot "$root" /usr/bin/tessera) || cli=("$cli")
serving=0
for _ in $(seq 1 120); do
  if status=$("${cli[@]}" status --coordinator="127.0.0.1:$coord_port" --json 2>/dev/null) &&
      /usr/bin/python3 -c '
import json, sys
shard = json.loads(sys.argv[1])["shards"][0]
primary = shard["replicas"][0]
sys.exit(not (shard["state"] == "serving" and primary["address"] == sys.argv[2]
              and primary["state"] == "live" and primary["alive"]))' "$status" "127.0.0.1:$server_port" 2>/dev/null
  then
    serving=1
    break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { tail -n 5 "$work"/*.log; fail "a daemon exited"; }
  done
  sleep 0.25
done
[ "$serving" = 1 ] || { tail -n 5 "$work"/*.log; echo "$status"; fail "the cluster never served"; }
echo "tessera-coordinator and tessera-server from the installed units: the shard is served"
stop_all

if [ "$mounted" = 1 ]; then
  chroot "$root" dpkg -r python3-tessera libtessera-client-dev tessera-worker tessera-server \
    >>"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -r"; }
  [ ! -e "$root/usr/bin/tessera-server" ] || fail "dpkg -r left /usr/bin/tessera-server"
  echo "dpkg -r: removed"
  umount -l "$root/proc" "$root/dev" "$root" 2>/dev/null || true
fi
echo "package_test: ok"
