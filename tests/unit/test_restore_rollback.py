"""``roll_back`` around an overwrite's point of no return, against the fake engine."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from rhvfs.engine.types import Vm
from rhvfs.errors import EngineUnavailable
from rhvfs.sessions.restore._rollback import Created, roll_back
from tests.support.fake_engine import FakeEngine


def engine_with(original_status: str | None, new_status: str = "down") -> FakeEngine:
    engine = FakeEngine()
    if original_status is not None:
        engine.vms["orig"] = Vm(id="orig", name="myvm", status=original_status)
    engine.vms["new"] = Vm(id="new", name="myvm-rhvfs-restore-1", status=new_status)
    return engine


async def run(engine: FakeEngine, created: Created) -> list[str]:
    notes: list[str] = []
    with trio.CancelScope(shield=True):
        await roll_back(engine, created, notes.append)
    return notes


async def test_before_the_removal_the_new_vm_goes_and_a_running_one_is_stopped_first(
    autojump_clock: MockClock,
) -> None:
    engine = engine_with("down", new_status="up")
    notes = await run(engine, Created(vm="new", replaces="orig"))
    assert set(engine.vms) == {"orig"}
    assert engine.calls.count("stop_vm") == 1
    assert notes == ["rolled back: stopped vm new", "rolled back: removed vm new"]


async def test_the_replaced_vm_gone_means_past_the_point_of_no_return(
    autojump_clock: MockClock,
) -> None:
    engine = engine_with(None)
    created = Created(vm="new", template="tpl", replaces="orig")
    notes = await run(engine, created)
    assert set(engine.vms) == {"new"} and created.committed
    assert "remove_vm" not in engine.calls and "remove_template" not in engine.calls
    assert "keeping the new one" in notes[0]


async def test_a_replaced_vm_being_removed_or_not_answering_keeps_everything(
    autojump_clock: MockClock,
) -> None:
    engine = engine_with("image_locked")
    notes = await run(engine, Created(vm="new", replaces="orig"))
    assert set(engine.vms) == {"orig", "new"} and "being removed" in notes[0]

    engine = engine_with("down")

    async def unavailable(vm_id: str) -> Vm:
        raise EngineUnavailable("engine down")

    engine.get_vm = unavailable  # type: ignore[method-assign]
    notes = await run(engine, Created(vm="new", replaces="orig"))
    assert set(engine.vms) == {"orig", "new"} and "cannot tell" in notes[0]


async def test_committed_removes_nothing(autojump_clock: MockClock) -> None:
    engine = engine_with(None)
    notes = await run(engine, Created(vm="new", template="tpl", disks=["d"], committed=True))
    assert notes == [] and engine.calls == [] and set(engine.vms) == {"new"}
