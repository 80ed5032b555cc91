"""A chain (full + incrementals) restored through rhvfs.fs.Operations, the calls rsync makes:
temporary names renamed into place, times set on each file, files in any order."""

from __future__ import annotations

import random
from pathlib import Path

import trio

from tests.support.backup_sets import build_chain, expected
from tests.support.fake_engine import FakeEngine
from tests.support.fs_ops import lookup, make_ops, put_file, wait_status
from tests.support.restore_rig import restored


async def test_rsync_style_chain_restore_through_operations(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = FakeEngine()
    ops, manager = await make_ops(nursery, tmp_path, engine)
    _, (c0, c1, c2, _) = await build_chain()
    restore = await lookup(ops, "/restore")
    d = await ops.mkdir(restore.st_ino, b"a", 0o755, None)
    files = [(n, data) for s in (c0, c1, c2) for n, data in s.files.items()]
    random.Random(3).shuffle(files)
    for name, data in files:
        await put_file(ops, d.st_ino, name, data, temp=f".{name}.x9Y8z7")
    status = await wait_status(ops, manager, "a", d.st_ino)
    assert status["phase"] == "done", status["error"]
    assert status["chain"]["order"] == ["full c0", "incremental c1", "incremental c2"]
    assert restored(engine, "a") == expected(c2)
