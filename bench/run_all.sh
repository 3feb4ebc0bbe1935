#!/usr/bin/env bash
# Re-runs every benchmark of BENCHMARKS.md (each writes bench/results/<stage>.md), then rebuilds BENCHMARKS.md.
# Slow (tens of minutes on 2 cores); not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY bench/bench_synth.py --patients 500 --image-size 256 --workers 2
$PY bench/bench_curate.py --pairs 35
$PY bench/bench_annotate.py
$PY bench/bench_tokenizer.py
$PY bench/bench_train.py --threads 1 --steps 6
$PY bench/bench_generate.py --requests 8 --batch 8
$PY bench/bench_evaluate.py
$PY bench/bench_serve.py --repeats 5
OMP_NUM_THREADS=1 $PY bench/bench_convert.py --layers 2 --out bench/results/convert.md
bash bench/collect.sh
