#!/usr/bin/env bash
# Integration lanes: the pack inside each real ComfyUI version + its frontend in headless Chromium (CPU, tiny
# checkpoints), one virtual environment per version (.ci/setup_comfyui.py: .cache/comfyui/<version>/).
# Usage: .ci/integration.sh [extra pytest args]     (run from anywhere; needs root or sudo for apt-get chromium)
# COMFYUI_LANES chooses the lanes: space-separated VERSION or VERSION@FRONTEND (comfyui-frontend-package version
# instead of the one that ComfyUI version pins). Default: 0.3.75 with its own frontend, 0.33.0 with the newest.
# Every lane runs even when an earlier one failed; the script fails if any lane's setup fails or its pytest exits
# non-zero (that includes exit 5, no test collected). Artifacts (server log, screenshots) go to artifacts/<version>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
LANES=${COMFYUI_LANES:-"0.3.75 0.33.0@1.58.1"}
LONG_LANE=${LANES##* }  # tests marked long (minutes of tiny-model video) run in the last lane only

"$PY" .ci/build_workflows.py --check
failed=()
summary=()
for lane in $LANES; do
  version=${lane%%@*}
  frontend=
  [[ $lane == *@* ]] && frontend=${lane#*@}
  echo "=== integration lane: ComfyUI $version, frontend ${frontend:-pinned by ComfyUI} ==="
  start=$SECONDS
  if ! lane_env=$("$PY" .ci/setup_comfyui.py --version "$version" ${frontend:+--frontend "$frontend"} \
                  --browser --check); then
    failed+=("$lane: setup failed")
    continue
  fi
  setup_s=$((SECONDS - start))
  # COMFYUI_VERSION, COMFYUI_ROOT, COMFYUI_PYTHON, COMFYUI_FRONTEND (shell-quoted by the setup)
  eval "$lane_env"
  export COMFYUI_VERSION COMFYUI_ROOT COMFYUI_PYTHON COMFYUI_FRONTEND
  export PYRAMID_FLOW_ARTIFACTS="$PWD/artifacts/$version"
  rm -rf "$PYRAMID_FLOW_ARTIFACTS"
  mkdir -p "$PYRAMID_FLOW_ARTIFACTS"
  echo "=== ComfyUI $COMFYUI_VERSION (frontend $COMFYUI_FRONTEND) ready in ${setup_s} s: $COMFYUI_ROOT ==="
  start=$SECONDS
  rc=0
  markers="integration"
  [ "$lane" = "$LONG_LANE" ] || markers="integration and not long"
  CI=${CI:-true} "$COMFYUI_PYTHON" -m pytest -m "$markers" tests/integration -q -p no:cacheprovider "$@" || rc=$?
  summary+=("ComfyUI $version (frontend $COMFYUI_FRONTEND): setup ${setup_s} s, tests $((SECONDS - start)) s, pytest exit $rc")
  if [ "$rc" -ne 0 ]; then
    failed+=("$lane: pytest exit $rc")
  fi
done

if [ "${#summary[@]}" -eq 0 ] && [ "${#failed[@]}" -eq 0 ]; then
  failed+=("no lane ran (COMFYUI_LANES='$LANES')")
fi
[ "${#summary[@]}" -eq 0 ] || printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  printf 'integration lane FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
