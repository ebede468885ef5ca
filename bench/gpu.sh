#!/usr/bin/env bash
# The prepared GPU check (issue 8): full-size random-weight miniFLUX at bf16 on one CUDA GPU, under 8 minutes,
# no network; writes docs/benchmarks-gpu.md (or --out PATH). `bench/gpu.sh --dry-run --out PATH` runs the same code
# on the CPU with tiny models (CI). Python: $PYTHON, else the repository's .venv, else python3 (the device image).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
export PYTHONUNBUFFERED=1
exec timeout 480 "$PYTHON" -m bench.gpu_check "$@"
