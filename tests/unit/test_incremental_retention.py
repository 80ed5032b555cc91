"""Checkpoint retention (issue 14, point 3) on the fake engine: ``keep_checkpoints``.

The fake engine removes only a VM's root (oldest) checkpoint and refuses it while a
backup runs, as oVirt does. Sets are read through the manager like the VFS would; the
top of a chain is converted with qemu-img and compared (sha256) with the disk as it was.
MockClock: grace periods and engine waits run instantly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rhvfs.engine.types import Checkpoint
from rhvfs.errors import Conflict, NotFound
from rhvfs.sessions.core._model import Owner
from rhvfs.sessions.incremental._chainstate import ChainState
from rhvfs.sessions.incremental._retention import oldest_first
from tests.support.data import MiB, sha, sha256_image
from tests.support.incremental_rig import Rig, image, manifest, new_vm

FIRST_SET = "no completed set"


@pytest.fixture
async def rigs(tmp_path: Path) -> AsyncIterator[Any]:
    """``await rigs(**config)``: a running rig with those settings."""
    async with trio.open_nursery() as nursery:
        made: list[Rig] = []

        async def make(**config: Any) -> Rig:
            where = tmp_path / f"rig{len(made)}"
            where.mkdir()
            r = Rig(where, **config)
            await nursery.start(r.manager.run)
            made.append(r)
            return r

        yield make
        for r in made:
            await r.manager.aclose_all()
        nursery.cancel_scope.cancel()


def engine_cps(rig: Rig, owner: Owner) -> list[str]:
    return [c.id for c in rig.engine.checkpoints.get(owner.id, [])]


async def read_sets(rig: Rig, owner: Owner, n: int, kind: Any = "incremental") -> list[str]:
    """``n`` sets of ``kind``, a guest write before each; their checkpoints, in order."""
    root = rig.engine.disk(owner.id, "root").id
    cps = []
    for i in range(n):
        rig.engine.guest_write(root, (i * 300_000) % (3 * MiB), bytes([i + 1]) * 70_000)
        entries = await rig.read_set(owner, kind)
        m = manifest(rig, entries)
        cps.append(m["to_checkpoint_id"])
    return cps


async def other_products_backup(rig: Rig, owner: Owner) -> str:
    """Another backup product backs the VM up: a checkpoint rhvfs did not make."""
    disks = rig.engine.disk_ids(owner.id)
    backup = await rig.engine.start_backup(owner.id, disks)
    await rig.engine.finalize_backup(owner.id, backup.id)
    assert backup.to_checkpoint_id is not None
    return backup.to_checkpoint_id


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match=FIRST_SET)
async def test_five_sets_leave_the_newest_two_checkpoints_and_the_chain_goes_on(
    rigs: Any, autojump_clock: trio.testing.MockClock
) -> None:
    rig = await rigs(keep_checkpoints=2)
    owner = new_vm(rig.engine)
    root = rig.engine.disk(owner.id, "root").id
    cps = await read_sets(rig, owner, 5)
    assert engine_cps(rig, owner) == cps[-2:]
    assert rig.chain.owned_checkpoints(owner.id) == cps[-2:]
    removed = [s.checkpoint_id for s in rig.chain.sets(owner.id) if s.checkpoint_removed]
    assert removed == cps[:3]
    assert rig.manager.since_checkpoints(owner) == cps[-2:]
    with pytest.raises(NotFound):
        await rig.manager.list_set(owner, "since", cps[0])
    # the next incremental starts from the newest set, and its chain holds the disk's data
    rig.engine.guest_write(root, 2 * MiB, b"\x99" * 50_000)
    entries = await rig.read_set(owner, "incremental")
    m = manifest(rig, entries)
    assert (m["set_type"], m["from_checkpoint_id"]) == ("incremental", cps[-1])
    assert sha256_image(rig.out / image(entries, root).name) == sha(rig.engine.disk_bytes(root))
    assert engine_cps(rig, owner) == [cps[-1], m["to_checkpoint_id"]]


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match=FIRST_SET)
async def test_keep_zero_keeps_every_checkpoint(
    rigs: Any, autojump_clock: trio.testing.MockClock
) -> None:
    rig = await rigs(keep_checkpoints=0)
    owner = new_vm(rig.engine, disks=[("root", 4 * MiB)])
    cps = await read_sets(rig, owner, 4)
    assert engine_cps(rig, owner) == cps
    assert "remove_checkpoint" not in rig.engine.calls


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match=FIRST_SET)
@pytest.mark.allow_log(
    "rhvfs.sessions.incremental._retention", "WARNING", match="oldest checkpoint .* is not rhvfs's"
)
async def test_a_foreign_checkpoint_survives_and_stops_removal_when_it_is_the_oldest(
    rigs: Any, autojump_clock: trio.testing.MockClock
) -> None:
    rig = await rigs(keep_checkpoints=2)
    owner = new_vm(rig.engine, disks=[("root", 4 * MiB)])
    root = rig.engine.disk(owner.id, "root").id
    first = await read_sets(rig, owner, 3)
    foreign = await other_products_backup(rig, owner)
    later = await read_sets(rig, owner, 2)
    # rhvfs's older ones went, from the oldest up to the foreign one
    assert engine_cps(rig, owner) == [foreign, *later]
    assert foreign not in rig.chain.owned_checkpoints(owner.id)
    # now the foreign one is the root: oVirt removes nothing newer, so one more stays
    more = await read_sets(rig, owner, 1)
    assert engine_cps(rig, owner) == [foreign, *later, *more]
    assert first[-1] not in engine_cps(rig, owner)
    entries = await rig.read_set(owner, "incremental")
    assert manifest(rig, entries)["from_checkpoint_id"] == more[0]
    assert sha256_image(rig.out / image(entries, root).name) == sha(rig.engine.disk_bytes(root))


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match=FIRST_SET)
async def test_a_differential_chain_keeps_its_full_sets_checkpoint(
    rigs: Any, autojump_clock: trio.testing.MockClock
) -> None:
    rig = await rigs(keep_checkpoints=1)
    owner = new_vm(rig.engine, disks=[("root", 4 * MiB)])
    root = rig.engine.disk(owner.id, "root").id
    (full_cp,) = await read_sets(rig, owner, 1)
    (diff_cp,) = await read_sets(rig, owner, 1, kind="differential")
    incr = await read_sets(rig, owner, 2)
    # the full set's checkpoint (the differential base) stays, so every newer one too
    assert engine_cps(rig, owner) == [full_cp, diff_cp, *incr]
    rig.engine.guest_write(root, 0, b"\x42" * 10_000)
    entries = await rig.read_set(owner, "differential")
    m = manifest(rig, entries)
    assert (m["set_type"], m["from_checkpoint_id"]) == ("differential", full_cp)
    assert sha256_image(rig.out / image(entries, root).name) == sha(rig.engine.disk_bytes(root))
    assert engine_cps(rig, owner)[0] == full_cp


@pytest.mark.allow_log(
    "rhvfs.sessions.incremental",
    "WARNING",
    match=f"{FIRST_SET}|was removed \\(keep_checkpoints\\)",
)
async def test_without_differentials_the_full_checkpoint_goes_and_a_differential_is_full(
    rigs: Any, autojump_clock: trio.testing.MockClock
) -> None:
    rig = await rigs(keep_checkpoints=1)
    owner = new_vm(rig.engine, disks=[("root", 4 * MiB)])
    root = rig.engine.disk(owner.id, "root").id
    cps = await read_sets(rig, owner, 3)
    assert engine_cps(rig, owner) == cps[-1:]
    entries = await rig.read_set(owner, "differential")
    m = manifest(rig, entries)
    assert m["set_type"] == "full" and m["from_checkpoint_id"] is None
    assert any("was removed (keep_checkpoints)" in w for w in m["warnings"])
    assert sha((rig.out / image(entries, root).name).read_bytes()) == sha(
        rig.engine.disk_bytes(root)
    )


@pytest.mark.allow_log(
    "rhvfs.sessions.incremental", "WARNING", match=f"{FIRST_SET}|removing checkpoint .* failed"
)
async def test_a_failed_removal_never_fails_the_set_and_is_retried_next_time(
    rigs: Any, autojump_clock: trio.testing.MockClock
) -> None:
    rig = await rigs(keep_checkpoints=1)
    owner = new_vm(rig.engine, disks=[("root", 4 * MiB)])
    real = rig.engine.remove_checkpoint
    refusals = [Conflict("another backup of the VM is in progress")]

    async def flaky(vm_id: str, checkpoint_id: str) -> None:
        if refusals:
            raise refusals.pop()
        await real(vm_id, checkpoint_id)

    rig.engine.remove_checkpoint = flaky  # type: ignore[method-assign]
    cps = await read_sets(rig, owner, 2)
    assert [s.checkpoint_id for s in rig.chain.sets(owner.id)] == cps  # the chain advanced
    assert engine_cps(rig, owner) == cps
    notes = rig.router.status()["incremental"]["notes"]
    assert any("removing checkpoint" in n["message"] for n in notes)
    more = await read_sets(rig, owner, 1)
    assert engine_cps(rig, owner) == more


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match=FIRST_SET)
async def test_an_abandoned_sets_checkpoint_is_rhvfss_and_goes_too(
    rigs: Any, autojump_clock: trio.testing.MockClock
) -> None:
    rig = await rigs(keep_checkpoints=1)
    owner = new_vm(rig.engine, disks=[("root", 4 * MiB)])
    (first,) = await read_sets(rig, owner, 1)
    await rig.read_set(owner, "incremental", stop_after=64 * 1024)  # the tool died mid-file
    abandoned = next(c for c in engine_cps(rig, owner) if c != first)
    assert abandoned in rig.chain.owned_checkpoints(owner.id)
    (last,) = await read_sets(rig, owner, 1)
    assert engine_cps(rig, owner) == [last]
    assert rig.chain.owned_checkpoints(owner.id) == [last]


def test_checkpoints_are_ordered_along_their_parents() -> None:
    a, b, c = (Checkpoint(id=x, parent_id=p) for x, p in (("a", None), ("b", "a"), ("c", "b")))
    assert [x.id for x in oldest_first([c, a, b])] == ["a", "b", "c"]
    # a parent that is gone makes its child a root
    assert [x.id for x in oldest_first([c, b])] == ["b", "c"]


def test_chain_files_without_checkpoint_records_own_their_sets_checkpoints(
    tmp_path: Path,
) -> None:
    """A chain file written before checkpoints were recorded: the completed sets' checkpoints
    are rhvfs's; removal marks their sets, and the marks survive a reload."""
    path = tmp_path / "chain.json"
    sets = [
        {"set_id": f"s{i}", "owner_id": "vm1", "set_type": t, "checkpoint_id": f"cp{i}"}
        | {"from_checkpoint_id": None, "parent_set_id": None, "full_set_id": "s0"}
        for i, t in enumerate(["full", "incremental"])
    ]
    path.write_text(json.dumps({"version": 1, "sets": {"vm1": sets}, "pending": {}}))
    chain = ChainState(path)
    assert chain.owned_checkpoints("vm1") == ["cp0", "cp1"]
    chain.add_checkpoint("vm1", "cp2")  # an abandoned set's
    assert chain.owned_checkpoints("vm1") == ["cp2", "cp0", "cp1"]
    chain.forget_checkpoints("vm1", {"cp0", "cp2"}, removed=True)
    again = ChainState(path)
    assert again.owned_checkpoints("vm1") == ["cp1"]
    assert [s.checkpoint_removed for s in again.sets("vm1")] == [True, False]
    newest = again.newest("vm1")
    assert newest is not None and newest.set_id == "s1"
