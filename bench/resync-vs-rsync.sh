#!/usr/bin/env bash
# Resync and initial sync of 1 GiB, Tandem beside its peers in the same run (issue 21).
#
#   bench/resync-vs-rsync.sh [CRITERION FILTER]
#
# Runs the criterion bench `replicator/benches/resync.rs`: it writes a 1 GiB file of mixed
# data (zstd-1 ratio about 3) and a copy with 1 % of its 64 KiB blocks changed, resyncs the copy
# over loopback gRPC through a byte-counting proxy (raw, per-block zstd-1 / zstd-3, chosen per
# link, and the old gRPC-stream zstd), then an initial sync into a missing file next to reading
# + zstd-1 + blake3 the source on one core, and last `rsync --inplace --no-whole-file --stats`
# on the same files (median of 5). Prints the load average before and after: the machine may
# be shared. A benchmark, never a CI test.
#
# TANDEM_BENCH_DIR: where the 2 GiB of files go (default: the system temp dir).
# TANDEM_BENCH_MIB: file size in MiB (default 1024).
set -euo pipefail

command -v rsync >/dev/null || { echo "rsync not found (apt install rsync)" >&2; exit 2; }
echo "load before: $(cat /proc/loadavg)"
cargo bench -p tandem-replicator --bench resync -- "$@" 2>&1 |
    grep -E "^[a-z_0-9]+/|time:|thrpt:|blocks|rsync" || true
echo "load after: $(cat /proc/loadavg)"
