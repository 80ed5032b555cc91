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


def test_engine_events_config_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "c.conf"
    conf.write_text("[s]\nengine_url = https://e\nusername = u\npassword = p\n")
    assert load_config(section="s", config_file=conf).engine_events is True
    conf.write_text(conf.read_text() + "engine_events = no\n")
    assert load_config(section="s", config_file=conf).engine_events is False
