"""Issue 12, bulk inventory: browsing a few hundred VMs costs a bounded number of engine calls.

The VFS over the real backend (engine facade, sessions) and a simulator with
``--extra-vms``: listing ``vms/``, every VM directory, its ``@rhv/`` and
``disks/`` and stat-ing every entry makes the same few engine calls whatever
the number of VMs (counted by the simulator), creates nothing on the engine,
and the sizes and times it showed hold when a set's configuration is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from rhvfs.config import load_config
from rhvfs.mount import MountOptions, open_backend
from rhvfs.vfs.nodes import Kind, Node
from rhvfs.vfs.tree import Vfs
from tests.support.sim import SimProcess, counting_engine_calls, start_sim

pytestmark = pytest.mark.slow

N_EXTRA = 300
N_SAMPLE = 8
#: Engine calls a whole browse may make, whatever the number of VMs: the VM and template
#: listings, clusters, hosts, storage domains, vnic profiles, data centers, tags, one
#: search per tag directory, one disk listing per storage domain.
BROWSE_CALLS_MAX = 40


@pytest.fixture(scope="module")
def big_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    sim = start_sim(
        tmp_path_factory.mktemp("bigsim"), sample=True, serve_args=("--extra-vms", str(N_EXTRA))
    )
    try:
        yield sim
    finally:
        sim.stop()


@asynccontextmanager
async def _vfs(sim: SimProcess, state_dir: Path) -> AsyncIterator[Vfs]:
    # A listing TTL longer than the test: what is counted is one browse, not re-listings.
    config = load_config(
        section=sim.section,
        config_file=sim.conf_file,
        overrides={"listing_ttl": 600.0, "grace_period": 0.0},
    )
    options = MountOptions(mountpoint="", state_dir=str(state_dir))
    async with open_backend(config, options, gc_on_start=False) as backend:
        yield Vfs(
            backend.engine,
            backend.backups,
            listing_ttl_s=config.listing_ttl,
            owner_factory=backend.owner_factory,
        )


async def _stat_vms(vfs: Vfs) -> dict[str, list[tuple[str, int, int]]]:
    """``ls -l vms/*/ vms/*/@rhv/ vms/*/disks/``: (name, size, mtime) of every entry, by VM."""
    seen: dict[str, list[tuple[str, int, int]]] = {}
    vms = await vfs.resolve("/vms")
    for vm in await vfs.listdir(vms.ino):
        rows: list[tuple[str, int, int]] = []
        for child in await vfs.listdir(vm.ino):
            node = await vfs.getattr(child.ino)
            rows.append((child.name, node.size, node.mtime_ns))
            if child.kind is Kind.DIR:
                for entry in await vfs.listdir(child.ino):
                    attrs = vfs.attributes(await vfs.getattr(entry.ino))
                    rows.append((f"{child.name}/{entry.name}", attrs.size, attrs.mtime_ns))
        seen[vm.name] = rows
    return seen


async def _walk(vfs: Vfs, node: Node, depth: int) -> int:
    """``find -maxdepth depth`` below ``node``: the number of entries seen."""
    count = 0
    for child in await vfs.listdir(node.ino):
        await vfs.getattr(child.ino)
        count += 1
        if child.kind is Kind.DIR and depth > 1:
            count += await _walk(vfs, child, depth - 1)
    return count


def _no_changes(counts: dict[tuple[str, str], int]) -> None:
    """Only reads (and logins): nothing created, nothing removed on the engine."""
    writes = {k: n for k, n in counts.items() if k[0] != "GET" and "sso" not in k[1]}
    assert writes == {}


async def test_browsing_hundreds_of_vms_costs_a_bounded_number_of_calls(
    big_sim: SimProcess, tmp_path: Path
) -> None:
    async with _vfs(big_sim, tmp_path) as vfs:
        with counting_engine_calls(big_sim) as calls:
            seen = await _stat_vms(vfs)
        assert len(seen) == N_EXTRA + N_SAMPLE
        # Every VM shows its set: configuration first, one image per disk, disks/ alike.
        one = seen["vm-0001"]
        names = [row[0] for row in one]
        assert names[:4] == ["@rhv", "@rhv/vm.ovf", "@rhv/vm.xml", "@rhv/manifest.json"]
        assert sum(n.startswith("@rhv/") and n.endswith(".raw") for n in names) == 2
        assert sum(n.startswith("disks/") for n in names) == 2
        assert "vm.json" in names

        api = {k: n for k, n in calls.counts.items() if "sso" not in k[1]}
        # One listing of all VMs (disks, NICs, tags inlined), nothing per VM.
        assert api.get(("GET", "/vms"), 0) == 1, api
        assert not [k for k in api if k[1].startswith("/vms/")], api
        assert sum(api.values()) <= BROWSE_CALLS_MAX, api
        _no_changes(calls.counts)

        # status.json counts the same calls, by kind.
        status = await vfs.resolve("/.rhvfs/status.json")
        doc = json.loads(await _read_all(vfs, status))
        assert doc["engine_calls"]["by_kind"]["list vms"] == 1
        assert doc["engine_calls"]["total"] == sum(doc["engine_calls"]["by_kind"].values())
        assert doc["engine_calls"]["total"] >= sum(api.values())

        # Again: answered from the listings, no engine call at all.
        with counting_engine_calls(big_sim) as again:
            assert await _stat_vms(vfs) == seen
        assert again.counts == {}


async def test_find_over_the_whole_tree_is_bounded_too(big_sim: SimProcess, tmp_path: Path) -> None:
    async with _vfs(big_sim, tmp_path) as vfs:
        root = await vfs.resolve("/")
        with counting_engine_calls(big_sim) as calls:
            entries = await _walk(vfs, root, 6)
        # 308 VM directories with ~10 entries each, and links to them by cluster and tag
        assert entries > 10 * (N_EXTRA + N_SAMPLE)
        api = {k: n for k, n in calls.counts.items() if "sso" not in k[1]}
        assert not [k for k in api if k[1].startswith(("/vms/", "/templates/"))], api
        assert sum(api.values()) <= BROWSE_CALLS_MAX, api
        _no_changes(calls.counts)


async def _read_all(vfs: Vfs, node: Node) -> bytes:
    fh = await vfs.open(node.ino, os.O_RDONLY)
    try:
        out = b""
        while chunk := await vfs.read(fh, len(out), 1 << 20):
            out += chunk
        return out
    finally:
        await vfs.release(fh)


async def test_reading_configuration_keeps_the_listed_sizes_and_creates_nothing(
    big_sim: SimProcess, tmp_path: Path
) -> None:
    async with _vfs(big_sim, tmp_path) as vfs:
        seen = await _stat_vms(vfs)
        names = ["web01", "myvm", "vm-0000", "vm-0001", "vm-0299"]
        with counting_engine_calls(big_sim) as calls:
            for name in names:
                listed = {row[0]: row[1:] for row in seen[name]}
                for conf in ("vm.ovf", "vm.xml", "manifest.json"):
                    node = await vfs.resolve(f"/vms/{name}/@rhv/{conf}")
                    data = await _read_all(vfs, node)
                    attrs = vfs.attributes(await vfs.getattr(node.ino))
                    # what stat showed before the read is what the read gives
                    assert (len(data), attrs.mtime_ns) == listed[f"@rhv/{conf}"], (name, conf)
                    assert attrs.size == len(data)
                    if conf == "manifest.json":
                        assert json.loads(data)["vm"]["name"] == name
                    else:
                        assert data.rstrip().endswith(b">"), (name, conf)
                await trio.lowlevel.checkpoint()
        _no_changes(calls.counts)
        # Reading one VM's configuration fetches that VM's data, not everybody's.
        api = {k: n for k, n in calls.counts.items() if "sso" not in k[1]}
        assert api.get(("GET", "/vms"), 0) == 0, api
        assert api[("GET", "/vms/{vm}")] <= 3 * len(names), api
