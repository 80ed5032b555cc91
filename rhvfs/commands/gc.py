"""``rhvfs gc [--dry-run] [--json]``: remove leftovers of killed rhvfs processes.

Delegates to ``BackupManager.collect_garbage``: snapshots of this installation
(the state directory's id in their ``rhvfs.ARTIFACT_MARKER`` description) whose
mount is gone, and what the journal of dead mounts names (their backup
sessions' transfers and snapshots, their unfinished restores' transfers, VMs,
templates and disks), never the snapshot each VM's incremental chain keeps
(the chain state's). Its report lines are
sorted here (``classify``) into what was (or would be) removed or cancelled,
the rhvfs artifacts left alone, and failures. Output: actions and left-alone
lines on stdout (``nothing to clean up`` when there are none), each failure as
``rhvfs: <line>`` on stderr; ``--json`` prints ``{"dry_run", "actions",
"left_alone", "errors"}`` instead (failures still on stderr too).

Exit status: 1 when the engine can't be reached or refuses the credentials
(checked first, so that is one line, not a cleanup report) or when any item
failed; 0 otherwise.

Must not: touch anything rhvfs did not create (that rule lives in sessions).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Literal

from rhvfs.commands.common import (
    add_connection_args,
    config_from_args,
    prepare_state_dir,
    run_trio,
    setup_logging,
)
from rhvfs.redact import redact

LineKind = Literal["action", "left_alone", "error"]

#: How the report lines of ``collect_garbage`` begin (``rhvfs.sessions.core._gc``);
#: a line with none of these prefixes counts as a failure (never silently as done).
ACTION_PREFIXES = ("removed ", "would remove ", "cancelled ", "would cancel ")
LEFT_ALONE_PREFIXES = ("left alone:",)
ERROR_PREFIXES = ("cannot ", "failed to ")


def classify(line: str) -> LineKind:
    """What a report line of ``collect_garbage`` says: done (or planned), left alone, or
    a failure (also any line of a form this module does not know)."""
    if line.startswith(ACTION_PREFIXES):
        return "action"
    if line.startswith(LEFT_ALONE_PREFIXES):
        return "left_alone"
    return "error"


def cmd_gc(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rhvfs gc", description="Remove leftovers of crashed rhvfs sessions."
    )
    add_connection_args(p)
    p.add_argument("-n", "--dry-run", action="store_true", help="only show what would be removed")
    p.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    args = p.parse_args(list(argv))
    setup_logging(debug=args.debug)
    if not args.debug:
        logging.getLogger().setLevel(logging.WARNING)
    prepare_state_dir(args.state_dir)
    config = config_from_args(args)

    async def run() -> list[str]:
        from rhvfs.engine import open_engine
        from rhvfs.sessions import BackupManager, Journal
        from rhvfs.sessions.incremental import ChainState

        async with open_engine(config) as engine:
            # Unreachable engine or wrong credentials: one error (exit 1), before any
            # cleanup line could be mistaken for a report.
            await engine.list_datacenters()
            journal = Journal.for_engine(config.engine_url, state_dir=args.state_dir)
            chain = ChainState.for_engine(config.engine_url, state_dir=args.state_dir)
            manager = BackupManager(
                engine,
                config,
                journal=journal,
                gc_on_start=False,
                kept_snapshots=lambda: chain.kept_snapshots().values(),
            )
            return await manager.collect_garbage(dry_run=args.dry_run)

    report: dict[LineKind, list[str]] = {"action": [], "left_alone": [], "error": []}
    shown: list[str] = []  # actions and left-alone lines, in the order gc found them
    for line in run_trio(run):
        line = redact(line)  # an engine error may quote a URL
        kind = classify(line)
        report[kind].append(line)
        if kind != "error":
            shown.append(line)
    if args.json:
        doc = {
            "dry_run": args.dry_run,
            "actions": report["action"],
            "left_alone": report["left_alone"],
            "errors": report["error"],
        }
        print(json.dumps(doc, indent=2))
    else:
        for line in shown:
            print(line)
        if not shown and not report["error"]:
            print("nothing to clean up")
    for line in report["error"]:
        print(f"rhvfs: {line}", file=sys.stderr)
    return 1 if report["error"] else 0
