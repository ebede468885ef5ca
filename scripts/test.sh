#!/usr/bin/env bash
# Every test: the fast lane (model parity, units, node logic), then the integration lane (a real ComfyUI 0.3.75
# server and its frontend, offline, on CPU). Sets up what it needs on a fresh machine first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m pytest tests -q --ignore=tests/integration
