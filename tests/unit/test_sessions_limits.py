"""Mount-wide limits on sessions and transfers: the ``Limiter`` alone, then a ``BackupManager``
on a fake engine reading many VMs at once (MockClock: timers run instantly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rhvfs.backupset import DiskKey, SetKind
from rhvfs.errors import ConfigError, PointInTimeLost
from rhvfs.sessions import BackupManager, Journal, Owner
from rhvfs.sessions._router import SetRouter
from rhvfs.sessions.core import EngineLimits, Limiter
from rhvfs.sessions.incremental import IncrementalManager
from rhvfs.sessions.incremental._chainstate import ChainState
from tests.support.configs import make_config
from tests.support.data import MiB, sha
from tests.support.fake_dataplane import FakeDataPlane
from tests.support.fake_engine import ENGINE_LIKE, FakeEngine
from tests.support.incremental_rig import Rig as IncrementalRig
from tests.support.incremental_rig import new_vm

# -- the limiter ------------------------------------------------------------------------


async def test_requests_beyond_the_limit_wait_in_order() -> None:
    lim = Limiter(what="sessions", limit=2)
    a, b, c, d = (lim.request({"n": n}) for n in "abcd")
    assert [s.state for s in (a, b, c, d)] == ["held", "held", "queued", "queued"]
    assert (c.position, d.position) == (1, 2)
    assert [q["n"] for q in lim.queued()] == ["c", "d"]
    assert [q["position"] for q in lim.queued()] == [1, 2]
    b.release()
    assert (c.state, d.state, d.position) == ("held", "queued", 1)
    b.release()  # idempotent: frees nothing more
    assert d.state == "queued" and lim.in_use == 2
    a.release()
    assert d.state == "held"
    assert lim.status() == {
        "limit": 2,
        "in_use": 2,
        "queued": 0,
        "peak": 2,
        "granted": 4,
        "waited": 2,
        "longest_wait_s": lim.status()["longest_wait_s"],
    }


async def test_a_cancelled_wait_leaves_the_queue() -> None:
    lim = Limiter(what="transfers", limit=1)
    first = lim.request({"n": 1})
    with trio.move_on_after(0.01):
        await lim.acquire({"n": 2})
    later = lim.request({"n": 3})
    assert later.position == 1
    first.release()
    assert later.state == "held"


async def test_a_group_request_is_clamped_and_served_in_order() -> None:
    lim = Limiter(what="transfers", limit=3)
    one = lim.request({"n": 1})
    group = lim.request({"n": 2}, count=5)  # more than the limit: needs all three
    small = lim.request({"n": 3})  # fits, but waits behind the group (first come, first served)
    assert (group.count, group.state, small.state) == (3, "queued", "queued")
    one.release()
    assert (group.state, small.state, lim.in_use) == ("held", "queued", 3)
    group.release()
    assert small.state == "held"


async def test_zero_is_unlimited() -> None:
    lim = Limiter(what="sessions", limit=0)
    slots = [lim.request({}) for _ in range(50)]
    assert all(s.state == "held" for s in slots) and lim.peak == 50
    with pytest.raises(ValueError):
        Limiter(what="sessions", limit=-1)


async def test_idle_holders_give_way_to_a_waiter_once_oldest_first() -> None:
    lim = Limiter(what="transfers", limit=2)
    a, b = lim.request({"n": "a"}), lim.request({"n": "b"})
    asked: list[str] = []
    a.idle(lambda: asked.append("a"))
    b.idle(lambda: asked.append("b"))
    assert asked == []  # nobody waits: idle holders keep their places
    c = lim.request({"n": "c"})
    assert asked == ["a"] and c.state == "queued"
    d = lim.request({"n": "d"})
    assert asked == ["a", "b"]
    a.release()
    assert c.state == "held"
    b.busy()  # in use again before it gave way: it keeps its place; d waits for it
    b.release()
    assert d.state == "held"
    assert asked == ["a", "b"]


async def test_a_kept_holder_no_longer_counts_as_giving_way() -> None:
    lim = Limiter(what="sessions", limit=2)
    a, b = lim.request({"n": "a"}), lim.request({"n": "b"})
    asked: list[str] = []
    a.idle(lambda: asked.append("a"))
    c = lim.request({"n": "c"})
    b.idle(lambda: asked.append("b"))
    assert asked == ["a"]  # a's place is coming: b is not asked yet
    a.keep()  # a closed, but what it created stays on the engine a while: it keeps its place
    assert asked == ["a", "b"]
    b.release()
    assert c.state == "held" and a.state == "held"


async def test_engine_limits_come_from_the_config() -> None:
    limits = EngineLimits.from_config(make_config(max_sessions=3, max_transfers=0))
    assert (limits.sessions.limit, limits.transfers.limit) == (3, 0)
    s = limits.sessions
    for _ in range(4):
        s.request({"owner": "x"})
    status = limits.status()
    assert status["limits"]["sessions"]["queued"] == 1
    assert status["queued"] == [
        {
            "waits_for": "session",
            "owner": "x",
            "state": "queued",
            "count": 1,
            "position": 1,
            "since": status["queued"][0]["since"],
        }
    ]


def test_limits_are_config_keys() -> None:
    from rhvfs.config import load_config

    cfg = load_config(
        overrides={
            "engine_url": "https://e.example",
            "username": "u",
            "password": "p",
            "max_sessions": "2",
            "max_transfers": "5",
        }
    )
    assert (cfg.max_sessions, cfg.max_transfers) == (2, 5)
    assert (make_config().max_sessions, make_config().max_transfers) == (4, 16)
    with pytest.raises(ConfigError, match="max_sessions"):
        load_config(
            overrides={
                "engine_url": "https://e",
                "username": "u",
                "password": "p",
                "max_sessions": "-1",
            }
        )


# -- a manager under the limits ---------------------------------------------------------


class Rig:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.engine = FakeEngine(latency=ENGINE_LIKE)
        self.plane = FakeDataPlane(self.engine)
        self.config = make_config(**config)
        self.manager = BackupManager(
            self.engine,
            self.config,
            journal=Journal(tmp_path / "journal.json"),
            imageio_opener=self.plane.opener,
            reader_factory=self.plane.reader_factory,
            gc_on_start=False,
        )
        self.peak_snapshots = 0
        self.peak_transfers = 0
        create, start = self.engine.create_snapshot, self.engine.start_transfer

        async def create_snapshot(vm_id: str, **kw: Any) -> Any:
            snap = await create(vm_id, **kw)
            live = sum(len(self.engine.user_snapshots(v)) for v in self.engine.vms)
            self.peak_snapshots = max(self.peak_snapshots, live)
            return snap

        async def start_transfer(**kw: Any) -> Any:
            t = await start(**kw)
            self.peak_transfers = max(self.peak_transfers, len(self.engine.open_transfers()))
            return t

        self.engine.create_snapshot = create_snapshot  # type: ignore[method-assign]
        self.engine.start_transfer = start_transfer  # type: ignore[method-assign]

    async def read_disks(self, owner: Owner, disk_ids: list[str]) -> dict[str, str]:
        """Read each disk to its end, one after the other, as tar does."""
        out: dict[str, str] = {}
        handles = []
        for d in disk_ids:
            h = await self.manager.open(owner, DiskKey(d).encode())
            handles.append(h)
            data = bytearray()
            while chunk := await self.manager.read(h, len(data), 256 * 1024):
                data += chunk
            out[d] = sha(bytes(data))
            await self.manager.release(h)
        return out


async def run_rig(rig: Rig, body: Any) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.manager.run)
        await body()
        nursery.cancel_scope.cancel()


async def test_parallel_reads_of_many_vms_keep_to_max_sessions(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path, max_sessions=2, grace_period=1.0)
    eng = rig.engine
    vms = [eng.add_vm(f"vm{i:02}", disks=[("a", 1 * MiB), ("b", 2 * MiB)]) for i in range(8)]
    want = {
        vm.id: {d: sha(bytes(eng.volumes[eng.active[d]])) for d in eng.disk_ids(vm.id)}
        for vm in vms
    }
    got: dict[str, dict[str, str]] = {}
    seen_queued: list[dict[str, Any]] = []

    async def one(vm: Any) -> None:
        owner = Owner("vm", vm.id, vm.name)
        # a plain session closes after its grace period: its snapshot goes, its place frees
        got[vm.id] = await rig.read_disks(owner, eng.disk_ids(vm.id))

    async def watch() -> None:
        while True:
            status = rig.manager.status()
            seen_queued.extend(status["queued"])
            for s in status["sessions"]:
                if s["state"] == "queued":
                    assert s["queue_position"] >= 1
            assert status["limits"]["sessions"]["in_use"] <= 2
            await trio.sleep(0.05)

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as readers:
                for vm in vms:
                    readers.start_soon(one, vm)
            nursery.cancel_scope.cancel()

    await run_rig(rig, body)
    assert got == want
    assert rig.peak_snapshots == 2
    assert {q["waits_for"] for q in seen_queued} == {"session"}
    assert all(not eng.user_snapshots(vm.id) for vm in vms)
    limits = rig.manager.status()["limits"]["sessions"]
    assert (limits["peak"], limits["granted"], limits["in_use"]) == (2, 8, 0)
    assert limits["waited"] >= 6  # 8 readers, 2 places
    # every one that waited showed in status while it did (each waits a grace period at least)
    assert len({q["owner"]["name"] for q in seen_queued}) == limits["waited"]


async def test_a_disk_read_after_another_takes_the_transfer_the_first_left(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path, max_transfers=1)
    eng = rig.engine
    vm = eng.add_vm("web01", disks=[("a", 1 * MiB), ("b", 2 * MiB), ("c", 1 * MiB)])
    owner = Owner("vm", vm.id, vm.name)
    ids = eng.disk_ids(vm.id)
    want = {d: sha(bytes(eng.volumes[eng.active[d]])) for d in ids}
    got: dict[str, str] = {}

    async def body() -> None:
        # The tool keeps the configuration open (one read), the session lives throughout.
        hold = await rig.manager.open(owner, "config:vm.ovf")
        got.update(await rig.read_disks(owner, ids))
        await rig.manager.release(hold)

    await run_rig(rig, body)
    assert got == want
    assert rig.peak_transfers == 1
    assert eng.calls.count("start_transfer") == 3
    assert rig.manager.status()["limits"]["transfers"]["in_use"] == 0


async def test_a_queued_session_closed_before_its_turn_creates_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path, max_sessions=1)
    eng = rig.engine
    first, second = (eng.add_vm(n, disks=[("a", 1 * MiB)]) for n in ("one", "two"))

    async def body() -> None:
        h = await rig.manager.open(
            Owner("vm", first.id, "one"), DiskKey(eng.disk_ids(first.id)[0]).encode()
        )
        with trio.move_on_after(5):  # the reader gives up while queued
            await rig.manager.open(
                Owner("vm", second.id, "two"), DiskKey(eng.disk_ids(second.id)[0]).encode()
            )
        status = rig.manager.status()
        queued = [s for s in status["sessions"] if s["owner"]["name"] == "two"]
        assert [s["state"] for s in queued] == ["queued"]
        assert queued[0]["queue_position"] == 1
        assert eng.user_snapshots(second.id) == []
        await rig.manager.release(h)
        await trio.sleep(60)  # past the grace period: the first session ends, the second runs

    await run_rig(rig, body)
    assert eng.user_snapshots(first.id) == [] and eng.user_snapshots(second.id) == []


async def test_a_session_idle_past_its_park_time_gives_its_place_to_a_waiting_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path, max_sessions=1, grace_period=10.0, read_idle_limit=3600.0)
    eng = rig.engine
    a, b = (eng.add_vm(n, disks=[("a", 1 * MiB)]) for n in ("a", "b"))
    owner_a, owner_b = Owner("vm", a.id, "a"), Owner("vm", b.id, "b")
    key_a, key_b = (DiskKey(eng.disk_ids(v.id)[0]).encode() for v in (a, b))

    async def body() -> None:
        # A read of a's set that never completes (a tool excluded a file): its session
        # would live read_idle_limit; with b waiting it ends after grace_period.
        h = await rig.manager.open(owner_a, key_a, read_id="read-a")
        await rig.manager.read(h, 0, 4096)
        await rig.manager.release(h)
        started = trio.current_time()
        hb = await rig.manager.open(owner_b, key_b)
        waited = trio.current_time() - started
        assert 10.0 <= waited < 60.0
        assert eng.user_snapshots(a.id) == [] and len(eng.user_snapshots(b.id)) == 1
        with pytest.raises(PointInTimeLost):  # a's point in time is gone, never mixed
            await rig.manager.open(owner_a, key_a, read_id="read-a")
        await rig.manager.release(hb)

    await run_rig(rig, body)


def _record_snapshots(rig: Rig) -> list[str]:
    """The descriptions of the snapshots the engine creates from now on (they name the read)."""
    made: list[str] = []
    create = rig.engine.create_snapshot

    async def recording(vm_id: str, **kw: Any) -> Any:
        made.append(kw["description"])
        return await create(vm_id, **kw)

    rig.engine.create_snapshot = recording  # type: ignore[method-assign]
    return made


async def test_a_read_that_gave_its_place_away_never_gets_a_second_snapshot(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The next file of a read whose session is closing (it gave its place to a queued one)
    is refused: a new session under the same read would be another point in time, mixed
    into the read silently (it was, before: a second snapshot served the read)."""
    rig = Rig(tmp_path, max_sessions=1, grace_period=10.0, read_idle_limit=3600.0)
    eng = rig.engine
    a = eng.add_vm("a", disks=[("a", 1 * MiB), ("b", 1 * MiB)])
    b = eng.add_vm("b", disks=[("a", 1 * MiB)])
    owner_a, owner_b = Owner("vm", a.id, "a"), Owner("vm", b.id, "b")
    first, second = (DiskKey(d).encode() for d in eng.disk_ids(a.id))
    key_b = DiskKey(eng.disk_ids(b.id)[0]).encode()
    made = _record_snapshots(rig)

    async def body() -> None:
        h = await rig.manager.open(owner_a, first, read_id="read-a")
        await rig.manager.read(h, 0, 4096)
        await rig.manager.release(h)
        session = rig.manager._sessions.get(a.id)
        assert session is not None
        async with trio.open_nursery() as nursery:

            async def read_b() -> None:
                hb = await rig.manager.open(owner_b, key_b)
                await rig.manager.release(hb)

            nursery.start_soon(read_b)
            await session._close_requested.wait()  # a's park time passed with b waiting
            assert session.state == "closing"  # its cleanup runs: not closed yet
            with pytest.raises(PointInTimeLost, match="read-a"):
                await rig.manager.open(owner_a, second, read_id="read-a")
        assert rig.manager.read_lost("read-a") is not None

    await run_rig(rig, body)
    assert [d.split()[1] for d in made if "read-a" in d] == ["read-a"]  # one point in time
    assert eng.user_snapshots(a.id) == [] and eng.user_snapshots(b.id) == []


