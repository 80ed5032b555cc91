"""Run ``rhvfs.mount.serve`` on the VFS fakes (a real FUSE mount, no engine).

Usage: ``python -m tests.support.fake_mount MOUNTPOINT`` (the repository root on
``sys.path``; ``tests.support.mounts.FakeMount`` starts it). Prints ``READY``
when the mount answers and, at exit, one JSON line with the fake backups'
open/release counts. Must not: contact an engine.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from rhvfs.config import Config
from rhvfs.mount import Backend, MountOptions, serve
from tests.support.fake_backups import FakeBackups
from tests.support.fake_engine import inventory_engine


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    backups = FakeBackups()

    @asynccontextmanager
    async def backend(config: Config, options: MountOptions) -> AsyncIterator[Backend]:
        yield Backend(engine=inventory_engine(), backups=backups)

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
