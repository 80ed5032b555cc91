#!/usr/bin/env bash
# The test command (README, .ci/run): set up, lint, type-check, run every tier.
# Extra arguments go to pytest (e.g. scripts/test.sh -m 'not slow').
set -euo pipefail
cd "$(dirname "$0")/.."
# libguestfs (and a kernel for its appliance) for the one virt-ls acceptance test.
export RHVFS_GUESTFS=${RHVFS_GUESTFS:-1}
# Bacula community (director, storage and file daemons, sqlite3 catalog) for the Bacula tests.
export RHVFS_BACULA=${RHVFS_BACULA:-1}
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check rhvfs tests bench
.venv/bin/ruff format --check rhvfs tests bench
echo "== mypy"
.venv/bin/mypy rhvfs
echo "== collect"
# Every tier must hold tests: a tier that silently collects nothing (a rename, a
# conftest error swallowed by a filter) fails here, before the run.
for tier in unit fs_api component mount; do
  count=$( (.venv/bin/pytest -p no:cacheprovider --collect-only -q "tests/$tier" || true) | grep -c '::' || true)
  if [ "$count" -eq 0 ]; then
    echo "test.sh: no tests collected in tests/$tier" >&2
    .venv/bin/pytest -p no:cacheprovider --collect-only -q "tests/$tier" >&2 || true
    exit 1
  fi
  echo "tests/$tier: $count tests"
done
echo "== pytest"
# Exit status 5 (no tests collected or all deselected, e.g. by a -m that matches
# nothing) is a failure too: it is the last command, so set -e makes it the
# script's status. Keep it last, or keep set -e.
.venv/bin/pytest -p no:cacheprovider -ra --durations=15 "$@"
