#!/usr/bin/env bash
# Runs chaos scenarios N times in a row and stops at the first failure: a benchmark-style
# loop for liveness (a scenario must pass every time, not most times), never a CI test.
#
#   bench/chaos-repeat.sh N SCENARIO.toml...
#
# Each scenario is run N times in a row, one `tandem chaos run` per run, in
# OUT/SCENARIO/NN (default OUT: a temp folder; set CHAOS_REPEAT_OUT to keep it elsewhere).
# The folder of a passing run is deleted (kept with CHAOS_REPEAT_KEEP=1); a failing run's
# folder (topology, node logs in run/, history.jsonl, report.json) is kept and named. Prints one line per run with its
# time and the load average, then a summary; exits 1 at the first failure.
#
# TANDEM: the tandem binary (default target/release/tandem under CARGO_TARGET_DIR or ./target).
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: $0 N SCENARIO.toml..." >&2
    exit 2
fi
n="$1"
shift
case "$n" in
    '' | *[!0-9]*) echo "N must be a number, got '$n'" >&2; exit 2 ;;
esac
tandem="${TANDEM:-${CARGO_TARGET_DIR:-target}/release/tandem}"
if [ ! -x "$tandem" ]; then
    echo "no tandem binary at $tandem: cargo build --release -p tandem, or set TANDEM" >&2
    exit 2
fi
out="${CHAOS_REPEAT_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/chaos-repeat.XXXXXX")}"
mkdir -p "$out"
echo "tandem: $tandem; runs kept in $out"

for scenario in "$@"; do
    name="$(basename "$scenario" .toml)"
    for i in $(seq 1 "$n"); do
        dir="$out/$name/$(printf '%02d' "$i")"
        mkdir -p "$dir"
        t0=$(date +%s)
        if "$tandem" chaos run "$scenario" --out "$dir" >"$dir/stdout.txt" 2>&1; then
            verdict=PASS
        else
            verdict=FAIL
        fi
        t1=$(date +%s)
        load=$(cut -d' ' -f1-3 /proc/loadavg)
        echo "$name run $i/$n: $verdict in $((t1 - t0)) s (load $load)"
        if [ "$verdict" = FAIL ]; then
            grep -E '^ +(no recovery|[A-Za-z].*)' "$dir/stdout.txt" | grep -v '^ *note:' | head -5 || true
            echo "$name: FAILED at run $i after $((i - 1)) passes in a row; kept: $dir"
            exit 1
        fi
        if [ "${CHAOS_REPEAT_KEEP:-0}" != 1 ]; then
            rm -rf "$dir"
        fi
    done
    echo "$name: $n/$n passed in a row"
done
