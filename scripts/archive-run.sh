#!/usr/bin/env bash
# Keep a long workflow run's records on the repository between sittings, for machines that do not keep their
# disks (the paper run, config/paper.yaml, takes ~17 CPU-hours; a sitting is 3 hours and its disk may be gone at
# the next). The records resume by design (copa.bench.record.record_matches): restored ones are not rerun.
#
#   bash scripts/archive-run.sh save RUN_DIR NAME      # copy RUN_DIR (the config's `out`) to archive/NAME, commit it
#   bash scripts/archive-run.sh restore NAME RUN_DIR   # copy archive/NAME back into RUN_DIR (files there are kept)
#
# What is copied: records (record.json, images.npz, reconstruction.png), the cells' summaries and their logs (the
# per-layer stage times benchmarks/run_cost.py --logs reads); tables, plots and snakemake's state are rebuilt.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
usage() { echo "usage: $0 save RUN_DIR NAME | restore NAME RUN_DIR" >&2; exit 2; }
[ $# -eq 3 ] || usage
case "$1" in
  save)
    run="$2"; name="$3"; [ -d "$run" ] || { echo "archive-run: run folder $run does not exist" >&2; exit 2; }
    dest="$ROOT/archive/$name"; mkdir -p "$dest"
    (cd "$run" && find . \( -path '*/records/*' -o -path '*/cells/*' -o -path './logs/*' \) -type f \
        \( -name record.json -o -name images.npz -o -name reconstruction.png -o -name '*.json' -o -name '*.log' \) \
        -print0 | while IFS= read -r -d '' f; do
          # a live run deletes a cell's summary before it reruns the cell: a file gone since find listed it is
          # skipped (the next save takes its new version), not an error that leaves the archive half copied
          [ -f "$f" ] || continue
          if [ ! -e "$dest/$f" ] || ! cmp -s "$f" "$dest/$f"; then
            mkdir -p "$dest/$(dirname "$f")"
            cp -p "$f" "$dest/$f" 2>/dev/null || echo "archive-run: $f went away while it was copied: skipped" >&2
          fi
        done)
    cd "$ROOT"
    git add -A "archive/$name"
    if git diff --cached --quiet -- "archive/$name"; then echo "archive-run: nothing new in $run"; exit 0; fi
    n=$(find "archive/$name" -name record.json | wc -l)
    git commit -q -m "archive/$name: $n records of the run in progress (scripts/archive-run.sh save $run $name)" \
        -- "archive/$name"
    echo "archive-run: $n records in archive/$name, committed";;
  restore)
    name="$2"; run="$3"; src="$ROOT/archive/$name"
    [ -d "$src" ] || { echo "archive-run: archive/$name does not exist (archives: $(ls "$ROOT/archive" 2>/dev/null | tr '\n' ' '))" >&2; exit 2; }
    mkdir -p "$run"; cp -a -n "$src/." "$run/"
    echo "archive-run: $(find "$src" -name record.json | wc -l) records restored into $run";;
  *) usage;;
esac
