"""``EngineEvents``: queued, posted in the background, off when configured off, and a
refusing engine costs one warning, never an exception."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from rhvfs.config import load_config
from rhvfs.errors import EngineError
from rhvfs.sessions.core import EngineEvents


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.events: list[dict[str, object]] = []

    async def add_event(self, **kw: object) -> None:
        if self.fail:
            raise EngineError("refused", code=400)
        self.events.append(kw)


async def test_events_are_posted_in_order_with_unique_custom_ids(nursery: trio.Nursery) -> None:
    engine = Recorder()
    events = EngineEvents(engine)
    await nursery.start(events.run)
    events.post("started", vm_id="v1")
    events.post("failed", severity="error")
    await trio.testing.wait_all_tasks_blocked()
    assert [(e["description"], e["severity"], e["vm_id"]) for e in engine.events] == [
        ("started", "normal", "v1"),
        ("failed", "error", None),
    ]
    assert {e["origin"] for e in engine.events} == {"rhvfs"}
    ids = [e["custom_id"] for e in engine.events]
    assert len(set(ids)) == 2 and all(isinstance(i, int) and 0 < i < 2**31 for i in ids)
    assert events.status()["posted"] == 2


async def test_switched_off_posts_nothing(nursery: trio.Nursery) -> None:
    engine = Recorder()
    events = EngineEvents(engine, enabled=False)
    await nursery.start(events.run)
    events.post("started")
    await trio.testing.wait_all_tasks_blocked()
    assert engine.events == [] and events.status()["enabled"] is False


@pytest.mark.allow_log("rhvfs.sessions.core._events", "WARNING", match="refused")
async def test_a_refusing_engine_warns_once(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    events = EngineEvents(Recorder(fail=True))
    await nursery.start(events.run)
    for i in range(3):
        events.post(f"event {i}")
    await trio.testing.wait_all_tasks_blocked()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert events.status()["failed"] == 3 and events.status()["last_error"]


class Hanging(Recorder):
    """An engine that never answers the ``hang_from``-th post and after (an engine gone
    away, with a long request timeout)."""

    def __init__(self, hang_from: int) -> None:
        super().__init__()
        self.hang_from = hang_from

    async def add_event(self, **kw: object) -> None:
        if len(self.events) + 1 >= self.hang_from:
            await trio.sleep_forever()
        await super().add_event(**kw)


async def test_events_queued_right_before_the_mount_stops_are_posted() -> None:
    engine = Recorder()
    events = EngineEvents(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run)
        events.post("restore of r1 finished")
        events.post("backup of VM v1 finished", vm_id="v1")
        assert await events.drain(timeout_s=5) == 0  # nothing dropped
        nursery.cancel_scope.cancel()
    assert [e["description"] for e in engine.events] == [
        "restore of r1 finished",
        "backup of VM v1 finished",
    ]
    assert events.status()["posted"] == 2 and events.status()["dropped"] == 0
    events.post("too late")  # after the drain: dropped, never queued
    assert events.status()["dropped"] == 1 and len(engine.events) == 2


async def test_drain_posts_even_when_run_was_cancelled_first() -> None:
    """A mount cancelled from outside stops ``run`` before the drain: the drain posts."""
    engine = Recorder()
    events = EngineEvents(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run)
        nursery.cancel_scope.cancel()
    events.post("backup of VM v1 failed", severity="error")
    assert await events.drain(timeout_s=5) == 0
    assert [(e["description"], e["severity"]) for e in engine.events] == [
        ("backup of VM v1 failed", "error")
    ]


@pytest.mark.allow_log("rhvfs.sessions.core._events", "WARNING", match="3 not posted")
async def test_drain_is_bounded_and_says_how_many_it_dropped(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Hanging(hang_from=2)
    events = EngineEvents(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run)
        for i in range(4):
            events.post(f"event {i}")
        assert await events.drain(timeout_s=3) == 3  # one hanging post, two still queued
        nursery.cancel_scope.cancel()
    assert [e["description"] for e in engine.events] == ["event 0"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["engine events: 3 not posted within 3s of the mount stopping, dropped"]
    assert events.status()["dropped"] == 3


def test_engine_events_config_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "c.conf"
    conf.write_text("[s]\nengine_url = https://e\nusername = u\npassword = p\n")
    assert load_config(section="s", config_file=conf).engine_events is True
    conf.write_text(conf.read_text() + "engine_events = no\n")
    assert load_config(section="s", config_file=conf).engine_events is False
