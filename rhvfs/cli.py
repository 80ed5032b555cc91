"""The ``rhvfs`` command: subcommand dispatch.

Every failure exits non-zero with its reason on stderr: user errors
(``rhvfs.errors.RhvfsError``) and OS errors about a path the user gave (a state
dir, a log file, a config file) print one clear line (redacted:
``rhvfs.redact``) and exit 1; a traceback is printed only with ``--debug``.
Usage errors exit 2 (argparse's rule). ``rhvfs --version`` prints the version.
Subcommands live in their own modules (``rhvfs.commands``); this one only
parses the first word and delegates.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import rhvfs
from rhvfs.errors import RhvfsError
from rhvfs.redact import redact

USAGE = """usage: rhvfs [--debug] COMMAND [ARGS...]
       rhvfs --version

commands:
  mount     mount an engine (rhvfs mount -c SECTION MOUNTPOINT)
  umount    finish a mount's sessions and unmount it
  status    show a mount's progress (rhvfs status MOUNTPOINT [--watch] [--json])
  ls        print the tree without mounting (rhvfs ls -c SECTION [-R] [--json] [PATH])
  gc        remove leftovers of crashed rhvfs sessions (rhvfs gc -c SECTION [--dry-run] [--json])
  ca        fetch the engine's CA and set cafile (rhvfs ca fetch -c SECTION [--yes])
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
    from rhvfs.commands.status import cmd_status

    return cmd_status(argv)


def _ls(argv: Sequence[str]) -> int:
    from rhvfs.commands.ls import cmd_ls

    return cmd_ls(argv)


def _gc(argv: Sequence[str]) -> int:
    from rhvfs.commands.gc import cmd_gc

    return cmd_gc(argv)


def _ca(argv: Sequence[str]) -> int:
    from rhvfs.commands.ca import cmd_ca

    return cmd_ca(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "mount": _mount,
    "umount": _umount,
    "status": _status,
    "ls": _ls,
    "gc": _gc,
    "ca": _ca,
    "sim": _sim,
}


def os_error_text(error: OSError) -> str:
    """``<path>: <reason>`` (as coreutils print it) for an OSError about a path."""
    reason = error.strerror or str(error)
    if error.filename is not None:
        names = [error.filename] + ([error.filename2] if error.filename2 is not None else [])
        return f"{' -> '.join(str(n) for n in names)}: {reason}"
    return reason


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = False
    if args and args[0] == "--debug":
        debug, args = True, args[1:]
    if args and args[0] == "--version":
        print(f"rhvfs {rhvfs.__version__}")
        return 0
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if args else sys.stderr)
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
    except OSError as e:  # a path the user gave: state dir, log file, mountpoint...
        if debug or "--debug" in args:
            raise
        print(f"rhvfs: {redact(os_error_text(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