@pytest.mark.allow_log("rhvfs.sessions._router", "WARNING", match="refused .* run the backup again")
async def test_after_a_read_gave_its_place_away_its_tool_gets_estale_and_the_next_run_a_new_read(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Through the router, with real reader processes: a tool that pauses between two images
    longer than grace_period while another VM waits loses its read (README "Engine load"):
    its next image is refused, never served from another point in time. Another process
    reading the set afterwards is not that tool: it begins a new read and is served."""
    import os

    from rhvfs.sessions.incremental._chainstate import ChainState

    rig = Rig(tmp_path, max_sessions=1, grace_period=10.0, read_idle_limit=3600.0)
    eng = rig.engine
    incremental = IncrementalManager(
        eng,
        rig.config,
        chain=ChainState(tmp_path / "chain.json"),
        journal=rig.manager.journal,
        imageio_opener=rig.plane.opener,
        reader_factory=rig.plane.reader_factory,
        cleanup_on_start=False,
        limits=rig.manager.limits,
    )
    router = SetRouter(rig.manager, incremental, config=rig.config)
    a = eng.add_vm("a", disks=[("a", 1 * MiB), ("b", 1 * MiB)])
    b = eng.add_vm("b", disks=[("a", 1 * MiB)])
    owner_a, owner_b = Owner("vm", a.id, "a"), Owner("vm", b.id, "b")
    tool, next_run = os.getpid(), os.getppid()  # two live processes
    want = {d: sha(bytes(eng.volumes[eng.active[d]])) for d in eng.disk_ids(a.id)}
    made = _record_snapshots(rig)

    async def copy(owner: Owner, name: str, pid: int) -> str:
        entries = {e.name: e for e in await router.list_set(owner)}
        h = await router.open(owner, entries[name].key, reader_pid=pid)
        data = bytearray()
        while chunk := await router.read(h, len(data), 256 * 1024):
            data += chunk
        await router.release(h)
        return sha(bytes(data))

    async def body() -> None:
        names = sorted(e.name for e in await router.list_set(owner_a) if e.disk_id)
        b_names = [e.name for e in await router.list_set(owner_b) if e.disk_id]
        got = {}
        for name in ("vm.ovf", "vm.xml", "manifest.json"):
            await copy(owner_a, name, tool)
        got[names[0]] = await copy(owner_a, names[0], tool)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, owner_b, b_names[0], next_run)  # waits for a's place
            await trio.sleep(60)  # the tool pauses past grace_period: a gives way to b
        assert eng.user_snapshots(a.id) == []
        # Another process reading a's set now is the next run, not the paused tool: it
        # begins a new read, also with a file the lost read never served (it joined the
        # lost read before, and got ESTALE) ...
        for name in reversed(names):
            got[name] = await copy(owner_a, name, next_run)
        for name in ("vm.ovf", "vm.xml", "manifest.json"):
            await copy(owner_a, name, next_run)
        entries = {e.name: e for e in await router.list_set(owner_a)}
        assert {entries[n].disk_id: got[n] for n in names} == want
        reads_of_a = [r for r in router.status()["reads"] if r["owner"]["name"] == "a"]
        assert reads_of_a == []  # the new read completed: it ended with its last file
        # ... and the paused tool's next image is refused: its point in time is gone.
        with pytest.raises(PointInTimeLost, match="run the backup again"):
            await copy(owner_a, names[1], tool)

    await run_rig(rig, body)
    assert eng.user_snapshots(a.id) == [] and eng.user_snapshots(b.id) == []
    assert len(made) == 3  # a's first read, b, a's new read: never a second one for a read


async def test_engine_backup_sets_share_the_limits(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Incremental sets of three VMs listed at once under max_sessions 1, max_transfers 2:
    one engine backup at a time, its two disks' transfers taken together."""
    rig = IncrementalRig(tmp_path)
    limits = EngineLimits(
        sessions=Limiter(what="sessions", limit=1), transfers=Limiter(what="transfers", limit=2)
    )
    rig.manager = IncrementalManager(
        rig.engine,
        rig.config,
        chain=rig.chain,
        journal=rig.journal,
        imageio_opener=rig.plane.opener,
        reader_factory=rig.plane.reader_factory,
        cleanup_on_start=False,
        limits=limits,
    )
    rig.router = SetRouter(rig.full, rig.manager, config=rig.config)
    owners = [new_vm(rig.engine) for _ in range(3)]
    peaks = {"backups": 0, "transfers": 0}
    start_backup, start_transfer = rig.engine.start_backup, rig.engine.start_transfer

    async def counting_backup(*args: Any, **kw: Any) -> Any:
        backup = await start_backup(*args, **kw)
        live = [b for b in rig.engine.backups.values() if b.phase == "ready"]
        peaks["backups"] = max(peaks["backups"], len(live))
        return backup

    async def counting_transfer(**kw: Any) -> Any:
        t = await start_transfer(**kw)
        peaks["transfers"] = max(peaks["transfers"], len(rig.engine.open_transfers()))
        return t

    rig.engine.start_backup = counting_backup  # type: ignore[method-assign]
    rig.engine.start_transfer = counting_transfer  # type: ignore[method-assign]
    read: dict[str, int] = {}

    async def one(owner: Owner) -> None:
        entries = await rig.read_set(owner, SetKind.INCREMENTAL)  # asserts every size
        read[owner.id] = sum(e.size for e in entries if e.disk_id)

    async with trio.open_nursery() as nursery:
        await nursery.start(rig.manager.run)
        async with trio.open_nursery() as readers:
            for owner in owners:
                readers.start_soon(one, owner)
        nursery.cancel_scope.cancel()
    assert sorted(read) == sorted(o.id for o in owners)
    assert all(size > 0 for size in read.values())
    assert peaks == {"backups": 1, "transfers": 2}
    status = limits.status()["limits"]
    assert (status["sessions"]["granted"], status["sessions"]["waited"]) == (3, 2)
    assert (status["transfers"]["granted"], status["transfers"]["in_use"]) == (3, 0)


# -- a router: the place is taken at an image's open, the snapshot at its first read -----


def limited_router(rig: Rig, tmp_path: Path) -> SetRouter:
    """A ``SetRouter`` over ``rig``'s manager, both managers sharing its limits."""
    incremental = IncrementalManager(
        rig.engine,
        rig.config,
        chain=ChainState(tmp_path / "chain.json"),
        journal=Journal(tmp_path / "incremental-journal.json"),
        imageio_opener=rig.plane.opener,
        reader_factory=rig.plane.reader_factory,
        cleanup_on_start=False,
        limits=rig.manager.limits,
    )
    return SetRouter(rig.manager, incremental, config=rig.config)


async def test_an_image_open_waits_for_its_place_and_an_unread_open_gives_it_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """max_sessions 1, reads of two VMs' @rhv/ through the router: an image's open (not its
    first read, which FUSE serves among capped background requests) waits for the place; the
    images of one read share one place; an open closed without a read gives it back."""
    rig = Rig(tmp_path, max_sessions=1, grace_period=2.0, read_idle_limit=3600.0)
    router = limited_router(rig, tmp_path)
    eng = rig.engine
    a = eng.add_vm("a", disks=[("a1", 1 * MiB), ("a2", 1 * MiB)])
    b = eng.add_vm("b", disks=[("b1", 1 * MiB)])
    owner_a, owner_b = Owner("vm", a.id, "a"), Owner("vm", b.id, "b")
    key_a1, key_a2 = (DiskKey(d).encode() for d in eng.disk_ids(a.id))
    key_b = DiskKey(eng.disk_ids(b.id)[0]).encode()
    sessions = rig.manager.limits.sessions
    opened_b: list[int] = []

    async def open_b() -> None:
        opened_b.append(await router.open(owner_b, key_b))

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            # a's image opened and closed without a read (borg's fstat): the place was
            # taken at the open, nothing was created, and the close gives the place back
            h = await router.open(owner_a, key_a1)
            assert (sessions.in_use, eng.user_snapshots(a.id)) == (1, [])
            nursery.start_soon(open_b)
            await trio.sleep(60)
            assert opened_b == []  # b's open waits for the place a's open holds
            queued = [s for s in router.status()["sessions"] if s["state"] == "queued"]
            assert [(s["owner"]["name"], s["queue_position"]) for s in queued] == [("b", 1)]
            assert [q["owner"]["name"] for q in router.status()["queued"]] == ["b"]
            await router.release(h)
            await trio.sleep(1)
            assert len(opened_b) == 1 and sessions.in_use == 1  # b got it on a's close
            assert eng.user_snapshots(a.id) == [] and eng.user_snapshots(b.id) == []
            assert await router.read(opened_b[0], 0, 4096)  # b's first read: its snapshot
            assert len(eng.user_snapshots(b.id)) == 1 and sessions.in_use == 1

            # a's two images opened at once wait for one place, and share it
            opened_a: list[int] = []

            async def open_a(key: str) -> None:
                opened_a.append(await router.open(owner_a, key))

            nursery.start_soon(open_a, key_a1)
            nursery.start_soon(open_a, key_a2)
            await trio.sleep(1)
            assert opened_a == [] and len(sessions.queued()) == 1
            await router.release(opened_b[0])  # b idles past its park time: it gives way
            await trio.sleep(60)  # past b's park time (grace_period)
            assert len(opened_a) == 2
            assert eng.user_snapshots(b.id) == [] and eng.user_snapshots(a.id) == []
            assert (sessions.in_use, sessions.queued()) == (1, [])
            for h in opened_a:  # both reads join one session, on the place the opens took
                assert await router.read(h, 0, 4096)
            assert len(eng.user_snapshots(a.id)) == 1 and sessions.in_use == 1
            for h in opened_a:
                await router.release(h)
            nursery.cancel_scope.cancel()

    await run_rig(rig, body)
    limits = rig.manager.status()["limits"]["sessions"]
    assert limits["peak"] == 1
    assert limits["granted"] == 3  # a's unread open, b, a's two images together


async def test_an_image_open_given_up_while_waiting_for_its_place_leaves_the_line(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The tool gives up an open that waits for a place (an interrupted FUSE open): its
    reservation leaves the queue, and the place the other open holds is given back at its
    close, without a read, so nothing waits and nothing was created."""
    rig = Rig(tmp_path, max_sessions=1)
    router = limited_router(rig, tmp_path)
    eng = rig.engine
    a, b = (eng.add_vm(n, disks=[("a", 1 * MiB)]) for n in ("a", "b"))
    key_a, key_b = (DiskKey(eng.disk_ids(v.id)[0]).encode() for v in (a, b))
    sessions = rig.manager.limits.sessions

    async def body() -> None:
        h = await router.open(Owner("vm", a.id, "a"), key_a)
        with trio.move_on_after(5) as waiting:
            await router.open(Owner("vm", b.id, "b"), key_b)
        assert waiting.cancelled_caught
        assert sessions.queued() == [] and sessions.in_use == 1
        assert not [s for s in router.status()["sessions"] if s["state"] == "queued"]
        await router.release(h)
        assert (sessions.in_use, sessions.queued()) == (0, [])

    await run_rig(rig, body)
    assert eng.user_snapshots(a.id) == [] and eng.user_snapshots(b.id) == []
    assert rig.manager.status()["limits"]["sessions"]["granted"] == 1


@pytest.mark.allow_log("rhvfs", "WARNING", match="remove_snapshot|cleanup")
async def test_a_snapshot_left_to_the_background_cleanup_keeps_its_place(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # max_sessions bounds the snapshots on the engine, not the sessions alive in rhvfs: a
    # session whose snapshot could not be removed holds its place until the background
    # retries remove it.
    rig = Rig(tmp_path, max_sessions=1, grace_period=1.0)
    eng = rig.engine
    a, b = (eng.add_vm(n, disks=[("a", 1 * MiB)]) for n in ("a", "b"))
    want_b = {d: sha(bytes(eng.volumes[eng.active[d]])) for d in eng.disk_ids(b.id)}
    got_b: dict[str, str] = {}

    async def body() -> None:
        eng.fail_on.add("remove_snapshot")
        await rig.read_disks(Owner("vm", a.id, "a"), eng.disk_ids(a.id))
        await trio.sleep(60)  # a's session closes; its cleanup fails and goes to the background
        assert len(eng.user_snapshots(a.id)) == 1
        assert [p["kind"] for p in rig.manager.status()["pending_cleanups"]] == ["snapshot"]

        async def read_b() -> None:
            got_b.update(await rig.read_disks(Owner("vm", b.id, "b"), eng.disk_ids(b.id)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_b)
            await trio.sleep(300)  # many background tries, all refused: b waits its turn
            status = rig.manager.status()
            assert eng.user_snapshots(b.id) == [] and not got_b
            assert status["limits"]["sessions"]["in_use"] == 1
            assert [q["owner"]["name"] for q in status["queued"]] == ["b"]
            eng.fail_on.discard("remove_snapshot")  # the engine lets go: a's snapshot goes
        assert eng.user_snapshots(a.id) == []

    await run_rig(rig, body)
    assert got_b == want_b
    assert rig.peak_snapshots == 1
    assert rig.manager.status()["limits"]["sessions"]["in_use"] == 0
