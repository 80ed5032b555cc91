"""The ``rhvfs`` command: subcommand dispatch.

User errors (``rhvfs.errors.RhvfsError``) print one clear line on stderr and
exit 1; a traceback is printed only with ``--debug``. Subcommands live in their
own modules; this one only parses the first word and delegates.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from rhvfs.errors import RhvfsError

USAGE = """usage: rhvfs [--debug] COMMAND [ARGS...]

commands:
  sim       run the engine simulator (rhvfs sim --help)
"""


def _sim(argv: Sequence[str]) -> int:
    from rhvfs.sim.cli import main as sim_main

    return sim_main(list(argv))


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
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
        if debug:
            raise
        print(f"rhvfs: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
