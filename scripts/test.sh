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
echo "== pytest"
# Exit status 5 (no tests collected) is a failure too: set -e propagates it.
.venv/bin/pytest -p no:cacheprovider -ra --durations=15 "$@"
