"""Run ``rhvfs.mount.serve`` on the VFS fakes (a real FUSE mount, no engine).

Usage: python fake_mount.py MOUNTPOINT. Prints ``READY`` when the mount
answers and, at exit, one JSON line with the fake backups' open/release counts.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fs_api"))

from vfs_fakes import FakeBackups, FakeEngine  # noqa: E402

from rhvfs.config import Config  # noqa: E402
from rhvfs.mount import Backend, MountOptions, serve  # noqa: E402


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    backups = FakeBackups()

    @asynccontextmanager
    async def backend(config: Config, options: MountOptions) -> AsyncIterator[Backend]:
        yield Backend(engine=FakeEngine(), backups=backups)

    def ready() -> None:
        print("READY", flush=True)

    config = Config(engine_url="http://fake.invalid", username="u", password="p", listing_ttl=2.0)
    trio.run(
        lambda: serve(config, MountOptions(mountpoint=sys.argv[1]), ready=ready, backend=backend)
    )
    print(json.dumps({"opened": len(backups.opened), "released": backups.released}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
