"""Chains (rhvfs.backupset): ordering the sets copied into a restore directory, rolling disks forward.

Real sets come from the IncrementalManager over the fake backup engine
(``tests.support.incremental_rig``); their manifests are ordered with ``order_chain`` and each
disk rebuilt from its full image plus ``apply_delta`` of every delta, which must
give exactly the disk as it was at the newest set (sha256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rhvfs.backupset import (
    ChainError,
    Manifest,
    SetLink,
    apply_delta,
    check_delta,
    disk_plan,
    flatten_manifest,
    link_from_manifest,
    order_chain,
    parse_manifest,
)
from rhvfs.sessions.core._model import Owner, SetEntry
from tests.support.fake_engine import CLUSTER
from tests.support.incremental_rig import Rig, new_vm

MiB = 1024 * 1024


@pytest.fixture
async def rig(tmp_path: Path) -> Any:
    r = Rig(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.manager.run)
        yield r
        await r.manager.aclose_all()
        nursery.cancel_scope.cancel()


def links_of(rig: Rig, *sets: list[SetEntry]) -> list[SetLink]:
    out = []
    for entries in sets:
        name = next(e.name for e in entries if e.name.startswith("manifest--"))
        out.append(link_from_manifest(name, Manifest.from_json((rig.out / name).read_bytes())))
    return out


async def rebuild(rig: Rig, chain: list[SetLink], disk_id: str) -> str:
    plan = disk_plan(chain, disk_id)
    image = bytearray((rig.out / plan.base.file).read_bytes())
    image.extend(bytes(plan.size - len(image)))

    async def write(offset: int, data: bytes) -> None:
        image[offset : offset + len(data)] = data

    async def zero(offset: int, length: int) -> None:
        image[offset : offset + length] = bytes(length)

    for d in plan.deltas:
        check_delta(rig.out / d.file, d)
        await apply_delta(rig.out / d.file, write=write, zero=zero, chunk_bytes=100_000)
    return hashlib.sha256(image).hexdigest()


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="no completed set")
async def test_full_inc_inc_and_full_diff_rebuild_each_point_in_time(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    eng = rig.engine
    owner = new_vm(eng)
    disks = [a.disk.id for a in eng.attachments[owner.id]]
    rng = random.Random(7)

    def writes() -> None:
        for d in disks:
            for _ in range(3):
                eng.guest_write(d, rng.randrange(0, 2 * MiB - 70_000), rng.randbytes(70_000))
        eng.guest_write(disks[0], CLUSTER * 5, bytes(CLUSTER))

    def state() -> dict[str, str]:
        return {d: hashlib.sha256(eng.disk_bytes(d)).hexdigest() for d in disks}

    s0 = await rig.read_set(owner, "incremental")
    writes()
    s1 = await rig.read_set(owner, "incremental")
    v1 = state()
    writes()
    s2 = await rig.read_set(owner, "incremental")
    v2 = state()
    writes()
    s3 = await rig.read_set(owner, "differential")
    v3 = state()

    for sets, expected in (((s0, s1, s2), v2), ((s0, s1), v1), ((s0, s3), v3)):
        links = links_of(rig, *sets)
        rng.shuffle(links)  # files arrive in any order
        chain = order_chain(links)
        assert [x.set_type for x in chain][0] == "full"
        assert {d: await rebuild(rig, chain, d) for d in disks} == expected

    # the newest manifest flattened: full images plus the deltas to apply, oldest first
    chain = order_chain(links_of(rig, s0, s1, s2))
    raw = (rig.out / chain[-1].manifest).read_bytes()
    newest = json.loads(raw)
    flattened = flatten_manifest(Manifest.from_json(raw), chain)
    flat = json.loads(flattened.to_json())
    assert flat["set_type"] == "full" and flat["chain"] == [x.set_id for x in chain]
    parsed = parse_manifest(flattened.to_json())  # the restore's own parser
    assert {d.file for d in parsed.disks} == {chain[0].disks[d].file for d in disks}
    assert parsed.ovf_file == newest["config_files"]["ovf"]
    for d in flat["disks"]:
        assert d["file"] == chain[0].disks[d["id"]].file
        assert d["chain_deltas"] == [chain[1].disks[d["id"]].file, chain[2].disks[d["id"]].file]

    # an incremental after a differential continues it
    writes()
    s4 = await rig.read_set(owner, "incremental")
    chain = order_chain(links_of(rig, s4, s3, s0))
    assert [x.set_type for x in chain] == ["full", "differential", "incremental"]
    assert {d: await rebuild(rig, chain, d) for d in disks} == state()

    with pytest.raises(ChainError, match=r"missing link: set \S+ \(the parent of manifest--"):
        order_chain(links_of(rig, s0, s2))
    with pytest.raises(ChainError, match="do not form one chain"):
        order_chain(links_of(rig, s0, s1, s3))
    with pytest.raises(ChainError, match="missing link"):
        order_chain(links_of(rig, s1))
    orphan = dataclasses.replace(links_of(rig, s1)[0], parent_set_id=None)
    with pytest.raises(ChainError, match="starts at .* not a full one"):
        order_chain([orphan])
    with pytest.raises(ChainError, match="twice"):
        order_chain(links_of(rig, s0, s0))


@pytest.mark.allow_log("rhvfs.sessions.incremental", "WARNING", match="no completed set")
async def test_delta_that_does_not_continue_the_chain_is_refused(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    eng = rig.engine
    owner = new_vm(eng, disks=[("root", 1 * MiB)])
    disk = eng.attachments[owner.id][0].disk.id
    s0 = await rig.read_set(owner, "incremental")
    eng.guest_write(disk, 0, b"x" * 10)
    s1 = await rig.read_set(owner, "incremental")
    eng.guest_write(disk, 0, b"y" * 10)
    s2 = await rig.read_set(owner, "incremental")
    chain = order_chain(links_of(rig, s0, s1, s2))
    # a manifest edited to skip s1: s2's delta names s1's file as its backing file
    forged = [
        chain[0],
        chain[2].__class__(**{**chain[2].__dict__, "parent_set_id": chain[0].set_id}),
    ]
    with pytest.raises(ChainError, match="out of order"):
        disk_plan(order_chain(forged), disk)
    # a delta file swapped for another set's
    d2 = disk_plan(chain, disk).deltas[1]
    d1 = disk_plan(chain, disk).deltas[0]
    with pytest.raises(ChainError, match="backing file"):
        check_delta(rig.out / d1.file, d2)
    # a VM mix-up
    other = new_vm(eng, disks=[("root", 1 * MiB)])
    t0 = await rig.read_set(Owner("vm", other.id, "other"), "incremental")
    with pytest.raises(ChainError, match="different VMs"):
        order_chain(links_of(rig, s0, t0))
