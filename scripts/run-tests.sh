#!/usr/bin/env bash
# Sets up ctdesk with its test tools (scripts/setup.sh --dev) and runs the whole test suite.
# Extra arguments go to pytest. Tests that need a real X display get one from Xvfb when none is present.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export PYTHONDONTWRITEBYTECODE=1
runner=(.venv/bin/python -m pytest "$@")
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1920x1080x24" "${runner[@]}"
fi
exec "${runner[@]}"
