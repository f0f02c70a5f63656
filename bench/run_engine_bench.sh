#!/usr/bin/env bash
# The engine benchmark in one command: makes the random 200M LLaMA-shaped model if it is missing
# (out/bench/llama-200m, about 800 MB), builds bench_engine, and runs it on one BLAS thread.
#   bench/run_engine_bench.sh [bench_engine options...]     e.g. --rounds 5 --out /tmp/engine.json
# Writes bench/results/engine.json unless --out says otherwise; prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=out/bench/llama-200m
.venv/bin/python bench/make_bench_model.py "$MODEL" >/dev/null
cmake --build build -j2 --target bench_engine >/dev/null
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
exec build/bench/bench_engine --model "$MODEL" "$@"
