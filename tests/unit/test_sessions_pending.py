"""A live mount's failed cleanups: retried in the background with backoff until they succeed
(``rhvfs.sessions.core._pending``), on MockClock so the schedules are exact."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from rhvfs.errors import Conflict, EngineError, EngineUnavailable
from rhvfs.retry import RetryPolicy
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._journal import Journal, JournalEntry
from rhvfs.sessions.core._pending import (
    MAX_RETRY_INTERVAL_S,
    CleanupStep,
    PendingCleanups,
    attempt_timeout_s,
    retry_policy,
)
from tests.support.configs import make_config

#: No jitter: the schedule is exact.
EXACT = RetryPolicy(tries=None, interval_s=1.0, max_interval_s=8.0, timeout_s=math.inf)


class Flaky:
    """An action that fails ``failures`` times, then succeeds; records when it ran."""

    def __init__(self, failures: int, error: EngineError | None = None) -> None:
        self.failures = failures
        self.error = error or EngineUnavailable("engine says 503")
        self.calls: list[float] = []

    async def __call__(self) -> None:
        self.calls.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if len(self.calls) <= self.failures:
            raise self.error


def journal_with(tmp_path: Path, session_id: str, *transfers: str) -> Journal:
    journal = Journal(tmp_path / "journal.json")
    journal.put(
        JournalEntry(
            session_id=session_id,
            process=procid.current(),
            owner_kind="vm",
            owner_id="vm-1",
            owner_name="web01",
            started="2026-01-01T00:00:00+00:00",
            snapshot_description="d",
            snapshot_id="snap-1",
            transfer_ids=transfers,
        )
    )
    return journal


async def test_retries_with_backoff_until_it_succeeds(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    journal = journal_with(tmp_path, "s1")
    pending = PendingCleanups(make_config(), journal=journal, policy=EXACT)
    action = Flaky(failures=5)
    done: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(pending.run)
        start = trio.current_time()
        step = CleanupStep("snapshot", "snap-1", "vm-1", action, on_done=lambda: done.append("x"))
        pending.add("s1", "s1 of web01", [step], error="cleanup failed")
        await trio.sleep(0.5)
        (listed,) = pending.status()
        assert listed == {
            "kind": "snapshot",
            "id": "snap-1",
            "vm_id": "vm-1",
            "session": "s1 of web01",
            "session_id": "s1",
            "since": listed["since"],
            "attempts": 0,
            "last_error": "cleanup failed",
            "next_attempt_in_s": 0.5,
        }
        await trio.sleep(9.5)  # tries at +1, +3, +7, +15 (capped pauses: 1, 2, 4, 8, 8)
        (listed,) = pending.status()
        assert listed["attempts"] == 3
        assert listed["last_error"] == f"snapshot snap-1 of VM vm-1: {action.error}"
        assert listed["next_attempt_in_s"] == 5.0
        assert [e.session_id for e in journal.entries()] == ["s1"]  # kept while pending
        await trio.sleep(30)
        assert [t - start for t in action.calls] == [1.0, 3.0, 7.0, 15.0, 23.0, 31.0]
        assert pending.status() == [] and len(pending) == 0
        assert done == ["x"]
        assert journal.entries() == []
        assert pending.completed == 1
        nursery.cancel_scope.cancel()


async def test_the_default_policy_never_gives_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Any engine error, for hours: the pause grows to 10 minutes and the retries go on."""
    config = make_config(system_interval=0.5)
    policy = retry_policy(config)
    assert (policy.tries, policy.interval_s, policy.max_interval_s) == (None, 1.0, 600.0)
    assert policy.timeout_s == math.inf and 0 < policy.jitter <= 0.1
    pending = PendingCleanups(config, journal=journal_with(tmp_path, "s1"))
    action = Flaky(failures=30, error=EngineError("refused", code=400))
    async with trio.open_nursery() as nursery:
        await nursery.start(pending.run)
        pending.add("s1", "s1", [CleanupStep("backup", "b-1", "vm-1", action)])
        await trio.sleep(6 * 3600)
        assert len(action.calls) == 31 and pending.status() == []
        gaps = [b - a for a, b in zip(action.calls, action.calls[1:], strict=False)]
        assert all(g <= MAX_RETRY_INTERVAL_S for g in gaps)
        assert gaps[-1] > 0.9 * MAX_RETRY_INTERVAL_S  # the cap was reached
        assert all(b >= a * 0.9 for a, b in zip(gaps, gaps[1:], strict=False))  # growing
        nursery.cancel_scope.cancel()


