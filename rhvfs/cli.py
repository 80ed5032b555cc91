"""The ``rhvfs`` command: subcommand dispatch.

User errors (``rhvfs.errors.RhvfsError``) print one clear line on stderr
(redacted: ``rhvfs.redact``) and exit 1; a traceback is printed only with ``--debug``. Subcommands live in their
own modules; this one only parses the first word and delegates.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from rhvfs.errors import RhvfsError
from rhvfs.redact import redact

USAGE = """usage: rhvfs [--debug] COMMAND [ARGS...]

commands:
  mount     mount an engine (rhvfs mount -c SECTION MOUNTPOINT)
  umount    finish a mount's sessions and unmount it
  status    show a mount's sessions (rhvfs status MOUNTPOINT)
  ls        print the tree without mounting (rhvfs ls -c SECTION [-R] [PATH])
  gc        remove leftovers of crashed rhvfs sessions (rhvfs gc -c SECTION [--dry-run])
  sim       run the engine simulator (rhvfs sim --help)
"""


def _sim(argv: Sequence[str]) -> int:
    from rhvfs.sim.cli import main as sim_main

    return sim_main(list(argv))


def _mount(argv: Sequence[str]) -> int:
    from rhvfs.commands.mount import cmd_mount

    return cmd_mount(argv)


def _umount(argv: Sequence[str]) -> int:
    from rhvfs.commands.mount import cmd_umount

    return cmd_umount(argv)


def _status(argv: Sequence[str]) -> int:
    from rhvfs.commands.mount import cmd_status

    return cmd_status(argv)


def _ls(argv: Sequence[str]) -> int:
    from rhvfs.commands.ls import cmd_ls

    return cmd_ls(argv)


def _gc(argv: Sequence[str]) -> int:
    from rhvfs.commands.gc import cmd_gc

    return cmd_gc(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "mount": _mount,
    "umount": _umount,
    "status": _status,
    "ls": _ls,
    "gc": _gc,
    "sim": _sim,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = False
    if args and args[0] == "--debug":
        debug, args = True, args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"rhvfs: unknown command {args[0]!r}\n{USAGE}", end="", file=sys.stderr)
        return 2
    try:
        return command(args[1:])
    except RhvfsError as e:
        if debug or "--debug" in args:
            raise
        print(f"rhvfs: {redact(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
