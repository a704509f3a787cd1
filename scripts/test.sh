#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then ruff, mypy and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # driven by Playwright in the report tests; never `playwright install`
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "note: ${need_apt[*]} missing and not root: the tests needing them will fail or be skipped" >&2
  fi
fi

scripts/setup-env.sh
echo "==> ruff"
.venv/bin/ruff check src tests examples bench
.venv/bin/ruff format --check src tests examples bench
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
# Parallel workers (pytest-xdist), each with its own session fixtures; one test module stays on one
# worker (its module fixtures are made once). Most of the suite waits on processes, not the CPU.
# RUNCTL_TEST_WORKERS=0 (or -n 0 among the arguments) runs everything in this one process.
exec .venv/bin/pytest -q -p no:cacheprovider -n "${RUNCTL_TEST_WORKERS:-2}" --dist loadscope "$@"
