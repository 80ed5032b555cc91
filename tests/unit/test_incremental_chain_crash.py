"""A mount dies while its snapshot-chain set replaces the VM's kept snapshot.

Each complete ``@rhv-incremental/`` set of a VM with a disk without engine
incremental backup keeps its snapshot and then removes the one the set before
it kept. The mount's process dies (``tests.support.crash``: no cleanup runs,
the state directory stays as it was at that instant, the dead process makes
no further engine call) in the two windows of that exchange:

- after the new set (and its kept snapshot) was recorded in the chain state,
  before the older kept snapshot was removed: both are on the engine;
- after the new snapshot was created, before the chain recorded it: the new
  snapshot is the leftover, the old one is still the chain's.

The next mount's gc (``rhvfs gc`` and a mount's start-up cleanup: the full
manager's ``collect_garbage`` told the chain's kept snapshots) must remove the
leftover rhvfs snapshot and keep the chain's, never anything rhvfs did not
make (an admin's snapshot, another installation's); the next set must be a
delta on the chain's newest kept snapshot whose images are the VM's disks,
whether gc ran before it or only after. Fake engine, MockClock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

from rhvfs.backupset import read_allocation
from rhvfs.sessions import BackupManager
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._gc import artifact_description
from rhvfs.sessions.core._installation import Ownership, new_id
from rhvfs.sessions.core._model import Owner, SetEntry
from tests.support.crash import Crash, ProcessDied, dead_pid
from tests.support.data import MiB, sha, sha256_image
from tests.support.fake_engine import CLUSTER, FakeEngine
from tests.support.incremental_rig import Rig, image, manifest, mounted, new_vm


def data_bytes(path: Path) -> int:
    return sum(a.length for a in read_allocation(path) if a.kind == "data")


def snapshot_ids(eng: FakeEngine, vm_id: str) -> list[str]:
    return [s.id for s in eng.user_snapshots(vm_id)]


async def mixed_vm(eng: FakeEngine) -> tuple[Owner, str, str, list[str]]:
    """A VM with a raw disk (its incrementals are a snapshot chain), and two snapshots
    rhvfs did not make: an admin's, and one of another installation (dead pid, our host)."""
    owner = new_vm(eng, disks=[("root", 2 * MiB), ("scratch", 1 * MiB)])
    eng.set_disk(owner.id, "scratch", format="raw", backup="none")
    root, scratch = eng.disk(owner.id, "root").id, eng.disk(owner.id, "scratch").id
    admin = await eng.create_snapshot(owner.id, description="before upgrade")
    me = procid.current()
    theirs = artifact_description(
        "f1",
        procid.ProcessIdentity(me.host, me.boot_id, dead_pid(), 1),
        datetime.now(UTC),
        owner=Ownership(new_id(), new_id()),
    )
    foreign = await eng.create_snapshot(owner.id, description=theirs)
    return owner, root, scratch, [admin.id, foreign.id]


async def gc_of(rig: Rig) -> list[str]:
    """What a mount of ``rig``'s state directory (or ``rhvfs gc``) removes at start."""
    manager = BackupManager(
        rig.engine,
        rig.config,
        journal=rig.journal,
        gc_on_start=False,
        kept_snapshots=lambda: rig.chain.kept_snapshots().values(),
    )
    return await manager.collect_garbage()


def removed(lines: list[str], snapshot_id: str) -> bool:
    """gc's report says it removed ``snapshot_id``."""
    return any(line.startswith(f"removed snapshot {snapshot_id} of VM ") for line in lines)


