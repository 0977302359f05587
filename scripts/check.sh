#!/usr/bin/env bash
# The check gate: ruff format, ruff check and mypy (strict) over the tree. Zero findings or it fails.
# Usage: bash scripts/check.sh [python]   (the python of a venv with the `test` extra installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac  # still right after a cd
"$PY" -m ruff format --check .
"$PY" -m ruff check .
# The folders install as feedline.proto/.service/.client; mypy needs that layout, so it reads them through links.
LAYOUT="$(mktemp -d)"
trap 'rm -rf "$LAYOUT"' EXIT
mkdir -p "$LAYOUT/feedline"
for d in proto service client; do ln -s "$PWD/$d" "$LAYOUT/feedline/$d"; done
(cd "$LAYOUT" && "$PY" -m mypy --config-file "$OLDPWD/pyproject.toml" -p feedline.proto -p feedline.client -p feedline.service)
