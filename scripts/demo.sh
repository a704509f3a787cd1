#!/usr/bin/env bash
# Quick start: trains a real digit classifier on this machine through runctl, end to end.
# The run stops itself by policy once the training loss is low enough, keeps its checkpoints,
# and runctl reports exactly how it ended.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH" VIRTUAL_ENV="$PWD/.venv"
echo "==> runctl local train examples/train_mnist.py --wait --auto-stop-loss 0.05 -- --epochs 30"
set +e
runctl local train examples/train_mnist.py --wait --auto-stop-loss 0.05 --auto-stop-patience 2 -- --epochs 30
code=$?
set -e
id=$(runctl runs list --output json | python -c 'import json,sys; print(json.load(sys.stdin)[0]["run_id"])')
echo
echo "==> runctl runs status $id"
runctl runs status "$id"
echo
echo "==> checkpoints kept in ./checkpoints/:"
ls checkpoints/ | tail -n 3
exit "$code"