async def second_set_dies(
    tmp_path: Path, arm: Callable[[Crash, Rig], None]
) -> tuple[Crash, Rig, Owner, str, str, list[str], dict[str, list[SetEntry]]]:
    """A first mount reads set s0 of a ``mixed_vm``, the guest writes (one cluster of
    root, two of scratch), ``arm`` sets where the process dies, and the mount copies
    the next set (``sets["s1"]`` when the copy returned) until it dies."""
    crash = Crash(tmp_path / "state", tmp_path / "state-at-crash")
    first = Rig(tmp_path, crash=crash)
    eng = first.engine
    owner, root, scratch, not_ours = await mixed_vm(eng)
    sets: dict[str, list[SetEntry]] = {}
    with pytest.RaisesGroup(ProcessDied, flatten_subgroups=True):
        async with mounted(first):
            sets["s0"] = await first.read_set(owner, "incremental")
            eng.guest_write(root, 0, b"\x01" * 10)
            eng.guest_write(scratch, CLUSTER + 4096, b"\x02" * (CLUSTER + 10))  # 2 clusters
            arm(crash, first)
            sets["s1"] = await first.copy_set(owner, "incremental")
            await trio.sleep_forever()  # the set's cleanup (or its record) kills the process
    return crash, first, owner, root, scratch, not_ours, sets


def check_images(rig: Rig, entries: list[SetEntry], disks: list[str]) -> None:
    """Each disk's image of the set (with the files it backs onto) is the disk now."""
    for d in disks:
        assert sha256_image(rig.out / image(entries, d).name) == sha(rig.engine.disk_bytes(d))


