#!/usr/bin/env bash
# One comparison run (issue 21): Tandem beside its peers and the physical limits, in the same
# run, on the same machine, printed as ratios against the issue's targets.
#
#   bench/compare.sh [--skip-resync]
#
# 1. async replication through NBD, 1 MiB x 8 in flight, 10 s, against raw zstd-1 on one core
#    on the same data (`tandem bench replication`; target >= 1.0), with the group's default
#    compression (zstd-1), then with `compression = "auto"` and `"off"`;
# 2. the same with point-in-time history on (target: at most 15 % slower than without), with
#    the undo data compressed (the default) and raw (`history_compress = false`);
# 3. 4 KiB write and write + flush latency through qemu-io, against qemu-nbd on a local file
#    (bench/nbd-latency.sh 500; targets <= 2.0 and <= 2.5), and a flush with nothing left to
#    make durable (target <= 50 us);
# 4. resync of 1 GiB with 1 % of its blocks changed against rsync, and initial sync of 1 GiB
#    against read + zstd-1 + blake3 on one core (bench/resync-vs-rsync.sh, a criterion bench;
#    its own lines are printed: targets <= 1/3 of rsync's time and bytes, >= 0.9 of raw).
# Prints the load average before and after each part: the figures are comparable only as
# ratios when the machine is not quiet. A benchmark, never a CI test.
#
# TANDEM: the tandem binary (default target/release/tandem under CARGO_TARGET_DIR or ./target).
set -euo pipefail
cd "$(dirname "$0")/.."

skip_resync=false
for a in "$@"; do
    case "$a" in
        --skip-resync) skip_resync=true ;;
        *) echo "unknown argument $a (only --skip-resync)" >&2; exit 2 ;;
    esac
done
tandem="${TANDEM:-${CARGO_TARGET_DIR:-target}/release/tandem}"
if [ ! -x "$tandem" ]; then
    echo "no tandem binary at $tandem: cargo build --release -p tandem, or set TANDEM" >&2
    exit 2
fi
load() { cut -d' ' -f1-3 /proc/loadavg; }
out="$(mktemp -d "${TMPDIR:-/tmp}/tandem-compare.XXXXXX")"
trap 'rm -rf "$out"' EXIT

# field FILE KEY: a number from a `tandem bench replication` JSON report.
field() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]])' "$1" "$2"
}
# disk FILE: the disk line of a report: bytes the device wrote per byte replicated, its write
# rate during the run, and its durable sequential write rate measured alone in the same run.
disk() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["disk"]
print("disk: %.2f bytes written per byte replicated, %.0f MB/s during the run, %.0f MB/s alone (fdatasync)" % (
    d.get("written_per_byte_replicated", float("nan")), d.get("write_mb_per_s_during_run", float("nan")),
    d["durable_write_mb_per_s_alone"]))' "$1"
}

summary=()
echo "== 1. async replication vs raw zstd-1 (load $(load))"
"$tandem" bench replication --volume-mib 1024 --write-kib 1024 --concurrency 8 --secs 10 \
    >"$out/repl.json"
e2e=$(field "$out/repl.json" replicated_mb_per_s_end_to_end)
raw=$(field "$out/repl.json" raw_zstd1_mb_per_s_one_core)
summary+=("$(printf '%-44s %10.1f %10.1f %7.2f  %s' 'async MB/s vs raw zstd-1 (1 core)' "$e2e" "$raw" \
    "$(echo "$e2e / $raw" | bc -l)" '>= 1.0')")
summary+=("    $(disk "$out/repl.json")")
for c in auto off; do
    echo "== 1$c. the same, compression = $c (load $(load))"
    "$tandem" bench replication --volume-mib 1024 --write-kib 1024 --concurrency 8 --secs 10 \
        --compression "$c" >"$out/repl-$c.json"
    e=$(field "$out/repl-$c.json" replicated_mb_per_s_end_to_end)
    r=$(field "$out/repl-$c.json" raw_zstd1_mb_per_s_one_core)
    summary+=("$(printf '%-44s %10.1f %10.1f %7.2f  %s' "async MB/s, compression = $c, vs raw zstd-1" "$e" "$r" \
        "$(echo "$e / $r" | bc -l)" '>= 1.0')")
    summary+=("    $(disk "$out/repl-$c.json")")
done

echo "== 2. the same with history (load $(load))"
"$tandem" bench replication --volume-mib 1024 --write-kib 1024 --concurrency 8 --secs 10 \
    --history >"$out/hist.json"
hist=$(field "$out/hist.json" replicated_mb_per_s_end_to_end)
summary+=("$(printf '%-44s %10.1f %10.1f %7.2f  %s' 'async MB/s with history vs without' "$hist" "$e2e" \
    "$(echo "$hist / $e2e" | bc -l)" '>= 0.85')")
echo "== 2raw. the same, history_compress = false (load $(load))"
"$tandem" bench replication --volume-mib 1024 --write-kib 1024 --concurrency 8 --secs 10 \
    --history --history-compress false >"$out/hist-raw.json"
hraw=$(field "$out/hist-raw.json" replicated_mb_per_s_end_to_end)
summary+=("$(printf '%-44s %10.1f %10.1f %7.2f  %s' 'history, history_compress = false, vs without' "$hraw" "$e2e" \
    "$(echo "$hraw / $e2e" | bc -l)" '>= 0.85')")

echo "== 3. NBD latency vs qemu-nbd (load $(load))"
TANDEM="$tandem" bench/nbd-latency.sh 500 | tee "$out/nbd.txt"
while read -r _ _ kind t p ratio; do
    target='<= 2.0'
    [ "$kind" = write+flush ] && target='<= 2.5'
    summary+=("$(printf '%-44s %10s %10s %7s  %s' "4 KiB $kind us (qemu-nbd)" "$t" "$p" "$ratio" "$target")")
done < <(grep '^4 KiB' "$out/nbd.txt")
read -r tf pf < <(grep '^flush, nothing' "$out/nbd.txt" | awk '{print $(NF-2), $(NF-1)}')
summary+=("$(printf '%-44s %10s %10s %7s  %s' 'flush, nothing left to sync, us (qemu-nbd)' "$tf" "$pf" '-' '<= 50 us')")

if ! $skip_resync; then
    echo "== 4. resync and initial sync vs rsync and raw (load $(load))"
    bench/resync-vs-rsync.sh | tee "$out/resync.txt"
fi

echo
echo "== ratios ($(nproc) cores, load at the end $(load)); tandem, peer, ratio, target"
for line in "${summary[@]}"; do echo "$line"; done
$skip_resync || echo "resync / initial sync: see part 4 above (criterion times and rsync's)"
