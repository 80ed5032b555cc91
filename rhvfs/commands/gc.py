"""``rhvfs gc [--dry-run]``: remove leftovers of killed rhvfs processes.

Delegates to ``BackupManager.collect_garbage``: snapshots of this installation
(the state directory's id in their ``rhvfs.ARTIFACT_MARKER`` description) whose
mount is gone, and what the journal of dead mounts names; prints one line per
item removed (or that would be removed) and per rhvfs artifact left alone.

Must not: touch anything rhvfs did not create (that rule lives in sessions).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from rhvfs.commands.common import add_connection_args, config_from_args, run_trio, setup_logging


def cmd_gc(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rhvfs gc", description="Remove leftovers of crashed rhvfs sessions."
    )
    add_connection_args(p)
    p.add_argument("-n", "--dry-run", action="store_true", help="only show what would be removed")
    args = p.parse_args(list(argv))
    setup_logging(debug=args.debug)
    if not args.debug:
        logging.getLogger().setLevel(logging.WARNING)
    config = config_from_args(args)

    async def run() -> list[str]:
        from rhvfs.engine import open_engine
        from rhvfs.sessions import BackupManager, Journal

        async with open_engine(config) as engine:
            journal = Journal.for_engine(config.engine_url, state_dir=args.state_dir)
            manager = BackupManager(engine, config, journal=journal, gc_on_start=False)
            return await manager.collect_garbage(dry_run=args.dry_run)

    lines = run_trio(run)
    for line in lines:
        print(line)
    if not lines:
        print("nothing to clean up")
    return 0
