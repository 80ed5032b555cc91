"""``python -m rhvfs``: the ``rhvfs`` command (``rhvfs.cli.main``), nothing else."""

from __future__ import annotations

import sys

from rhvfs.cli import main

if __name__ == "__main__":
    sys.exit(main())
