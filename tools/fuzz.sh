#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan) into ./build-fuzz and runs each for
# SECONDS (default 20) on a copy of its seed corpus in fuzz/corpus/NAME. Exit status 1 on any
# crash, sanitizer report, leak or timeout; 77 (skipped) when clang's libFuzzer is missing.
# Usage: tools/fuzz.sh [SECONDS] [NAME...]     (fuzz/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(request_fuzzer replication_fuzzer checkpoint_fuzzer data_plane_fuzzer serving_fuzzer clock_fuzzer)
if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "SKIPPED: clang++ with libFuzzer is not installed (apt install clang)"
  exit 77
fi
jobs=$(nproc 2>/dev/null || echo 2)
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -f build-fuzz/CMakeCache.txt ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTESSERA_FUZZ=ON -DTESSERA_CUDA=OFF -DTESSERA_PYTHON=OFF -DBUILD_TESTING=OFF >/dev/null
fi
cmake --build build-fuzz -j "$jobs" --target "${names[@]}"
status=0
for name in "${names[@]}"; do
  work=$(mktemp -d)
  cp -r "fuzz/corpus/$name/." "$work/"
  echo "== $name: ${seconds}s on $(ls "$work" | wc -l) seeds"
  # -rss_limit_mb bounds what one input may make the process hold; -timeout one input's time.
  if ! (cd "$work" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$OLDPWD/build-fuzz/fuzz/$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 "$work" >"$work/log" 2>&1); then
    echo "FAILED: $name (log below; the input is in $work)"
    tail -60 "$work/log"
    status=1
    continue
  fi
  grep -aE "^stat::number_of_executed_units|^stat::new_units_added|Done [0-9]+ runs" "$work/log" || true
  rm -rf "$work"
done
exit $status
