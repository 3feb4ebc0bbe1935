#!/usr/bin/env bash
# Rebuilds BENCHMARKS.md from the per-stage result files in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  cat bench/HEADER.md
  for stage in synth synth_real curate annotate tokenizer keep_patient train generate evaluate demo baselines serve convert; do
    f=bench/results/$stage.md
    [ -f "$f" ] || continue
    echo
    echo "---"
    echo
    # demote headings one level so each stage is a section of this page
    sed -e 's/^# /## /' -e 's/^## \(.*\)$/### \1/;t' "$f" | sed -e '1s/^### /## /'
  done
} > BENCHMARKS.md
echo "wrote BENCHMARKS.md"
