"""``SessionRegistry``: one live session per owner, closing ones waited for, handles, notes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from rhvfs.errors import SessionBroken, SessionClosed, SessionError
from rhvfs.sessions.core._lifecycle import SessionLifecycle
from rhvfs.sessions.core._model import Owner
from rhvfs.sessions.core._registry import MAX_NOTES, HandleTable, Notes, SessionRegistry
from tests.support.configs import make_config

OWNER = Owner("vm", "vm-1", "web01")


class Fake(SessionLifecycle):
    """Starts in 1 s (or breaks), cleans up in 2 s; tells the registry when it has closed."""

    def __init__(self, registry: SessionRegistry[Fake], kind: str, *, broken: bool = False):
        super().__init__(OWNER, config=make_config())
        self.registry = registry
        self.kind = kind
        self.session_id = kind
        self.handles: set[int] = set()
        self.broken = broken
        self.cleaned = False

    async def _start(self, nursery: trio.Nursery) -> None:
        await trio.sleep(1)
        if self.broken:
            self.state, self.error = "broken", SessionBroken("no snapshot")
        else:
            self.state = "ready"
        self.ready.set()

    async def _cleanup(self) -> None:
        await trio.sleep(2)
        self.cleaned = True

    def _note_cleanup_error(self, message: str) -> None:
        raise AssertionError(message)

    def _on_closed(self) -> None:
        self.registry.forget(self)

    async def read(self, key: str, offset: int, size: int, *, handle_id: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return f"{key}@{offset}+{size} via {handle_id}".encode()

    def request_close(self) -> None:
        if self.state not in ("broken", "closed"):
            self.state = "closing"  # at once, as BackupSession does
        super().request_close()


@pytest.fixture
async def registry() -> AsyncIterator[SessionRegistry[Fake]]:
    reg: SessionRegistry[Fake] = SessionRegistry(what="the test manager")
    async with trio.open_nursery() as nursery:
        await nursery.start(reg.run)
        yield reg
        nursery.cancel_scope.cancel()


async def test_one_session_per_owner_and_a_closing_one_is_waited_for(
    registry: SessionRegistry[Fake], autojump_clock: trio.testing.MockClock
) -> None:
    made: list[Fake] = []

    def new() -> Fake:
        made.append(Fake(registry, f"s{len(made)}"))
        return made[-1]

    first = await registry.acquire(OWNER.id, new=new)
    assert await registry.acquire(OWNER.id, new=new) is first and registry.started == 1
    assert OWNER.id in registry and registry.sessions() == [first]
    first.request_close()
    second = await registry.acquire(OWNER.id, new=new)  # waits for the cleanup, then starts
    assert first.cleaned and first.state == "closed" and second is not first
    assert registry.get(OWNER.id) is second and registry.started == 2


async def test_a_broken_session_raises_its_error(
    registry: SessionRegistry[Fake], autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(SessionBroken):
        await registry.acquire(OWNER.id, new=lambda: Fake(registry, "b", broken=True))


async def test_an_unusable_session_makes_way_or_the_caller_gives_up(
    registry: SessionRegistry[Fake], autojump_clock: trio.testing.MockClock
) -> None:
    full = await registry.acquire(OWNER.id, new=lambda: Fake(registry, "full"))
    full.handles.add(1)  # being read: it does not make way

    def make_way(s: Fake) -> None:
        if not s.handles:
            s.request_close()

    def busy(s: Fake) -> Exception:
        return SessionError(f"{s.kind} still read")

    def want_incremental() -> Fake:
        return Fake(registry, "incremental")

    start = trio.current_time()
    with pytest.raises(SessionError, match="full still read"):
        await registry.acquire(
            OWNER.id,
            new=want_incremental,
            usable=lambda s: s.kind == "incremental",
            make_way=make_way,
            deadline=start + 30,
            busy=busy,
        )
    assert trio.current_time() - start == 30 and full.state == "ready"
    full.handles.clear()
    inc = await registry.acquire(
        OWNER.id,
        new=want_incremental,
        usable=lambda s: s.kind == "incremental",
        make_way=make_way,
        deadline=trio.current_time() + 30,
        busy=busy,
    )
    assert inc.kind == "incremental" and full.cleaned


async def test_handles_of_a_closed_session_are_dropped(
    registry: SessionRegistry[Fake], autojump_clock: trio.testing.MockClock
) -> None:
    session = await registry.acquire(OWNER.id, new=lambda: Fake(registry, "a"))
    h1 = registry.handles.add((session, "disk:1"))
    h2 = registry.handles.add((session, "disk:2"))
    assert h2 == h1 + 1 and registry.handles.get(h1) == (session, "disk:1")
    assert await registry.read(h2, 4096, 512) == f"disk:2@4096+512 via {h2}".encode()
    await registry.aclose_all()
    assert len(registry.handles) == 0 and registry.get(OWNER.id) is None
    with pytest.raises(SessionClosed, match=f"handle {h2} is not open"):
        await registry.read(h2, 0, 1)


async def test_not_running_refuses_new_sessions() -> None:
    reg: SessionRegistry[Fake] = SessionRegistry(what="the test manager")
    with pytest.raises(SessionError, match="the test manager is not running"):
        await reg.acquire(OWNER.id, new=lambda: Fake(reg, "a"))


def test_handle_table_and_notes() -> None:
    table: HandleTable[str] = HandleTable()
    a, b = table.add("a"), table.add("b")
    assert (a, b) == (1, 2) and table.pop(a) == "a" and table.pop(a) is None
    assert table.add("c") == 3  # ids are never reused
    notes = Notes()
    for i in range(MAX_NOTES + 5):
        notes.add(OWNER if i % 2 else None, f"m{i}")
    listed = notes.list()
    assert len(listed) == MAX_NOTES and listed[-1]["message"] == f"m{MAX_NOTES + 4}"
    assert set(listed[-1]) == {"time", "owner", "message"} and listed[-1]["owner"] is None
    notes.add(OWNER, "careful", level="warning")
    assert list(notes.list()[-1]) == ["time", "owner", "level", "message"]
