#!/usr/bin/env bash
# Checks that every pinned runtime requirement has a wheel for each Python version pyproject.toml
# supports (Linux x86-64), without installing anything: pip resolves each set in --dry-run mode.
# Needs the package index; run it when a pin or requires-python changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PLAT=""
for n in 17 24 27 28 31 34 35; do PLAT="$PLAT --platform manylinux_2_${n}_x86_64"; done
pins=$(grep -v '^\s*#' requirements.txt | grep '==' | tr '\n' ' ')
for v in 3.11 3.12; do
  "$PY" -m pip install --dry-run --quiet --ignore-installed --no-deps --only-binary=:all: --python-version "$v" \
    $PLAT --platform manylinux2014_x86_64 --platform any --target "$(mktemp -d)" $pins
  echo "Python $v: a wheel for every pin"
done
