#!/usr/bin/env bash
# The main job: a video from a prompt. Real weights when present (or with --download), otherwise the built-in
# tiny random-weight model, so a fresh offline machine still runs the whole path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pyramid_flow "$@"
