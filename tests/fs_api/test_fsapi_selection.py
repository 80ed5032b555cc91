"""A mount's VM selection in the tree (``rhvfs.selection``): every place a VM appears shows
only the selected ones; templates and ``restore/`` are not limited; shards partition."""

from __future__ import annotations

from rhvfs.engine.types import Cluster, DataCenter, Vm
from rhvfs.errors import NotFound
from rhvfs.selection import VmSelection
from rhvfs.vfs.tree import Vfs
from tests.support.fake_backups import FakeBackups
from tests.support.fake_engine import FakeEngine, inventory_engine

DC2 = DataCenter(id="dc-2", name="west", status="up")
CL3 = Cluster(id="cl-3", name="lab", datacenter_id="dc-2")
LABVM = Vm(id="vm-5", name="labvm", status="down", cluster_id="cl-3")


def engine() -> FakeEngine:
    eng = inventory_engine()
    eng.datacenters.append(DC2)
    eng.clusters.append(CL3)
    eng.vms[LABVM.id] = LABVM
    eng.attachments[LABVM.id] = []
    eng.nics[LABVM.id] = []
    eng.tagged["tag-2"] = ["vm-2", "vm-5"]
    return eng


def make(eng: FakeEngine | None = None, **criteria: object) -> Vfs:
    return Vfs(
        eng or engine(),
        FakeBackups(),
        listing_ttl_s=5.0,
        selection=VmSelection.build(**criteria),  # type: ignore[arg-type]
    )


async def names(vfs: Vfs, path: str) -> list[str]:
    return [n.name for n in await vfs.listdir((await vfs.resolve(path)).ino)]


ALL = ["labvm", "myvm", "odd%2Fname", "runvm", "sleepy"]


async def test_without_a_selection_every_vm_shows() -> None:
    assert await names(make(), "/vms") == ALL


async def test_each_criterion_gives_its_vms() -> None:
    cases: list[tuple[dict[str, object], list[str]]] = [
        ({"vms": "my.*|run.*"}, ["myvm", "runvm"]),
        ({"vms": "vm"}, []),  # whole names only
        ({"exclude_vms": ".*vm"}, ["odd%2Fname", "sleepy"]),
        ({"tag": ["bkup"]}, ["myvm", "odd%2Fname"]),
        ({"tag": ["bkup", "other"]}, ["labvm", "myvm", "odd%2Fname", "runvm"]),
        ({"cluster": ["mycluster"]}, ["runvm"]),
        ({"cluster": ["mycluster", "lab"]}, ["labvm", "runvm"]),
        ({"datacenter": ["west"]}, ["labvm"]),
        ({"datacenter": ["Default"]}, ["myvm", "odd%2Fname", "runvm", "sleepy"]),
        ({"datacenter": ["Default"], "tag": ["other"]}, ["runvm"]),
        ({"cluster": ["Default"], "exclude_vms": "sleepy", "vms": ".*"}, ["myvm", "odd%2Fname"]),
    ]
    for criteria, want in cases:
        assert await names(make(**criteria), "/vms") == want, criteria


async def test_the_selection_holds_wherever_a_vm_appears() -> None:
    vfs = make(vms="myvm|runvm|labvm", exclude_vms="runvm")
    assert await names(vfs, "/vms") == ["labvm", "myvm"]
    assert await names(vfs, "/tags/bkup") == ["myvm"]
    assert await names(vfs, "/tags/other") == ["labvm"]
    assert await names(vfs, "/clusters/Default/vms") == ["myvm"]
    assert await names(vfs, "/clusters/mycluster/vms") == []
    assert await names(vfs, "/datacenters/west/clusters/lab/vms") == ["labvm"]
    assert await names(vfs, "/hosts/host1/vms") == []
    # a VM outside the selection is not there by name either
    for path in ("/vms/runvm", "/vms/runvm/@rhv", "/vms/sleepy/vm.json"):
        try:
            await vfs.resolve(path)
        except NotFound:
            continue
        raise AssertionError(f"{path} resolves outside the selection")
    # templates are not VMs: every mount shows them
    assert await names(vfs, "/templates") == ["mytemplate"]
    assert await names(vfs, "/") == [
        ".rhvfs", "clusters", "datacenters", "hosts", "restore", "storagedomains", "tags", "templates", "vms",
    ]  # fmt: skip


async def test_shards_of_n_mounts_partition_the_vms() -> None:
    eng = engine()
    for i in range(40):  # enough VMs that every shard gets some
        vm = Vm(id=f"extra-{i}", name=f"extra{i:02}", status="down", cluster_id="cl-1")
        eng.vms[vm.id] = vm
        eng.attachments[vm.id] = []
        eng.nics[vm.id] = []
    every = await names(make(eng), "/vms")
    for n in (1, 2, 3):
        parts = [await names(make(eng, shard=f"{i}/{n}"), "/vms") for i in range(n)]
        flat = [name for part in parts for name in part]
        assert sorted(flat) == sorted(every), n  # none missing, none in two shards
        assert all(parts), n
        # the same shard of the tags/ view is the same VMs
        tagged = [await names(make(eng, shard=f"{i}/{n}"), "/tags/bkup") for i in range(n)]
        assert sorted(x for part in tagged for x in part) == ["myvm", "odd%2Fname"]
        assert all(set(t) <= set(p) for t, p in zip(tagged, parts, strict=True))
