#!/usr/bin/env bash
# Sets up ctdesk (scripts/setup.sh) and opens the viewer — on the bundled demo study unless a PATH is given.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/ctdesk view "$@"
