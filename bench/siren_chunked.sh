#!/bin/sh
# Runs one resumable hyperkd training command in chunks of at most 10 minutes, each holding the
# shared CPU lock (/tmp/hyperkd-cpu.lock), with 2 threads; every chunk passes --resume, so it
# continues from OUT/last.pt (the Trainer's exact resume, epoch granularity). Loops until the
# command exits 0; stops on any failure other than the chunk's timeout (exit 124).
#
#   bench/siren_chunked.sh siren reconstruct --model resnet20 ... --out runs/x
set -u
PY=${PYTHON:-/work/main/.venv/bin/python}
CHUNK_S=${CHUNK_S:-600}
while :; do
    flock /tmp/hyperkd-cpu.lock timeout "$CHUNK_S" env OMP_NUM_THREADS=2 \
        "$PY" -m hyperkd "$@" --resume
    rc=$?
    [ "$rc" -eq 0 ] && exit 0
    [ "$rc" -ne 124 ] && { echo "siren_chunked: exit $rc" >&2; exit "$rc"; }
    echo "siren_chunked: chunk timed out, resuming" >&2
done
