"""``rhvfs ls`` output, produced by the same VFS code as the mount (fakes below it)."""

from __future__ import annotations

from typing import Any

from rhvfs.commands.ls import list_tree
from rhvfs.vfs.tree import Vfs
from tests.support.fake_backups import FakeBackups
from tests.support.fake_engine import DISK_SIZE, inventory_engine


async def run_ls(
    path: str, *, recursive: bool = False, long: bool = False
) -> tuple[list[str], FakeBackups]:
    backups = FakeBackups()
    vfs = Vfs(inventory_engine(), backups, listing_ttl_s=5.0)
    out: list[str] = []
    await list_tree(vfs, path, recursive=recursive, long=long, out=out)
    return out, backups


async def test_ls_lists_a_directory() -> None:
    out, _ = await run_ls("/tags/bkup")
    assert out == [
        "/tags/bkup/myvm -> ../../vms/myvm",
        "/tags/bkup/odd%2Fname -> ../../vms/odd%2Fname",
    ]
    out, _ = await run_ls("/vms")
    assert out == ["/vms/myvm/", "/vms/odd%2Fname/", "/vms/runvm/", "/vms/sleepy/"]


async def test_ls_follows_links_in_the_path_and_never_opens_sets() -> None:
    out, backups = await run_ls("/tags/bkup/myvm/@rhv", long=True)
    assert out[0].split() == ["-", "25", "2023-11-14T22:13:20Z", "/tags/bkup/myvm/@rhv/vm.ovf"]
    assert out[3].split()[:2] == ["-", str(DISK_SIZE)]
    assert len(out) == 6
    assert backups.opened == []


async def test_ls_json_entries_carry_type_size_time_and_link_target() -> None:
    vfs = Vfs(inventory_engine(), FakeBackups(), listing_ttl_s=5.0)
    out: list[str] = []
    entries: list[dict[str, Any]] = []
    await list_tree(
        vfs, "/tags/bkup/myvm/@rhv", recursive=False, long=True, out=out, entries=entries
    )
    assert len(entries) == len(out) == 6
    first = entries[0]
    assert first == {
        "path": "/tags/bkup/myvm/@rhv/vm.ovf",
        "type": "file",
        "size": 25,
        "mtime": "2023-11-14T22:13:20Z",
        "mtime_ns": 1_700_000_000_000_000_000,
    }
    assert entries[3]["size"] == DISK_SIZE and entries[3]["type"] == "file"
    entries.clear()
    await list_tree(vfs, "/tags/bkup", recursive=False, long=False, out=[], entries=entries)
    assert [(e["path"], e["type"], e.get("target")) for e in entries] == [
        ("/tags/bkup/myvm", "symlink", "../../vms/myvm"),
        ("/tags/bkup/odd%2Fname", "symlink", "../../vms/odd%2Fname"),
    ]
    entries.clear()
    await list_tree(vfs, "/vms/myvm", recursive=False, long=False, out=[], entries=entries)
    assert [(e["path"], e["type"]) for e in entries] == [
        ("/vms/myvm/@rhv", "directory"),
        ("/vms/myvm/disks", "directory"),
        ("/vms/myvm/vm.json", "file"),
    ]
    assert all("target" not in e for e in entries)


async def test_ls_recursive_covers_the_tree() -> None:
    out, backups = await run_ls("/", recursive=True)
    assert "/vms/runvm/@rhv/manifest.json" in out
    assert "/datacenters/Default/clusters/mycluster/vms/runvm -> ../../../../../vms/runvm" in out
    assert "/storagedomains/mydata/disks/disk--vm-1-d0.json" in out
    assert "/.rhvfs/status.json" in out
    assert len(out) == len(set(out)) > 100
    assert backups.opened == []


class IncrementalBackups(FakeBackups):
    """Offers incremental sets; listing one would start an engine backup."""

    def __init__(self) -> None:
        super().__init__()
        self.incremental_calls: list[tuple[str, str]] = []

    async def list_incremental(self, owner: Any, kind: str, since: str | None) -> list[Any]:
        self.incremental_calls.append((owner.id, kind))
        return (await self.list_set(owner))[:3]

    async def since_checkpoints(self, owner: Any) -> list[str]:
        return ["cp-1"]


async def test_ls_recursive_does_not_start_engine_backups() -> None:
    backups = IncrementalBackups()
    vfs = Vfs(inventory_engine(), backups, listing_ttl_s=5.0)
    out: list[str] = []
    await list_tree(vfs, "/vms", recursive=True, long=False, out=out)
    # Hidden from listings (reached by name only), so a tree walk never meets them.
    assert not any("@rhv-incremental" in line or "@rhv-since" in line for line in out)
    assert "/vms/myvm/@rhv/" in out
    assert backups.incremental_calls == []
    out.clear()
    await list_tree(vfs, "/vms/myvm/@rhv-since", recursive=True, long=False, out=out)
    assert out == ["/vms/myvm/@rhv-since/cp-1/"]
    assert backups.incremental_calls == []
    out.clear()
    await list_tree(vfs, "/vms/myvm/@rhv-incremental", recursive=True, long=False, out=out)
    assert out[0] == "/vms/myvm/@rhv-incremental/vm.ovf"
    assert backups.incremental_calls == [("vm-1", "incremental")]
