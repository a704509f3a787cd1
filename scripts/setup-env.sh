#!/usr/bin/env bash
# Creates .venv with runctl and what the examples and tests need. Idempotent; quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.runctl-deps
want="$(cat pyproject.toml scripts/setup-env.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing runctl and dependencies into .venv"
  # torch is pinned to the CPU build that installs without GPU packages; the training libraries are
  # installed in the same command so pip never swaps that torch for another.
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' 'torch==2.13.0' scikit-learn numpy \
    transformers accelerate lightning tqdm \
    2> >(grep -v '^WARNING: Location' >&2)
  echo "$want" > "$stamp"
fi
