"""Chain restores against the fake engine: full + incrementals, full + differential, refusals.

The sets are built like ``rhvfs.sessions.incremental._manager`` writes them (file names
with the set id, qcow2 deltas synthesized by ``Qcow2Delta`` whose backing file
is the previous set's image); disk0 is an incremental-enabled disk (deltas),
disk1 a raw backup=none disk (full data in every set). The tests run on
``MockClock(autojump_threshold=0)``: a chain settles after a quiet period of trio's clock.
"""

from __future__ import annotations

import copy
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from test_restore_fakes import DISK_IDS, FakeEngine, MiB, make_set, sha
from test_restore_session import Harness, config, start
from trio.testing import MockClock

from rhvfs.backupset import Change, Qcow2Delta
from rhvfs.sessions.restore import RestoreSession

CLUSTER = 65536


@pytest.fixture
async def h(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    return await start(nursery, FakeEngine(), tmp_path, config())


@dataclass
class ChainSet:
    set_id: str
    files: dict[str, bytes]
    state: dict[str, bytes]  # disk id -> content at this set


async def _delta(image: bytes, changes: list[Change], backing: str) -> bytes:
    fmt = "raw" if backing.endswith(".raw") else "qcow2"
    q = Qcow2Delta(
        virtual_size=len(image), changes=changes, backing_file=backing, backing_format=fmt
    )

    async def fetch(offset: int, length: int) -> bytes:
        return image[offset : offset + length]

    return await q.read(0, q.size, fetch)


class ChainMaker:
    """Full set c0, then incremental/differential sets of the same VM."""

    def __init__(self) -> None:
        base = make_set(sizes=(2 * MiB, 1 * MiB))
        self.doc = base.manifest
        self.ovf = base.files["vm.ovf"]
        self.state = {d["id"]: base.files[d["file"]] for d in self.doc["disks"]}
        self.rng = random.Random(5)
        self.sets: list[ChainSet] = []
        files = {f"disk{i}--{d}--c0.raw": self.state[d] for i, d in enumerate(DISK_IDS[:2])}
        self.sets.append(ChainSet("c0", self._config("c0", None, {}, files), dict(self.state)))

    def _config(
        self,
        set_id: str,
        parent: ChainSet | None,
        deltas: dict[str, str],  # disk id -> backing file, for disks stored as deltas
        files: dict[str, bytes],
    ) -> dict[str, bytes]:
        doc = copy.deepcopy(self.doc)
        doc.update(
            set_type="full"
            if parent is None
            else ("differential" if set_id[0] == "d" else "incremental"),
            set_id=set_id,
            checkpoint_id=set_id,
            parent_set=None if parent is None else {"set_id": parent.set_id},
            full_set_id="c0",
            config_files={
                "ovf": f"vm--{set_id}.ovf",
                "api_xml": f"vm--{set_id}.xml",
                "manifest": f"manifest--{set_id}.json",
            },
        )
        for i, d in enumerate(doc["disks"]):
            delta = d["id"] in deltas
            d["file"] = f"disk{i}--{d['id']}--{set_id}." + ("qcow2" if delta else "raw")
            d["file_format"] = "qcow2" if delta else "raw"
            d["backing_file"] = deltas.get(d["id"])
        out = dict(files)
        out[f"manifest--{set_id}.json"] = json.dumps(doc, indent=2).encode()
        out[f"vm--{set_id}.ovf"] = self.ovf
        out[f"vm--{set_id}.xml"] = b"<vm/>\n"
        return out

    def write(self) -> list[Change]:
        """Guest writes on both disks; the changes of disk0 (cluster aligned)."""
        changes = []
        for did in DISK_IDS[:2]:
            img = bytearray(self.state[did])
            for _ in range(3):
                start = self.rng.randrange(0, len(img) // CLUSTER) * CLUSTER
                img[start : start + CLUSTER] = self.rng.randbytes(CLUSTER)
                if did == DISK_IDS[0]:
                    changes.append(Change(start, CLUSTER))
            if did == DISK_IDS[0]:  # one range written with zeroes: a "reads as zero" cluster
                img[0:CLUSTER] = bytes(CLUSTER)
                changes.append(Change(0, CLUSTER, zero=True))
            self.state[did] = bytes(img)
        return changes

    async def add(self, set_id: str, parent: ChainSet, changes: list[Change]) -> ChainSet:
        d0, d1 = DISK_IDS[:2]
        parent_doc = json.loads(parent.files[f"manifest--{parent.set_id}.json"])
        backing = parent_doc["disks"][0]["file"]
        files = {
            f"disk0--{d0}--{set_id}.qcow2": await _delta(self.state[d0], changes, backing),
            f"disk1--{d1}--{set_id}.raw": self.state[d1],
        }
        s = ChainSet(set_id, self._config(set_id, parent, {d0: backing}, files), dict(self.state))
        self.sets.append(s)
        return s


async def build_chain() -> tuple[ChainMaker, list[ChainSet]]:
    m = ChainMaker()
    c0 = m.sets[0]
    all_changes = m.write()
    c1 = await m.add("c1", c0, all_changes)
    more = m.write()
    all_changes += more
    c2 = await m.add("c2", c1, more)
    # a differential holds every change since the full set
    all_changes += m.write()
    d3 = await m.add("d3", c0, all_changes)
    return m, [c0, c1, c2, d3]


async def copy_sets(h: Harness, session: RestoreSession, sets: list[ChainSet], seed: int) -> None:
    names = [(n, data) for s in sets for n, data in s.files.items()]
    random.Random(seed).shuffle(names)  # files arrive in any order (one directory copied)
    for name, data in names:
        f = await h.write_file(session, name, data)
        await session.set_times(f)  # as tar does after each file: an image is complete now


def restored(engine: FakeEngine, vm_name: str) -> dict[str, str]:
    vm = next(v for v in engine.vms.values() if v.name == vm_name)
    return {a.disk.alias: sha(engine.content[a.disk.id]) for a in engine.attachments[vm.id]}


def expected(s: ChainSet) -> dict[str, str]:
    return {f"disk{i}": sha(s.state[d]) for i, d in enumerate(DISK_IDS[:2])}


async def test_full_inc_inc_and_full_diff_restore_the_newest_state(
    autojump_clock: MockClock, h: Harness
) -> None:
    _, (c0, c1, c2, d3) = await build_chain()
    assert expected(c2) != expected(c0)
    a = h.manager.create("a")
    await copy_sets(h, a, [c0, c1, c2], seed=1)
    status = await h.settle(a)
    assert status["phase"] == "done", status
    assert status["chain"]["order"] == ["full c0", "incremental c1", "incremental c2"]
    assert restored(h.engine, "a") == expected(c2)

    b = h.manager.create("b")
    await copy_sets(h, b, [c0, d3], seed=2)
    status = await h.settle(b)
    assert status["phase"] == "done", status
    assert status["chain"]["order"] == ["full c0", "differential d3"]
    assert restored(h.engine, "b") == expected(d3)

    # the full set alone (its chain manifest) restores the full set's state
    c = h.manager.create("c")
    await copy_sets(h, c, [c0], seed=3)
    assert (await h.settle(c))["phase"] == "done"
    assert restored(h.engine, "c") == expected(c0)


async def test_missing_or_foreign_link_is_refused_and_rolled_back(
    autojump_clock: MockClock, h: Harness
) -> None:
    _, (c0, c1, c2, d3) = await build_chain()
    vms_before = dict(h.engine.vms)
    for name, sets, reason in (
        ("nolink", [c0, c2], r"missing link: set c1 \(the parent of manifest--c2.json\)"),
        ("branches", [c0, c1, d3], "do not form one chain"),
        ("nofull", [c1, c2], "missing link: set c0"),
    ):
        session = h.manager.create(name)
        await copy_sets(h, session, sets, seed=4)
        status = await h.settle(session)
        assert status["phase"] == "failed" and status["settled"], status
        assert status["errno"] == "EINVAL"
        assert re.search(reason, status["error"]), status["error"]
        assert "\n" not in status["error"]
    # nothing created is left: no VM, no disk, no transfer running
    assert h.engine.vms == vms_before
    assert h.engine.disks == {}
    assert all(phase != "transferring" for _, phase in h.engine.transfers.values())


async def test_delta_file_missing_or_truncated_is_refused(
    autojump_clock: MockClock, h: Harness
) -> None:
    _, (c0, c1, c2, _) = await build_chain()
    delta = next(n for n in c2.files if n.endswith(".qcow2"))
    gone = h.manager.create("gone")
    await copy_sets(
        h,
        gone,
        [c0, c1, ChainSet("c2", {k: v for k, v in c2.files.items() if k != delta}, {})],
        seed=5,
    )
    status = await h.settle(gone)
    assert status["phase"] == "failed"
    assert status["error"].startswith(f"missing link: {delta} (disk disk0 of manifest--c2.json)")

    short = h.manager.create("short")
    cut = dict(c2.files)
    cut[delta] = cut[delta][: len(cut[delta]) - CLUSTER]
    await copy_sets(h, short, [c0, c1, ChainSet("c2", cut, {})], seed=6)
    status = await h.settle(short)
    assert status["phase"] == "failed"
    assert f"{delta} is truncated" in status["error"]
    assert h.engine.vms == {} and h.engine.disks == {}
