#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: system packages, a virtual environment, the project.
# Idempotent: a second run only checks. Override the interpreter with PYTHON=..., the venv with VENV=...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_apt=()
apt_want() {  # apt_want COMMAND PACKAGE...
  local cmd="$1"; shift
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$@")
}

install_system_packages() {
  local with_test="${1:-}"
  apt_want redis-server redis-server
  if [ -n "$with_test" ]; then
    apt_want promtool prometheus
    apt_want openssl openssl
    apt_want chromium chromium  # headless browser for the dptstream view tests (driven by Selenium)
    apt_want chromedriver chromium-driver
    if ! /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer' >/dev/null 2>&1 \
        || ! gst-inspect-1.0 x264enc >/dev/null 2>&1 || ! gst-inspect-1.0 rtph264depay >/dev/null 2>&1; then
      need_apt+=(python3-gi gir1.2-gst-rtsp-server-1.0 gir1.2-gstreamer-1.0 gstreamer1.0-rtsp gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav)
    fi
  fi
  if [ "${#need_apt[@]}" -gt 0 ]; then
    local SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "setup: please install: ${need_apt[*]} (no apt-get here)" >&2; return 1
    fi
    say "installing system packages: ${need_apt[*]}"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  fi
}

pip_logged() {  # run pip, keeping its chatter in .cache/setup.log unless it fails
  mkdir -p "$ROOT/.cache"
  if ! "$@" >"$ROOT/.cache/setup.log" 2>&1; then
    cat "$ROOT/.cache/setup.log" >&2
    echo "setup: pip failed (log above, also in .cache/setup.log)" >&2
    return 1
  fi
}

install_python_env() {
  local extras="${1:-sample}"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local PIP=(pip_logged "$VENV/bin/python" -m pip -q --disable-pip-version-check)
  if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    # Pin torch first: an unpinned torch pulls a multi-GB CUDA build. Set TORCH_SPEC for another build.
    say "installing ${TORCH_SPEC:-torch==2.13.0}"
    "${PIP[@]}" install "${TORCH_SPEC:-torch==2.13.0}"
  fi
  local stamp="$VENV/.dptstream-$extras-$(cat "$ROOT/pyproject.toml" | cksum | cut -d' ' -f1)"
  if [ ! -e "$stamp" ]; then
    say "installing dptstream[$extras] and its dependencies"
    "${PIP[@]}" install -e "$ROOT[$extras]"
    touch "$stamp"
  fi
}
