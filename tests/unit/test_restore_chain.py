"""Chain restores against the fake engine: full + incrementals, full + differential, refusals.

The sets come from ``tests.support.backup_sets.build_chain`` (named like
``rhvfs.sessions.incremental._manager`` writes them, qcow2 deltas whose backing file
is the previous set's image; disk0 incremental-enabled, disk1 raw backup=none).
The tests run on ``MockClock(autojump_threshold=0)``: a chain settles after a quiet period of
trio's clock.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from rhvfs.sessions.restore import RestoreSession
from tests.support.backup_sets import ChainSet, build_chain, expected
from tests.support.configs import restore_config
from tests.support.fake_engine import CLUSTER, FakeEngine
from tests.support.restore_rig import Harness, restored, start


@pytest.fixture
async def h(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    return await start(nursery, FakeEngine(), tmp_path, restore_config())


async def copy_sets(h: Harness, session: RestoreSession, sets: list[ChainSet], seed: int) -> None:
    names = [(n, data) for s in sets for n, data in s.files.items()]
    random.Random(seed).shuffle(names)  # files arrive in any order (one directory copied)
    for name, data in names:
        f = await h.write_file(session, name, data)
        await session.set_times(f)  # as tar does after each file: an image is complete now


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
    assert all(t.phase != "transferring" for t in h.engine.transfers.values())


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
