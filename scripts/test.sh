#!/usr/bin/env bash
# Every test: the fast lane (model parity against the official outputs, units, node logic), then the integration
# lane (a real ComfyUI 0.3.75 server and its frontend in headless Chromium, offline, on CPU). Sets up what it
# needs on a fresh machine first (.venv, then ComfyUI into .cache/comfyui and Debian's chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m pytest tests -q -p no:cacheprovider -m "not integration" --ignore=tests/integration
bash .ci/integration.sh
