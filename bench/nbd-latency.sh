#!/usr/bin/env bash
# 4 KiB write latency through qemu-io, Tandem beside qemu-nbd in the same run (issue 21).
#
#   bench/nbd-latency.sh [N]
#
# Starts `tandem demo --keep` (three coordinators, two sites; its group `vol` is sync, so a
# write is durable at both sites before it is answered), and `qemu-nbd` on a local file of the
# same size (no replication: the physical floor of this machine's NBD path). On each, one
# qemu-io process runs N writes of 4 KiB at distinct offsets, then N pairs write + flush, then
# one write and N flushes (a flush with nothing left to make durable).
# Prints the mean time per command (qemu-io's own per-command cost is in both sides alike),
# the ratio Tandem / qemu-nbd and the load average. A benchmark, never a CI test.
#
# TANDEM: the tandem binary (default target/release/tandem under CARGO_TARGET_DIR or ./target).
set -euo pipefail

n="${1:-500}"
case "$n" in
    '' | *[!0-9]*) echo "N must be a number, got '$n'" >&2; exit 2 ;;
esac
tandem="${TANDEM:-${CARGO_TARGET_DIR:-target}/release/tandem}"
if [ ! -x "$tandem" ]; then
    echo "no tandem binary at $tandem: cargo build --release -p tandem, or set TANDEM" >&2
    exit 2
fi
for tool in qemu-io qemu-nbd; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt install qemu-utils)" >&2; exit 2; }
done

dir="$(mktemp -d "${TMPDIR:-/tmp}/nbd-latency.XXXXXX")"
nbd_pid=""
cleanup() {
    [ -n "$nbd_pid" ] && kill "$nbd_pid" 2>/dev/null || true
    "$tandem" local down --dir "$dir/demo/run" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

echo "starting tandem demo --keep in $dir/demo ..."
"$tandem" demo --dir "$dir/demo" --keep --write-secs 2 --volume-mib 64 >"$dir/demo.out" 2>&1 || {
    tail -20 "$dir/demo.out" >&2
    exit 1
}
tandem_url="$("$tandem" status --config "$dir/demo/topology.toml" 2>/dev/null | grep -o 'nbd://[^ ]*' | head -1)"
[ -n "$tandem_url" ] || { echo "no NBD export in tandem status" >&2; exit 1; }

truncate -s 64M "$dir/plain.img"
port=$((20000 + RANDOM % 20000))
qemu-nbd -f raw -x disk0 -b 127.0.0.1 -p "$port" --persistent "$dir/plain.img" &
nbd_pid=$!
for _ in $(seq 1 50); do
    qemu-io -f raw -c 'read 0 512' "nbd://127.0.0.1:$port/disk0" >/dev/null 2>&1 && break
    sleep 0.1
done
plain_url="nbd://127.0.0.1:$port/disk0"

# Mean microseconds per command of one qemu-io run with the given commands.
run() {
    local url="$1"
    shift
    local t0 t1
    t0=$(date +%s%N)
    qemu-io -f raw "$@" "$url" >/dev/null
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000 ))
}
writes=()
pairs=()
flushes=(-c "write -P 1 0 4k")
for i in $(seq 0 $((n - 1))); do
    off=$(( (i * 4096 * 7) % (60 * 1024 * 1024) ))
    writes+=(-c "write -P $((i % 251)) $off 4k")
    pairs+=(-c "write -P $((i % 251)) $off 4k" -c "flush")
    flushes+=(-c "flush")
done

printf '%-34s %14s %14s %8s\n' "commands ($n each)" "tandem us/op" "qemu-nbd us/op" "ratio"
for kind in write write+flush; do
    if [ "$kind" = write ]; then set -- "${writes[@]}"; ops=$n; else set -- "${pairs[@]}"; ops=$n; fi
    t=$(run "$tandem_url" "$@")
    p=$(run "$plain_url" "$@")
    printf '%-34s %14d %14d %8.2f\n' "4 KiB $kind" $((t / ops)) $((p / ops)) "$(echo "$t / $p" | bc -l)"
done
# A flush after a write that is already durable: the run with N flushes minus the run with the
# write alone (qemu-io's start and connect), per flush; the issue's target is <= 50 us.
for url in "$tandem_url" "$plain_url"; do
    base=$(run "$url" -c "write -P 1 0 4k")
    all=$(run "$url" "${flushes[@]}")
    per=$(( (all - base) / n ))
    [ "$per" -lt 0 ] && per=0
    if [ "$url" = "$tandem_url" ]; then tf=$per; else pf=$per; fi
done
printf '%-34s %14d %14d %8s\n' "flush, nothing left to sync" "$tf" "$pf" \
    "$( [ "$pf" -gt 0 ] && echo "$tf / $pf" | bc -l | xargs printf '%.2f' || echo '-')"
echo "tandem: $tandem_url (sync group vol: durable at both sites); qemu-nbd: $plain_url"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
