"""Facade behaviour against a scripted fake SDK: idempotent creates, phase walks, cleanup.

The fake stands in for ``ovirtsdk4.Connection``'s service tree and raises real
SDK exception types, so translation and retries run exactly as in production.
Time is a MockClock: polls and backoffs cost nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ovirtsdk4
import ovirtsdk4.types as sdk
import pytest
import trio
import trio.testing

from rhvfs.config import Config
from rhvfs.engine import Engine
from rhvfs.errors import Conflict, EngineError, EngineUnavailable
from rhvfs.retry import RetryPolicy


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def _err(cls: type[ovirtsdk4.Error], code: int | None) -> ovirtsdk4.Error:
    e = cls(
        f"HTTP response code is {code}."
        if code
        else "Error while sending HTTP request: (56, 'Recv failure')"
    )
    e.code = code
    return e


def not_found() -> ovirtsdk4.Error:
    return _err(ovirtsdk4.NotFoundError, 404)


def lost() -> ovirtsdk4.Error:
    return _err(ovirtsdk4.Error, None)


class Node:
    """Any attribute is a method returning a child node or calling a handler.

    Ids passed to ``*_service(id)`` methods reach the handler as ``kwargs["_ids"]``.
    """

    def __init__(self, api: FakeApi, path: tuple[str, ...], ids: tuple[str, ...] = ()) -> None:
        self._api = api
        self._path = path
        self._ids = ids

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def method(*args: Any, **kwargs: Any) -> Any:
            if name.endswith("_service"):
                return Node(
                    self._api,
                    (*self._path, name.removesuffix("_service")),
                    (*self._ids, *map(str, args)),
                )
            return self._api.handle((*self._path, name), args, {**kwargs, "_ids": self._ids})

        return method


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.handlers: dict[str, Callable[..., Any]] = {}

    def on(self, key: str, fn: Callable[..., Any]) -> None:
        self.handlers[key] = fn

    def handle(self, path: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # key: service names (ids dropped) + verb, e.g. "vms.vm.snapshots.add"
        key = ".".join(path)
        self.calls.append(key)
        return self.handlers[key](args, kwargs)


class FakeConn:
    def __init__(self, api: FakeApi) -> None:
        self.api = api

    def system_service(self) -> Node:
        return Node(self.api, ())


class FakePool:
    def __init__(self, api: FakeApi) -> None:
        self.api = api

    def acquire(self) -> FakeConn:
        return FakeConn(self.api)

    def release(self, conn: object, *, broken: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def engine_api() -> tuple[Engine, FakeApi]:
    config = Config(
        engine_url="https://engine.invalid",
        username="admin@internal",
        password="x",
        system_tries=3,
        system_interval=1.0,
        system_timeout=60.0,
    )
    engine = Engine(
        config, poll=RetryPolicy.for_polling(interval_s=0.1, max_interval_s=1.0, timeout_s=30.0)
    )
    api = FakeApi()
    engine._pool = FakePool(api)  # type: ignore[assignment]
    engine.run_inline = True
    return engine, api


async def test_create_snapshot_after_lost_response_finds_it_instead_of_duplicating(
    autojump_clock, engine_api
) -> None:
    engine, api = engine_api
    snaps: list[sdk.Snapshot] = [
        sdk.Snapshot(
            id="active",
            description="Active VM",
            snapshot_type=sdk.SnapshotType.ACTIVE,
            snapshot_status=sdk.SnapshotStatus.OK,
        )
    ]
    polls = {"n": 0}

    def add(path: Any, kw: Any) -> Any:
        snaps.append(
            sdk.Snapshot(
                id="S1",
                description="rhvfs-1",
                snapshot_status=sdk.SnapshotStatus.LOCKED,
                snapshot_type=sdk.SnapshotType.REGULAR,
            )
        )
        raise lost()  # created, but the answer never arrived

    def get(path: Any, kw: Any) -> Any:
        polls["n"] += 1
        if polls["n"] >= 3:
            snaps[1].snapshot_status = sdk.SnapshotStatus.OK
        return snaps[1]

    api.on("vms.vm.snapshots.add", add)
    api.on("vms.vm.snapshots.list", lambda p, k: list(snaps))
    api.on("vms.vm.snapshots.snapshot.get", get)
    snap = await engine.create_snapshot("V1", description="rhvfs-1")
    assert (snap.id, snap.status, snap.vm_id) == ("S1", "ok", "V1")
    assert api.calls.count("vms.vm.snapshots.add") == 1
    assert len(snaps) == 2


async def test_start_transfer_walks_initializing_to_transferring(
    autojump_clock, engine_api
) -> None:
    engine, api = engine_api
    phases = iter(["initializing", "initializing", "transferring"])
    sent: list[sdk.ImageTransfer] = []

    def add(args: Any, kw: Any) -> Any:
        sent.append(args[0])
        return sdk.ImageTransfer(id="T1", phase=sdk.ImageTransferPhase.INITIALIZING)

    def get(path: Any, kw: Any) -> Any:
        phase = next(phases)
        url = "https://h:54322/images/tk" if phase == "transferring" else None
        return sdk.ImageTransfer(
            id="T1", phase=sdk.ImageTransferPhase(phase), transfer_url=url, image=sdk.Image(id="D1")
        )

    api.on("image_transfers.add", add)
    api.on("image_transfers.image_transfer.get", get)
    start = trio.current_time()
    transfer = await engine.start_transfer(snapshot_image_id="I1", transfer_id="T1")
    assert (transfer.phase, transfer.transfer_url, transfer.disk_id) == (
        "transferring",
        "https://h:54322/images/tk",
        "D1",
    )
    assert trio.current_time() - start == pytest.approx(0.1 + 0.15)
    assert "image_transfers.image_transfer.cancel" not in api.calls
    body = sent[0]
    assert (body.id, body.snapshot.id, body.disk, body.direction, body.format) == (
        "T1",
        "I1",
        None,
        sdk.ImageTransferDirection.DOWNLOAD,
        sdk.DiskFormat.RAW,
    )


async def test_start_transfer_that_fails_is_cancelled(autojump_clock, engine_api) -> None:
    engine, api = engine_api
    api.on(
        "image_transfers.add",
        lambda p, k: sdk.ImageTransfer(id="T2", phase=sdk.ImageTransferPhase.INITIALIZING),
    )
    api.on(
        "image_transfers.image_transfer.get",
        lambda p, k: sdk.ImageTransfer(id="T2", phase=sdk.ImageTransferPhase.FINISHED_FAILURE),
    )
    api.on("image_transfers.image_transfer.cancel", lambda p, k: None)
    with pytest.raises(EngineError, match="finished_failure, not transferring"):
        await engine.start_transfer(disk_id="D1")
    assert api.calls[-1] == "image_transfers.image_transfer.cancel"


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="timed out")
async def test_start_transfer_that_never_starts_times_out_and_is_cancelled(
    autojump_clock, engine_api
) -> None:
    engine, api = engine_api
    api.on(
        "image_transfers.add",
        lambda p, k: sdk.ImageTransfer(id="T3", phase=sdk.ImageTransferPhase.INITIALIZING),
    )
    api.on(
        "image_transfers.image_transfer.get",
        lambda p, k: sdk.ImageTransfer(id="T3", phase=sdk.ImageTransferPhase.INITIALIZING),
    )
    api.on("image_transfers.image_transfer.cancel", lambda p, k: None)
    start = trio.current_time()
    with pytest.raises(EngineUnavailable, match="timed out after 30s"):
        await engine.start_transfer(disk_id="D1")
    assert trio.current_time() - start == pytest.approx(30.0)
    assert api.calls[-1] == "image_transfers.image_transfer.cancel"


async def test_finalize_accepts_404_when_the_disk_is_ok(autojump_clock, engine_api) -> None:
    engine, api = engine_api
    engine.transfer_disks["T4"] = "D1"
    api.on("image_transfers.image_transfer.finalize", lambda p, k: None)

    def get(path: Any, kw: Any) -> Any:
        raise not_found()

    disk_states = iter([sdk.DiskStatus.LOCKED, sdk.DiskStatus.OK])
    api.on("image_transfers.image_transfer.get", get)
    api.on("disks.disk.get", lambda p, k: sdk.Disk(id="D1", status=next(disk_states)))
    await engine.finalize_transfer("T4")
    assert api.calls.count("disks.disk.get") == 2


async def test_finalize_raises_on_finished_failure(autojump_clock, engine_api) -> None:
    engine, api = engine_api
    phases = iter(["finalizing_success", "finalizing_failure", "finished_failure"])
    api.on("image_transfers.image_transfer.finalize", lambda p, k: None)
    api.on(
        "image_transfers.image_transfer.get",
        lambda p, k: sdk.ImageTransfer(
            id="T5",
            phase=sdk.ImageTransferPhase(next(phases, "finished_failure")),
            image=sdk.Image(id="D1"),
        ),
    )
    with pytest.raises(EngineError, match="finished_failure"):
        await engine.finalize_transfer("T5")


async def test_remove_snapshot_waits_for_404(autojump_clock, engine_api) -> None:
    engine, api = engine_api
    answers: list[Any] = [
        sdk.Snapshot(id="S1", snapshot_status=sdk.SnapshotStatus.LOCKED),
        sdk.Snapshot(id="S1", snapshot_status=sdk.SnapshotStatus.LOCKED),
        not_found(),
    ]

    def get(path: Any, kw: Any) -> Any:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    api.on("vms.vm.snapshots.snapshot.remove", lambda p, k: None)
    api.on("vms.vm.snapshots.snapshot.get", get)
    await engine.remove_snapshot("V1", "S1")
    assert answers == []


REMOVALS = {
    # what, the service's key, an answer of a GET while the removal runs
    "vm": ("vms.vm", lambda: sdk.Vm(id="X1", name="x", status=sdk.VmStatus.IMAGE_LOCKED)),
    "disk": ("disks.disk", lambda: sdk.Disk(id="X1", alias="x", status=sdk.DiskStatus.LOCKED)),
    "template": (
        "templates.template",
        lambda: sdk.Template(id="X1", name="x", status=sdk.TemplateStatus.LOCKED),
    ),
}


def _remove(engine: Engine, kind: str) -> Any:
    return {"vm": engine.remove_vm, "disk": engine.remove_disk, "template": engine.remove_template}[
        kind
    ]("X1")


@pytest.mark.parametrize("kind", sorted(REMOVALS))
async def test_a_removal_whose_answer_was_lost_is_not_failed_by_the_retrys_409(
    autojump_clock, engine_api, kind: str
) -> None:
    """The engine began removing it but its answer never arrived; the retry meets 409 (the
    removal is under way): that is success once the object is gone, not an error."""
    engine, api = engine_api
    service, answer = REMOVALS[kind]
    deletes: list[int] = []
    gets = [answer(), answer()]

    def delete(*_: Any) -> None:
        deletes.append(1)
        raise lost() if len(deletes) == 1 else _err(ovirtsdk4.Error, 409)

    def get(*_: Any) -> Any:
        if gets:
            return gets.pop()
        raise not_found()

    api.on(f"{service}.remove", delete)
    api.on(f"{service}.get", get)
    await _remove(engine, kind)
    assert len(deletes) == 2 and gets == []


@pytest.mark.parametrize("kind", sorted(REMOVALS))
async def test_a_removal_the_engine_refuses_at_once_fails(
    autojump_clock, engine_api, kind: str
) -> None:
    """409 on the first try is the engine refusing (locked, in use): the caller learns it."""
    engine, api = engine_api
    service, _ = REMOVALS[kind]
    api.on(f"{service}.remove", lambda *_: (_ for _ in ()).throw(_err(ovirtsdk4.Error, 409)))
    with pytest.raises(Conflict):
        await _remove(engine, kind)
    assert api.calls == [f"{service}.remove"]


async def test_start_backup_failing_is_stopped(autojump_clock, engine_api) -> None:
    engine, api = engine_api
    phases = iter(["initializing", "starting", "failed"])
    api.on(
        "vms.vm.backups.add",
        lambda p, k: sdk.Backup(id="B1", phase=sdk.BackupPhase.INITIALIZING, vm=sdk.Vm(id="V1")),
    )
    api.on(
        "vms.vm.backups.backup.get",
        lambda p, k: sdk.Backup(id="B1", phase=sdk.BackupPhase(next(phases))),
    )
    api.on("vms.vm.backups.backup.finalize", lambda p, k: None)
    with pytest.raises(EngineError, match="backup is failed"):
        await engine.start_backup("V1", ["D1"], backup_id="B1")
    assert api.calls[-1] == "vms.vm.backups.backup.finalize"


async def test_create_disk_retry_adopts_the_disk_with_our_id(autojump_clock, engine_api) -> None:
    engine, api = engine_api
    created: dict[str, sdk.Disk] = {}

    def add(path: Any, kw: Any) -> Any:
        created["D9"] = sdk.Disk(
            id="D9", name="x", provisioned_size=1 << 20, status=sdk.DiskStatus.LOCKED
        )
        raise _err(ovirtsdk4.Error, 503)

    def get(path: Any, kw: Any) -> Any:
        if "D9" not in created:
            raise not_found()
        d = created["D9"]
        if api.calls.count("disks.disk.get") > 2:
            d.status = sdk.DiskStatus.OK
        return d

    api.on("disks.add", add)
    api.on("disks.disk.get", get)
    disk = await engine.create_disk(
        alias="x",
        provisioned_size=1 << 20,
        format="raw",
        sparse=True,
        storage_domain="mydata",
        disk_id="D9",
    )
    assert (disk.id, disk.status) == ("D9", "ok")
    assert api.calls.count("disks.add") == 1


async def test_vms_by_tag_falls_back_when_the_search_is_rejected(
    autojump_clock, engine_api
) -> None:
    engine, api = engine_api
    api.on("tags.tag.get", lambda a, k: sdk.Tag(id="T1", name="my tag"))
    searches: list[str] = []

    def vm_list(args: Any, kw: Any) -> Any:
        if kw.get("search"):
            searches.append(kw["search"])
            raise _err(ovirtsdk4.Error, 400)
        return [sdk.Vm(id="V1", name="a"), sdk.Vm(id="V2", name="b")]

    vm_tags = {"V1": [sdk.Tag(id="T1")], "V2": [sdk.Tag(id="T9")]}
    api.on("vms.list", vm_list)
    api.on("vms.vm.tags.list", lambda a, k: vm_tags[k["_ids"][0]])
    vms = await engine.vms_by_tag("T1")
    assert searches == ['tag="my tag"']
    assert [v.id for v in vms] == ["V1"]


async def test_disk_attachments_fill_disks_and_keep_order(autojump_clock, engine_api) -> None:
    engine, api = engine_api
    api.on(
        "vms.vm.disk_attachments.list",
        lambda a, k: [
            sdk.DiskAttachment(
                id="D2", disk=sdk.Disk(id="D2"), interface=sdk.DiskInterface.VIRTIO, bootable=False
            ),
            sdk.DiskAttachment(
                id="D1", disk=sdk.Disk(id="D1"), interface=sdk.DiskInterface.SATA, bootable=True
            ),
        ],
    )
    sizes = {"D1": 1 << 30, "D2": 2 << 30}
    api.on(
        "disks.disk.get",
        lambda a, k: sdk.Disk(id=k["_ids"][0], provisioned_size=sizes[k["_ids"][0]]),
    )
    atts = await engine.disk_attachments("V1")
    assert [(a.disk.id, a.disk.provisioned_size, a.interface, a.bootable) for a in atts] == [
        ("D2", 2 << 30, "virtio", False),
        ("D1", 1 << 30, "sata", True),
    ]


async def test_disk_attachments_surface_not_found_plainly(autojump_clock, engine_api) -> None:
    engine, api = engine_api
    api.on(
        "vms.vm.disk_attachments.list",
        lambda a, k: [sdk.DiskAttachment(id="D1", disk=sdk.Disk(id="D1"))],
    )

    def gone(a: Any, k: Any) -> Any:
        raise not_found()

    api.on("disks.disk.get", gone)
    from rhvfs.errors import NotFound

    with pytest.raises(NotFound):
        await engine.disk_attachments("V1")


async def test_create_disk_that_turns_illegal_is_removed(autojump_clock, engine_api) -> None:
    engine, api = engine_api
    states = iter([sdk.DiskStatus.LOCKED, sdk.DiskStatus.ILLEGAL])
    api.on("disks.add", lambda a, k: sdk.Disk(id="D7", status=sdk.DiskStatus.LOCKED))
    api.on("disks.disk.get", lambda a, k: sdk.Disk(id="D7", status=next(states)))
    api.on("disks.disk.remove", lambda a, k: None)
    with pytest.raises(EngineError, match="disk D7 is illegal"):
        await engine.create_disk(
            alias="x",
            provisioned_size=1 << 20,
            format="cow",
            sparse=True,
            storage_domain="mydata",
            disk_id="D7",
        )
    assert api.calls == ["disks.add", "disks.disk.get", "disks.disk.get", "disks.disk.remove"]


async def test_nic_profile_names_are_cached_for_the_listing_ttl(autojump_clock, engine_api) -> None:
    engine, api = engine_api
    api.on(
        "vms.vm.nics.list",
        lambda a, k: [
            sdk.Nic(
                id="N1",
                name="nic1",
                vnic_profile=sdk.VnicProfile(id="P1"),
                mac=sdk.Mac(address="56:6f:00:00:00:01"),
            )
        ],
    )
    api.on(
        "vnic_profiles.list",
        lambda a, k: [sdk.VnicProfile(id="P1", name="ovirtmgmt", network=sdk.Network(id="NET1"))],
    )
    api.on("networks.list", lambda a, k: [sdk.Network(id="NET1", name="ovirtmgmt-net")])
    first = await engine.vm_nics("V1")
    second = await engine.vm_nics("V2")
    assert first == second
    assert (first[0].vnic_profile_name, first[0].network_name, first[0].mac) == (
        "ovirtmgmt",
        "ovirtmgmt-net",
        "56:6f:00:00:00:01",
    )
    assert api.calls.count("vnic_profiles.list") == 1
    await trio.sleep(engine.config.listing_ttl)
    await engine.vm_nics("V1")
    assert api.calls.count("vnic_profiles.list") == 2


async def test_start_vm_retry_after_lost_response_accepts_conflict(
    autojump_clock, engine_api
) -> None:
    engine, api = engine_api
    status = {"s": sdk.VmStatus.DOWN}

    def start(a: Any, k: Any) -> Any:
        if status["s"] != sdk.VmStatus.DOWN:
            raise _err(ovirtsdk4.Error, 409)
        status["s"] = sdk.VmStatus.POWERING_UP
        raise lost()

    def get(a: Any, k: Any) -> Any:
        vm = sdk.Vm(id="V1", name="v", status=status["s"])
        status["s"] = sdk.VmStatus.UP if api.calls.count("vms.vm.get") > 2 else status["s"]
        return vm

    api.on("vms.vm.start", start)
    api.on("vms.vm.get", get)
    vm = await engine.start_vm("V1")
    assert vm.status == "up"
    assert api.calls.count("vms.vm.start") == 2


def _sdk_vm(vm_id: str, *, followed: bool) -> sdk.Vm:
    disk = sdk.Disk(id=f"d-{vm_id}", alias=f"{vm_id}_os", provisioned_size=1 << 20)
    profile = sdk.VnicProfile(id="p1", name="ovirtmgmt", network=sdk.Network(id="n1", name="net"))
    return sdk.Vm(
        id=vm_id,
        name=f"vm-{vm_id}",
        status=sdk.VmStatus.DOWN,
        disk_attachments=[sdk.DiskAttachment(id=disk.id, disk=disk)] if followed else [],
        nics=[sdk.Nic(id=f"n-{vm_id}", name="nic1", vnic_profile=profile)] if followed else [],
        tags=[sdk.Tag(id="t1")] if followed else [],
    )


async def test_the_vm_listing_is_one_call_and_answers_listed_vm_until_its_ttl(
    autojump_clock, engine_api
) -> None:
    """Issue 12: one ``list(follow=...)`` fills attachments, NICs (named from the inlined
    profile) and tags; ``listed_vm`` answers from it for ``listing_ttl``, concurrent callers
    share one new listing after that, and a VM rhvfs changed is fetched alone."""
    engine, api = engine_api
    lists: list[dict[str, Any]] = []

    def vms_list(args: Any, kwargs: dict[str, Any]) -> list[sdk.Vm]:
        lists.append(kwargs)
        return [_sdk_vm(f"1111111{i}-0000-4000-8000-000000000000", followed=True) for i in range(3)]

    api.on("vms.list", vms_list)
    api.on("vms.vm.get", lambda a, kw: _sdk_vm(kw["_ids"][0], followed=True))
    vms = await engine.list_vms()
    assert [kw.get("follow") for kw in lists] == [
        "disk_attachments.disk,nics.vnic_profile.network,tags"
    ]
    assert [(v.tag_ids, [a.disk.alias for a in v.disk_attachments or ()]) for v in vms] == [
        (("t1",), [f"{v.id}_os"]) for v in vms
    ]
    assert [(n.vnic_profile_name, n.network_name) for n in vms[0].nics or ()] == [
        ("ovirtmgmt", "net")
    ]
    assert api.calls == ["vms.list"]  # no vnic profile listing: they came inlined

    assert await engine.listed_vm(vms[1].id) == vms[1]
    assert api.calls == ["vms.list"]
    engine.forget_listed(vms[1].id)
    assert (await engine.listed_vm(vms[1].id)).disk_attachments == vms[1].disk_attachments
    assert api.calls == ["vms.list", "vms.vm.get"]
    await trio.sleep(engine.config.listing_ttl)
    async with trio.open_nursery() as nursery:
        for vm in vms:
            nursery.start_soon(engine.listed_vm, vm.id)
    assert api.calls == ["vms.list", "vms.vm.get", "vms.list"]
    assert dict(engine.calls_by_kind) == {"get vm <id>": 1, "list vms": 2}


def _serve_vm_and_a_snapshot_removal(api: FakeApi, vm_id: str) -> list[sdk.Vm]:
    """``vms.list``/``vms.vm.get`` answer ``vm_id``; ``remove_snapshot("S1")`` is accepted and
    the snapshot is locked for two polls, then gone. Returns the VMs the engine answered."""
    answered: list[sdk.Vm] = []
    polls = [sdk.Snapshot(id="S1", snapshot_status=sdk.SnapshotStatus.LOCKED)] * 2

    def vm(*_: Any) -> sdk.Vm:
        answered.append(_sdk_vm(vm_id, followed=True))
        return answered[-1]

    def snapshot_get(*_: Any) -> sdk.Snapshot:
        if polls:
            return polls.pop()
        raise not_found()

    api.on("vms.list", lambda a, kw: [vm()])
    api.on("vms.vm.get", vm)
    api.on("vms.vm.snapshots.snapshot.remove", lambda a, kw: None)
    api.on("vms.vm.snapshots.snapshot.get", snapshot_get)
    return answered


async def test_answers_taken_while_rhvfs_changes_a_vm_are_not_kept(
    autojump_clock, engine_api
) -> None:
    """A listing or fetch of a VM taken while rhvfs removes its snapshot may show it in the
    middle of the merge (the snapshot's volume still active, the disk unlocked): its caller
    gets it, but ``listed_vm`` asks the engine again once the removal ended."""
    engine, api = engine_api
    vm_id = "11111110-0000-4000-8000-000000000000"
    _serve_vm_and_a_snapshot_removal(api, vm_id)
    await engine.list_vms()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.remove_snapshot, vm_id, "S1")
        await trio.sleep(0.05)  # the removal waits for the snapshot to go
        assert "vms.vm.snapshots.snapshot.remove" in api.calls
        await engine.list_vms()  # a listing while the snapshot is being removed
        await engine.listed_vm(vm_id)  # and a fetch of the VM alone
    api.calls.clear()
    await engine.listed_vm(vm_id)
    await engine.listed_vm(vm_id)
    assert api.calls == ["vms.vm.get"]  # asked again after the removal, then kept


async def test_a_listing_in_flight_when_rhvfs_changes_a_vm_is_not_kept(engine_api) -> None:
    """A listing that began before a snapshot removal and returned after it ended may show
    the VM from before or from the middle of the removal: it is not kept for that VM."""
    engine, api = engine_api
    engine.run_inline = False  # SDK calls in worker threads: the listing waits in one
    vm_id = "11111110-0000-4000-8000-000000000000"
    _serve_vm_and_a_snapshot_removal(api, vm_id)
    listing, release = threading.Event(), threading.Event()
    serve_list = api.handlers["vms.list"]

    def slow_list(a: Any, kw: Any) -> Any:
        listing.set()
        assert release.wait(10)
        return serve_list(a, kw)

    api.on("vms.list", slow_list)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.list_vms)
        await trio.to_thread.run_sync(listing.wait)
        with trio.fail_after(10):
            await engine.remove_snapshot(vm_id, "S1")
        release.set()
    api.calls.clear()
    await engine.listed_vm(vm_id)
    assert api.calls == ["vms.vm.get"]
    other = "22222220-0000-4000-8000-000000000000"
    assert engine.keeps_answer(other, engine.change_epoch)  # other VMs' answers are kept


async def test_an_engine_refusing_follow_gets_plain_lists(autojump_clock, engine_api) -> None:
    engine, api = engine_api

    def vms_list(args: Any, kwargs: dict[str, Any]) -> list[sdk.Vm]:
        if kwargs.get("follow"):
            raise _err(ovirtsdk4.Error, 400)
        return [_sdk_vm("1", followed=False)]

    api.on("vms.list", vms_list)
    api.on("vms.vm.get", lambda a, kw: _sdk_vm(kw["_ids"][0], followed=False))
    vms = await engine.list_vms()
    assert [(v.id, v.disk_attachments, v.nics) for v in vms] == [("1", None, None)]
    await engine.list_vms()
    assert api.calls == ["vms.list", "vms.list", "vms.list"]  # refused once, then plain
    vm = await engine.listed_vm("1")  # no listing to answer from: the VM alone, plain
    assert vm.disk_attachments is None and api.calls[-1] == "vms.vm.get"
