"""A restore manager over the fake engine, and the calls a copy tool makes on a session.

``start`` runs a ``RestoreManager`` on ``FakeEngine`` with the fake upload
opener in a nursery; ``Harness.write_file`` writes one file into a session
the way cp/tar/rsync do (optionally sparse, or under a temporary name then
renamed); ``restored`` gives the sha256 of each disk of a restored VM.
Must not: assert anything about a restore (the tests do).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from rhvfs.config import Config, load_config
from rhvfs.engine import Engine, open_engine
from rhvfs.fs import errno_for
from rhvfs.retry import RetryPolicy
from rhvfs.sessions.core import EngineLimits, Journal
from rhvfs.sessions.restore import RestoreFile, RestoreManager, RestoreSession
from rhvfs.sessions.restore._staging import StagingArea
from tests.support.backup_sets import SetFiles
from tests.support.data import MiB, sha
from tests.support.fake_dataplane import upload_opener
from tests.support.fake_engine import FakeEngine

CHUNK = 128 * 1024


class Harness:
    """A running restore manager and its engine."""

    def __init__(self, engine: FakeEngine, manager: RestoreManager) -> None:
        self.engine = engine
        self.manager = manager

    async def write_file(
        self,
        session: RestoreSession,
        name: str,
        data: bytes,
        *,
        temp_name: str | None = None,
        sparse: bool = False,
        chunk: int = CHUNK,
    ) -> RestoreFile:
        f = session.new_file(temp_name or name)
        session.open(f)
        for off in range(0, len(data), chunk):
            piece = data[off : off + chunk]
            if sparse and piece == bytes(len(piece)):
                continue
            await session.write(f, off, piece)
        if sparse:
            await session.truncate(f, len(data))
        await session.flush(f)
        await session.release(f)
        if temp_name:
            await session.rename(f, name)
        return f

    async def copy(
        self, session: RestoreSession, s: SetFiles, order: list[str] | None = None, **kw: object
    ) -> None:
        for name in order or list(s.files):
            await self.write_file(session, name, s.files[name], **kw)  # type: ignore[arg-type]

    async def settle(self, session: RestoreSession) -> dict[str, Any]:
        """Wait (10 s at most) until the session finished; its ``.status`` document."""
        with trio.fail_after(10):
            await session.wait_finished()
        doc: dict[str, Any] = json.loads(session.status_json())
        return doc


async def start(
    nursery: trio.Nursery,
    engine: FakeEngine,
    tmp_path: Path,
    cfg: Config,
    limit: int = 64 * MiB,
    *,
    journal: Journal | None = None,
    limits: EngineLimits | None = None,
) -> Harness:
    """A running manager; its restores are journaled in ``journal`` (default: one in
    ``tmp_path/state``, ``Harness.manager.journal``); ``limits``: the mount's (default: from
    ``cfg``)."""
    manager = RestoreManager(
        engine,
        cfg,
        errno_for=errno_for,
        opener=upload_opener(engine),
        staging=StagingArea(tmp_path, limit_bytes=limit),
        close_grace_s=0.01,
        journal=journal or Journal(tmp_path / "state" / "journal.json"),
        limits=limits,
    )
    await nursery.start(manager.run)
    return Harness(engine, manager)


def restored(engine: FakeEngine, vm_name: str) -> dict[str, str]:
    """disk alias -> sha256 of the disks of the VM called ``vm_name``."""
    vm = next(v for v in engine.vms.values() if v.name == vm_name)
    return {a.disk.alias: sha(engine.disk_bytes(a.disk.id)) for a in engine.attachments[vm.id]}


#: Engine polling for restores against the simulator: fast, bounded.
SIM_POLL = RetryPolicy.for_polling(interval_s=0.05, max_interval_s=0.2, timeout_s=60.0)


@contextlib.asynccontextmanager
async def sim_restore_manager(
    sim: Any, tmp_path: Path, *, limits: EngineLimits | None = None
) -> AsyncIterator[tuple[Engine, RestoreManager]]:
    """A running, journaled restore manager on the simulator's engine (the real facade);
    ``limits``: the mount's (default: from the config)."""
    config = load_config(
        section=sim.section,
        config_file=sim.conf_file,
        overrides={"system_interval": 0.2, "system_timeout": 60.0},
    )
    async with open_engine(config, poll=SIM_POLL) as engine:
        manager = RestoreManager(
            engine,
            config,
            errno_for=errno_for,
            staging=StagingArea(tmp_path / "staging", limit_bytes=64 * MiB),
            journal=Journal(tmp_path / "state" / "journal.json"),
            limits=limits,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            try:
                yield engine, manager
            finally:
                nursery.cancel_scope.cancel()