@pytest.mark.parametrize("gc_first", [True, False], ids=["gc-then-set", "set-then-gc"])
@pytest.mark.parametrize("window", ["recorded", "journal-updated"])
async def test_crash_after_the_new_snapshot_is_kept_before_the_old_one_is_removed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, window: str, gc_first: bool
) -> None:
    def arm(crash: Crash, first: Rig) -> None:
        if window == "recorded":  # the journal still names the new snapshot
            crash.at(first.chain, "record", after=True)
        else:  # the set is recorded and out of the journal: the old snapshot goes next
            crash.at(first.manager.engine, "remove_snapshot")

    crash, first, owner, root, scratch, not_ours, sets = await second_set_dies(tmp_path, arm)
    eng = first.engine
    assert crash.where == ("after record" if window == "recorded" else "before remove_snapshot")
    m0, m1 = manifest(first, sets["s0"]), manifest(first, sets["s1"])
    kept0, kept1 = m0["snapshot_id"], m1["snapshot_id"]
    assert m1["set_type"] == "incremental" and kept0 != kept1
    assert snapshot_ids(eng, owner.id) == [*not_ours, kept0, kept1]

    second = Rig(tmp_path, engine=eng, state=crash.image)
    assert [s.set_id for s in second.chain.sets(owner.id)] == [m0["set_id"], m1["set_id"]]
    assert second.chain.kept_snapshots() == {owner.id: kept1}
    if gc_first:
        lines = await gc_of(second)
        assert removed(lines, kept0)
        assert snapshot_ids(eng, owner.id) == [*not_ours, kept1]
    eng.guest_write(scratch, 0, b"\x03" * 100)
    async with mounted(second):
        s2 = await second.read_set(owner, "incremental")
    m2 = manifest(second, s2)
    assert (m2["set_type"], m2["parent_set"]["set_id"]) == ("incremental", m1["set_id"])
    assert data_bytes(second.out / image(s2, root).name) == 0
    assert data_bytes(second.out / image(s2, scratch).name) == CLUSTER
    check_images(second, s2, [root, scratch])
    kept2 = m2["snapshot_id"]
    assert second.chain.kept_snapshots() == {owner.id: kept2}
    leftover = [] if gc_first else [kept0]
    assert snapshot_ids(eng, owner.id) == [*not_ours, *leftover, kept2]

    lines = await gc_of(second)
    assert f"left alone: snapshot {not_ours[1]} of VM {owner.id}" in "\n".join(lines)
    assert removed(lines, kept0) == (not gc_first)
    assert snapshot_ids(eng, owner.id) == [*not_ours, kept2]
    assert second.journal.entries() == [] and eng.open_transfers() == []

    # the chain goes on over the merged layers
    eng.guest_write(root, MiB + 5, b"\x04" * 3)
    async with mounted(second):
        s3 = await second.read_set(owner, "incremental")
    m3 = manifest(second, s3)
    assert (m3["set_type"], m3["parent_set"]["set_id"]) == ("incremental", m2["set_id"])
    assert data_bytes(second.out / image(s3, root).name) == CLUSTER
    check_images(second, s3, [root, scratch])
    assert snapshot_ids(eng, owner.id) == [*not_ours, m3["snapshot_id"]]


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="chain of VM .* is broken")
@pytest.mark.parametrize("gc_first", [True, False], ids=["gc-then-set", "set-then-gc"])
@pytest.mark.parametrize("window", ["snapshot-created", "set-read"])
async def test_crash_after_the_new_snapshot_was_taken_before_the_chain_recorded_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, window: str, gc_first: bool
) -> None:
    def arm(crash: Crash, first: Rig) -> None:
        if window == "snapshot-created":  # the journal has its description, not its id
            crash.at(first.manager.engine, "create_snapshot", after=True)
        else:  # read completely, about to be recorded
            crash.at(first.chain, "record")

    crash, first, owner, root, scratch, not_ours, sets = await second_set_dies(tmp_path, arm)
    eng = first.engine
    assert crash.where == (
        "after create_snapshot" if window == "snapshot-created" else "before record"
    )
    m0 = manifest(first, sets["s0"])
    kept0 = m0["snapshot_id"]
    [new] = [s for s in snapshot_ids(eng, owner.id) if s not in (*not_ours, kept0)]
    assert snapshot_ids(eng, owner.id) == [*not_ours, kept0, new]

    second = Rig(tmp_path, engine=eng, state=crash.image)
    assert [s.set_id for s in second.chain.sets(owner.id)] == [m0["set_id"]]
    assert second.chain.kept_snapshots() == {owner.id: kept0}
    if gc_first:
        lines = await gc_of(second)
        assert removed(lines, new)
        assert snapshot_ids(eng, owner.id) == [*not_ours, kept0]
    eng.guest_write(root, MiB, b"\x05" * 10)
    async with mounted(second):
        s1 = await second.read_set(owner, "incremental")
    m1 = manifest(second, s1)
    if gc_first:
        # the old kept snapshot is still the base: the delta holds every write since it
        assert (m1["set_type"], m1["parent_set"]["set_id"]) == ("incremental", m0["set_id"])
        assert data_bytes(second.out / image(s1, root).name) == 2 * CLUSTER
        assert data_bytes(second.out / image(s1, scratch).name) == 2 * CLUSTER
    else:
        # the leftover splits the layer since the kept snapshot: a full set
        assert m1["set_type"] == "full"
        assert f"snapshot {new} was taken after the kept snapshot {kept0}" in m1["warnings"][0]
    check_images(second, s1, [root, scratch])
    kept1 = m1["snapshot_id"]
    assert second.chain.kept_snapshots() == {owner.id: kept1}
    leftover = [] if gc_first else [new]
    assert snapshot_ids(eng, owner.id) == [*not_ours, *leftover, kept1]

    lines = await gc_of(second)
    assert removed(lines, new) == (not gc_first)
    assert snapshot_ids(eng, owner.id) == [*not_ours, kept1]
    assert second.journal.entries() == [] and eng.open_transfers() == []

    eng.guest_write(scratch, 0, b"\x06" * 7)
    async with mounted(second):
        s2 = await second.read_set(owner, "incremental")
    m2 = manifest(second, s2)
    assert (m2["set_type"], m2["parent_set"]["set_id"]) == ("incremental", m1["set_id"])
    assert data_bytes(second.out / image(s2, scratch).name) == CLUSTER
    check_images(second, s2, [root, scratch])
    assert snapshot_ids(eng, owner.id) == [*not_ours, m2["snapshot_id"]]
