#!/usr/bin/env bash
# Every test: installs what is missing, builds, runs ctest (unit tests, MPI tests, oracle tests
# against Hugging Face transformers, CLI and fault tests).
set -euo pipefail
cd "$(dirname "$0")/.."
./setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
ctest --test-dir build --output-on-failure -j2 "$@"