async def test_steps_run_in_order_and_done_ones_are_not_repeated(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    journal = journal_with(tmp_path, "s1", "t-1", "t-2")
    pending = PendingCleanups(make_config(), journal=journal, policy=EXACT)
    t1, t2 = Flaky(failures=0), Flaky(failures=2, error=Conflict("disk locked"))
    snap = Flaky(failures=1)
    steps = [
        CleanupStep(
            "transfer", "t-1", None, t1, on_done=lambda: journal.remove_transfer("s1", "t-1")
        ),
        CleanupStep(
            "transfer", "t-2", None, t2, on_done=lambda: journal.remove_transfer("s1", "t-2")
        ),
        CleanupStep("snapshot", "snap-1", "vm-1", snap),
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(pending.run)
        pending.add("s1", "s1", steps)
        await trio.sleep(3.5)  # tries at +1 and +3
        assert len(t1.calls) == 1 and len(t2.calls) == 2 and snap.calls == []
        assert [s["id"] for s in pending.status()] == ["t-2", "snap-1"]
        assert [e.transfer_ids for e in journal.entries()] == [("t-2",)]
        await trio.sleep(12)  # +7: t-2 ends, the snapshot fails; +15: the snapshot ends
        assert len(t1.calls) == 1 and len(t2.calls) == 3 and len(snap.calls) == 2
        assert journal.entries() == [] and pending.status() == []
        nursery.cancel_scope.cancel()


async def test_an_attempt_without_an_answer_ends_and_is_retried(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(system_timeout=30.0)
    pending = PendingCleanups(config, journal=journal_with(tmp_path, "s1"), policy=EXACT)
    calls: list[float] = []

    async def hangs_once() -> None:
        calls.append(trio.current_time())
        if len(calls) == 1:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(pending.run)
        start = trio.current_time()
        pending.add("s1", "s1", [CleanupStep("transfer", "t-1", None, hangs_once)])
        await trio.sleep(1 + attempt_timeout_s(config) + 0.5)
        (listed,) = pending.status()
        assert listed["last_error"] == "transfer t-1: no answer within 60s"
        await trio.sleep(5)
        assert [t - start for t in calls] == [1.0, 1.0 + 60.0 + 2.0]
        assert pending.status() == []
        nursery.cancel_scope.cancel()


@pytest.mark.allow_log("rhvfs.sessions.core._pending", "WARNING", match="rhvfs gc")
async def test_the_end_of_the_mount_tries_once_more_then_leaves_it_to_gc(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    journal = journal_with(tmp_path, "s1")
    journal.put(
        JournalEntry(
            session_id="s2",
            process=procid.current(),
            owner_kind="vm",
            owner_id="vm-2",
            owner_name="db01",
            started="2026-01-01T00:00:00+00:00",
        )
    )
    pending = PendingCleanups(make_config(), journal=journal, policy=EXACT)
    ok, broken = Flaky(failures=1), Flaky(failures=99)
    async with trio.open_nursery() as nursery:
        await nursery.start(pending.run)
        pending.add("s1", "s1 of web01", [CleanupStep("snapshot", "snap-1", "vm-1", ok)])
        pending.add("s2", "s2 of db01", [CleanupStep("snapshot", "snap-2", "vm-2", broken)])
        await trio.sleep(1.5)  # one background try each, both failed
        nursery.cancel_scope.cancel()
    with trio.CancelScope() as outer:
        outer.cancel()  # flush is shielded: it runs even in a cancelled scope
        await pending.flush()
    assert len(ok.calls) == 2 and len(broken.calls) == 2
    assert [e.session_id for e in journal.entries()] == ["s2"]  # for the next mount's gc
    assert [s["id"] for s in pending.status()] == ["snap-2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "cleanup of session s2 of db01 not finished when the mount ended "
        f"(snapshot snap-2 of VM vm-2: {broken.error}): left snapshot snap-2 of VM vm-2; "
        "the next mount or `rhvfs gc` removes it"
    ]


async def test_added_before_the_service_runs_is_retried_once_it_does(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    pending = PendingCleanups(make_config(), journal=journal_with(tmp_path, "s1"), policy=EXACT)
    action = Flaky(failures=0)
    pending.add("s1", "s1", [CleanupStep("snapshot", "snap-1", "vm-1", action)])
    assert len(pending.status()) == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(pending.run)
        await trio.sleep(2)
        assert len(action.calls) == 1 and pending.status() == []
        nursery.cancel_scope.cancel()


def test_status_outside_trio_has_no_countdown(tmp_path: Path) -> None:
    pending = PendingCleanups(make_config(), journal=journal_with(tmp_path, "s1"), policy=EXACT)

    async def nothing() -> Any:
        return None

    pending.add("s1", "s1", [CleanupStep("snapshot", None, "vm-1", nothing)])
    (listed,) = pending.status()
    assert listed["id"] is None and listed["next_attempt_in_s"] is None
