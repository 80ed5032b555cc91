"""``rhvfs.sessions.core._cleanup``: the one retry rule for snapshots, transfers and backups."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from rhvfs.engine.types import Snapshot
from rhvfs.errors import Conflict, EngineError, EngineUnavailable, NotFound
from rhvfs.sessions.core._cleanup import (
    cancel_transfer,
    finalize_backup,
    find_snapshot,
    finish_transfer,
    remove_snapshot,
)
from tests.support.configs import make_config


class Scripted:
    """An engine whose calls fail with the scripted errors, then succeed; records call times."""

    def __init__(self, errors: list[EngineError]) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[str, float]] = []
        self.snapshots = [Snapshot(id="s1", description="rhvfs-session abc")]

    async def _call(self, name: str) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append((name, trio.current_time()))
        if self.errors:
            raise self.errors.pop(0)

    async def list_snapshots(self, vm_id: str) -> list[Snapshot]:
        await trio.lowlevel.checkpoint()
        return list(self.snapshots)

    async def remove_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        await self._call(f"remove {snapshot_id}")

    async def finalize_backup(self, vm_id: str, backup_id: str) -> None:
        await self._call("finalize_backup")

    async def finalize_transfer(self, transfer_id: str) -> None:
        await self._call("finalize_transfer")

    async def cancel_transfer(self, transfer_id: str) -> None:
        await self._call("cancel_transfer")


CONFIG = make_config(system_interval=1.0, system_timeout=30.0)


async def test_locked_and_transient_are_retried_with_doubling_pauses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    eng = Scripted([Conflict("locked"), EngineUnavailable("503"), Conflict("locked")])
    assert await remove_snapshot(eng, "vm", "s1", config=CONFIG) is True
    times = [t for _, t in eng.calls]
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [1.0, 2.0, 4.0]


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
async def test_busy_until_the_deadline_raises_the_last_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    eng = Scripted([Conflict("busy")] * 100)
    start = trio.current_time()
    with pytest.raises(Conflict):
        await finalize_backup(eng, "vm", "b1", config=CONFIG)
    # pauses 1+2+4+8+10 = 25 s; the next (10 s) would end past 30 s: no attempt started
    assert len(eng.calls) == 6 and trio.current_time() - start == 25.0


async def test_not_found_is_done_and_other_errors_are_final(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert await remove_snapshot(Scripted([NotFound("s1")]), "vm", "s1", config=CONFIG) is False
    assert await finalize_backup(Scripted([NotFound("b")]), "vm", "b", config=CONFIG) is False
    refused = Scripted([EngineError("bad request", code=400)])
    with pytest.raises(EngineError):
        await remove_snapshot(refused, "vm", "s1", config=CONFIG)
    assert len(refused.calls) == 1


async def test_a_snapshot_without_id_is_found_by_its_description(
    autojump_clock: trio.testing.MockClock,
) -> None:
    eng = Scripted([])
    assert await find_snapshot(eng, "vm", description="rhvfs-session abc") == eng.snapshots[0]
    assert await find_snapshot(eng, "vm", snapshot_id="nope") is None
    assert await remove_snapshot(eng, "vm", None, description="other", config=CONFIG) is False
    assert eng.calls == []
    assert await remove_snapshot(eng, "vm", None, description="rhvfs-session abc", config=CONFIG)
    assert [c for c, _ in eng.calls] == ["remove s1"]


@pytest.mark.allow_log("rhvfs.sessions.core._cleanup", "WARNING", match="cancelling it")
async def test_a_transfer_that_does_not_finalize_is_cancelled() -> None:
    eng = Scripted([EngineError("finished_failure")])
    assert await finish_transfer(eng, "t1") is True
    assert [c for c, _ in eng.calls] == ["finalize_transfer", "cancel_transfer"]
    assert await finish_transfer(Scripted([NotFound("t1")]), "t1") is False
    assert await cancel_transfer(Scripted([NotFound("t1")]), "t1") is False
    with pytest.raises(EngineError):
        await cancel_transfer(Scripted([EngineError("refused")]), "t1")
