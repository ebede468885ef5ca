#!/usr/bin/env bash
# Integration lane: a real ComfyUI 0.3.75 + frontend (CPU), the pack linked into custom_nodes, tiny checkpoints.
# Usage: .ci/integration.sh [extra pytest args]     (run from anywhere; needs root or sudo for apt-get chromium)
# Artifacts (server log, screenshots of every workflow in the frontend) go to artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" .ci/setup_comfyui.py --browser --check
"$PY" .ci/build_workflows.py --check
mkdir -p artifacts
CI=${CI:-true} "$PY" -m pytest -m integration tests/integration -q -p no:cacheprovider "$@"
