"""The VFS tree over fake engine/backups: layout, names, inodes, caching, data."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from rhvfs.engine.types import DataCenter, Vm
from rhvfs.errors import IsADirectory, NotADirectory, NotFound, VmStateError
from rhvfs.vfs.names import ROOT_INODE
from rhvfs.vfs.nodes import Kind
from rhvfs.vfs.tree import Vfs
from tests.support.fake_backups import FakeBackups, image_bytes
from tests.support.fake_engine import DISK_SIZE, FakeEngine, inventory_engine


def make_vfs(ttl: float = 5.0) -> tuple[Vfs, FakeEngine, FakeBackups]:
    engine, backups = inventory_engine(), FakeBackups()
    return (
        Vfs(engine, backups, listing_ttl_s=ttl, status_info=lambda: {"mountpoint": "/x"}),
        engine,
        backups,
    )


async def names(vfs: Vfs, path: str) -> list[str]:
    node = await vfs.resolve(path)
    return [n.name for n in await vfs.listdir(node.ino)]


async def read_all(vfs: Vfs, path: str, chunk: int = 128 * 1024) -> bytes:
    fh = await vfs.open((await vfs.resolve(path)).ino)
    out = bytearray()
    try:
        while True:
            data = await vfs.read(fh, len(out), chunk)
            if not data:
                return bytes(out)
            out += data
    finally:
        await vfs.release(fh)


async def test_top_level_layout() -> None:
    vfs, _, _ = make_vfs()
    assert await names(vfs, "/") == [
        ".rhvfs", "clusters", "datacenters", "hosts", "restore", "storagedomains", "tags", "templates", "vms",
    ]  # fmt: skip
    assert await names(vfs, "/vms") == ["myvm", "odd%2Fname", "runvm", "sleepy"]
    assert await names(vfs, "/vms/myvm") == ["@rhv", "disks", "vm.json"]
    assert await names(vfs, "/restore") == []
    assert await names(vfs, "/templates/mytemplate") == ["@rhv", "disks", "template.json"]
    assert await names(vfs, "/storagedomains/mydata") == [
        "disks",
        "free_space",
        "storagedomain.json",
    ]
    assert await names(vfs, "/hosts/host1/vms") == ["runvm"]


async def test_backup_set_lists_config_first_with_attributes() -> None:
    vfs, _, backups = make_vfs()
    listing = await vfs.listdir((await vfs.resolve("/vms/myvm/@rhv")).ino)
    assert [n.name for n in listing] == [
        "vm.ovf", "vm.xml", "manifest.json", "disk--vm-1-d0.raw", "disk--vm-1-d1.raw", "data--vm-1-d2.raw",
    ]  # fmt: skip
    image = listing[3]
    assert (image.size, image.blocks, image.mtime_ns) == (DISK_SIZE, 2048, 1_700_000_000 * 10**9)
    assert backups.opened == []  # listing never starts a session


async def test_symlinks_are_relative_and_resolve_to_the_vm() -> None:
    vfs, _, _ = make_vfs()
    vm = await vfs.resolve("/vms/runvm")
    cases = {
        "/clusters/mycluster/vms/runvm": "../../../vms/runvm",
        "/datacenters/Default/clusters/mycluster/vms/runvm": "../../../../../vms/runvm",
        "/hosts/host1/vms/runvm": "../../../vms/runvm",
    }
    for path, target in cases.items():
        link = await vfs.resolve(path, follow_last=False)
        assert link.kind is Kind.LINK
        assert await vfs.readlink(link.ino) == target
        assert (await vfs.resolve(path)).ino == vm.ino
    assert await names(vfs, "/tags/bkup") == ["myvm", "odd%2Fname"]
    odd = await vfs.resolve("/tags/bkup/odd%2Fname", follow_last=False)
    assert await vfs.readlink(odd.ino) == "../../vms/odd%2Fname"
    sd = await vfs.resolve("/datacenters/Default/storagedomains/mydata", follow_last=False)
    assert await vfs.readlink(sd.ino) == "../../../storagedomains/mydata"
    assert (await vfs.resolve("/datacenters/Default/storagedomains/mydata/free_space")).size == len(
        b"5368709120\n"
    )


async def test_inodes_are_equal_across_instances_and_unique() -> None:
    seen: list[dict[str, int]] = []
    for _ in range(2):
        vfs, _, _ = make_vfs()
        inos = {}
        for path in (
            "/vms/myvm",
            "/vms/myvm/@rhv/disk--vm-1-d0.raw",
            "/vms/myvm/vm.json",
            "/tags/bkup",
        ):
            inos[path] = (await vfs.resolve(path)).ino
        seen.append(inos)
    assert seen[0] == seen[1]
    assert len(set(seen[0].values())) == len(seen[0])
    assert (await make_vfs()[0].resolve("/")).ino == ROOT_INODE


async def test_listing_vms_costs_one_engine_call_and_is_cached(
    autojump_clock: trio.testing.MockClock,
) -> None:
    vfs, engine, _ = make_vfs(ttl=5.0)
    await vfs.listdir((await vfs.resolve("/vms")).ino)
    assert engine.calls == ["list_vms"]
    # cluster and tag listings reuse the cached VM list
    await names(vfs, "/clusters/Default/vms")
    await names(vfs, "/clusters/mycluster/vms")
    assert engine.calls.count("list_vms") == 1
    await trio.sleep(5.1)
    await names(vfs, "/vms")
    assert engine.calls.count("list_vms") == 2


async def test_vm_json_size_is_exact_and_mtime_stable() -> None:
    vfs, _, _ = make_vfs()
    node = await vfs.resolve("/vms/runvm/vm.json")
    data = await read_all(vfs, "/vms/runvm/vm.json")
    assert len(data) == node.size
    doc = json.loads(data)
    assert doc["status"] == "up"
    assert doc["cluster"] == {"id": "cl-2", "name": "mycluster"}
    assert doc["host"] == {"id": "host-1", "name": "host1"}
    assert [d["id"] for d in doc["disks"]] == ["vm-2-d0", "vm-2-d1", "vm-2-d2"]
    other = await make_vfs()[0].resolve("/vms/runvm/vm.json")
    assert (other.mtime_ns, other.size) == (node.mtime_ns, node.size)


async def test_read_image_through_session_and_release() -> None:
    vfs, _, backups = make_vfs()
    path = "/vms/myvm/@rhv/disk--vm-1-d0.raw"
    data = await read_all(vfs, path, chunk=100_000)
    assert data == image_bytes("vm-1", "disk:vm-1-d0", DISK_SIZE)
    assert backups.opened == [("vm-1", "disk:vm-1-d0")]
    assert backups.released == 1 and vfs.open_handles == 0
    disk_data = await read_all(vfs, "/vms/myvm/disks/data.raw")
    assert disk_data == image_bytes("vm-1", "disk:vm-1-d2", DISK_SIZE)


async def test_open_keeps_a_content_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    vfs, engine, _ = make_vfs(ttl=1.0)
    node = await vfs.resolve("/vms/myvm/vm.json")
    fh = await vfs.open(node.ino)
    first = await vfs.read(fh, 0, 10_000)
    engine.vms["vm-1"] = Vm(id="vm-1", name="myvm", status="up", cluster_id="cl-1")
    await trio.sleep(1.5)
    fresh = await read_all(vfs, "/vms/myvm/vm.json")
    assert json.loads(fresh)["status"] == "up"
    assert await vfs.read(fh, 0, 10_000) == first  # the open handle still sees its snapshot
    assert json.loads(first)["status"] == "down"
    await vfs.release(fh)


async def test_errors() -> None:
    vfs, _, _ = make_vfs()
    with pytest.raises(NotFound):
        await vfs.resolve("/vms/nosuchvm")
    with pytest.raises(NotADirectory):  # ENOTDIR: test_fsapi_operations.test_errno_table
        await vfs.resolve("/vms/myvm/vm.json/x")
    with pytest.raises(IsADirectory):
        await vfs.open((await vfs.resolve("/vms")).ino)
    with pytest.raises(VmStateError, match="suspended"):
        await vfs.open((await vfs.resolve("/vms/sleepy/@rhv/disk--vm-4-d0.raw")).ino)
    assert vfs.open_handles == 0


async def test_status_json_is_fresh_on_each_open() -> None:
    vfs, _, _ = make_vfs()
    fh = await vfs.open((await vfs.resolve("/vms/myvm/@rhv/vm.ovf")).ino)
    status = json.loads(await read_all(vfs, "/.rhvfs/status.json"))
    assert status["sessions"] == {"open_handles": 1, "owners": ["vm-1"]}
    assert status["mountpoint"] == "/x"
    await vfs.release(fh)
    status = json.loads(await read_all(vfs, "/.rhvfs/status.json"))
    assert status["sessions"] == {"open_handles": 0, "owners": []}
    node = await vfs.getattr((await vfs.resolve("/.rhvfs/status.json")).ino)
    assert node.size == len(await read_all(vfs, "/.rhvfs/status.json"))


async def test_status_json_never_shows_a_ticket_or_token() -> None:
    ticket = "0f3c1a2b-9d8e-4c7b-a6f5-0123456789ab"
    error = f"GET https://localhost:54322/images/{ticket} failed; Authorization: Bearer abc.def"
    engine, backups = inventory_engine(), FakeBackups()
    vfs = Vfs(
        engine,
        backups,
        listing_ttl_s=5.0,
        status_info=lambda: {"mountpoint": "/x", "last_error": error},
    )
    status = json.loads(await read_all(vfs, "/.rhvfs/status.json"))
    assert status["last_error"] == (
        "GET https://localhost:54322/images/<ticket> failed; Authorization: <token>"
    )
    assert status["mountpoint"] == "/x"


async def test_a_datacenter_links_its_hosts_templates_and_vms() -> None:
    vfs, engine, _ = make_vfs()
    assert await names(vfs, "/datacenters/Default") == [
        "clusters", "datacenter.json", "hosts", "storagedomains", "templates", "vms",
    ]  # fmt: skip
    assert await names(vfs, "/datacenters/Default/vms") == await names(vfs, "/vms")
    cases = {
        "/datacenters/Default/hosts/host1": ("../../../hosts/host1", "/hosts/host1"),
        "/datacenters/Default/templates/mytemplate": (
            "../../../templates/mytemplate",
            "/templates/mytemplate",
        ),
        "/datacenters/Default/vms/odd%2Fname": ("../../../vms/odd%2Fname", "/vms/odd%2Fname"),
    }
    for path, (target, top) in cases.items():
        link = await vfs.resolve(path, follow_last=False)
        assert link.kind is Kind.LINK
        assert await vfs.readlink(link.ino) == target
        assert (await vfs.resolve(path)).ino == (await vfs.resolve(top)).ino
    # a data center without clusters has none of them
    engine.datacenters = [*engine.datacenters, DataCenter(id="dc-2", name="empty")]
    vfs2 = Vfs(engine, FakeBackups(), listing_ttl_s=5.0)
    for sub in ("hosts", "templates", "vms"):
        assert await names(vfs2, f"/datacenters/empty/{sub}") == []


async def test_vm_json_says_each_disks_backup_mode_and_which_sets_work() -> None:
    from dataclasses import replace

    vfs, engine, _ = make_vfs()
    atts = engine.attachments["vm-1"]
    atts[0] = replace(atts[0], disk=replace(atts[0].disk, format="cow", backup="incremental"))
    atts[1] = replace(atts[1], disk=replace(atts[1].disk, format="cow", backup="none"))
    doc = json.loads(await read_all(vfs, "/vms/myvm/vm.json"))
    assert [(d["format"], d["backup"], d["backup_mode"]) for d in doc["disks"]] == [
        ("cow", "incremental", "incremental"),
        ("cow", "none", "full"),
        ("raw", None, "full"),
    ]
    assert doc["disks"][0]["backup_mode_reason"] is None
    assert "not enabled" in doc["disks"][1]["backup_mode_reason"]
    assert "raw disk" in doc["disks"][2]["backup_mode_reason"]
    sets = doc["sets"]
    assert sets["@rhv"] == {
        "available": True, "changes_only": False, "reason": None, "method": "snapshot",
    }  # fmt: skip
    assert sets["@rhv-incremental"]["available"] and sets["@rhv-incremental"]["changes_only"]
    assert (
        sets["@rhv-incremental"]["reason"] == "2 disk(s) without incremental backup get full images"
    )
    assert sets["@rhv-differential"] == sets["@rhv-incremental"]
    assert sets["@rhv-since"]["available"] and "checkpoints" in sets["@rhv-since"]["reason"]

    # no incremental-enabled disk: the sets work, with full images every time
    raw = json.loads(await read_all(vfs, "/vms/runvm/vm.json"))["sets"]
    assert raw["@rhv-incremental"]["available"] and not raw["@rhv-incremental"]["changes_only"]
    assert raw["@rhv-incremental"]["reason"].startswith("no disk has incremental backup enabled")
    # suspended: nothing but the configuration
    asleep = json.loads(await read_all(vfs, "/vms/sleepy/vm.json"))["sets"]
    assert not any(s["available"] for s in asleep.values())
    assert asleep["@rhv"]["reason"] == "the VM is suspended: only its configuration can be read"


async def test_status_json_names_the_engine_product_once_known() -> None:
    from rhvfs.engine.types import EngineProduct

    vfs, engine, _ = make_vfs()
    assert json.loads(await read_all(vfs, "/.rhvfs/status.json"))["engine"] is None
    asked: list[int] = []

    async def product_info() -> EngineProduct:
        asked.append(1)
        return EngineProduct(name="oVirt Engine", version="4.5.5-1.el8")

    engine.product_info = product_info  # type: ignore[attr-defined]
    for _ in range(2):
        assert await vfs.inventory.engine_product() == EngineProduct("oVirt Engine", "4.5.5-1.el8")
    assert asked == [1]  # asked once
    status = json.loads(await read_all(vfs, "/.rhvfs/status.json"))
    assert status["engine"] == {"name": "oVirt Engine", "version": "4.5.5-1.el8"}
