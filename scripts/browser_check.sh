#!/usr/bin/env bash
# Browser check of the built book (issues 8, 15): loads every page in headless Chromium without
# network access, saves one screenshot per page and fails on broken images, broken internal
# links/anchors, raw MyST, notebook error outputs, untypeset math, JavaScript exceptions and
# requests to the network. Build the book first (bash scripts/book.sh ...); this script does not.
#
#   bash scripts/browser_check.sh [HTML_DIR] [--out DIR] [--no-browser] [--json FILE] ...
#
# Defaults: HTML_DIR=_build/html, screenshots in _build/browser-check/. Installs Debian's chromium
# when it is missing (as root, or through sudo). The browser is driven through the DevTools
# protocol over a pipe, so chromium-driver and Selenium are not needed. Exit: 0 ok, 1 problems,
# 2 the check could not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

no_browser=0
for arg in "$@"; do [ "$arg" = "--no-browser" ] && no_browser=1; done

if [ "$no_browser" = 0 ] && [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "[browser-check] chromium missing and not root: install it (apt-get install chromium) or pass --no-browser" >&2; exit 2; }
    SUDO="sudo"
  fi
  echo "[browser-check] installing Debian's chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
fi

PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/browser_check.py "$@"
