"""Crash-safe restores: the journal entry of a restore, and gc of a killed restore's leftovers.

Restores run on the fake engine with the restore rig (journaled in
``tmp_path/state``). "Killing the mount" is done without killing anything: the
restore is held at a phase (an engine call that never answers, or a tool
that stops writing), the journal's entries are then made those of a dead
mount (another boot id, the instance lock released), and gc runs as the next
mount or ``rhvfs gc`` would, while the held restore stays frozen.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from rhvfs.engine.types import Template, Vm
from rhvfs.errors import RestoreFailed
from rhvfs.sessions.core import Journal, JournalEntry
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._gc import collect_garbage, parse_description
from rhvfs.sessions.core._restore_leftovers import RESTORE_KIND, remove_restore_leftovers
from rhvfs.sessions.restore import RestoreSession
from rhvfs.sessions.restore._journal import RestoreJournal
from rhvfs.sessions.restore._rollback import Created
from tests.support.backup_sets import SetFiles, make_set
from tests.support.configs import restore_config
from tests.support.fake_engine import CLUSTER_ID, SD_ID, FakeEngine
from tests.support.restore_rig import Harness, start

CFG = restore_config()


@pytest.fixture
async def h(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    engine = FakeEngine()
    # bystanders: a VM and a template nobody restored, one with a marker-like comment
    engine.vms["other"] = Vm(id="other", name="other", status="down", cluster_id=CLUSTER_ID)
    engine.templates["tpl-x"] = Template(id="tpl-x", name="tplx", status="ok", comment="hi")
    return await start(nursery, engine, tmp_path, CFG)


def journal_of(h: Harness) -> Journal:
    journal = h.manager.journal
    assert journal is not None
    return journal


def restore_entries(h: Harness) -> list[JournalEntry]:
    return [e for e in journal_of(h).entries() if e.owner_kind == RESTORE_KIND]


def kill_the_mount(h: Harness) -> Journal:
    """The journal as the next mount sees it after a ``kill -9`` of this one."""
    journal = journal_of(h)
    for e in journal.entries():
        journal.put(dataclasses.replace(e, process=dataclasses.replace(e.process, boot_id="gone")))
    journal.installation.release()  # the dead mount's lock is gone
    return Journal(journal.path)  # the next mount: same installation, another instance


def hold_forever(engine: FakeEngine, name: str, *, after: bool = False) -> trio.Event:
    """Make the next ``engine.<name>`` call never answer (``after``: once it did its work);
    the event is set when it was made. Later calls (a rollback's) answer."""
    original: Callable[..., Awaitable[Any]] = getattr(engine, name)
    called = trio.Event()

    async def held(*args: Any, **kwargs: Any) -> Any:
        if called.is_set():
            return await original(*args, **kwargs)
        if after:
            await original(*args, **kwargs)
        called.set()
        await trio.sleep_forever()

    setattr(engine, name, held)
    return called


def disks_of(engine: FakeEngine, vm_name: str) -> set[str]:
    vm = next(v for v in engine.vms.values() if v.name == vm_name)
    return {a.disk.id for a in engine.attachments[vm.id]}


async def finished_restore(h: Harness) -> tuple[str, set[str]]:
    """A restore that finished before the crash: its VM id and disk ids."""
    s = make_set(name="kept")
    session = h.manager.create("kept")
    await h.copy(session, s)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    return status["vm_id"], disks_of(h.engine, "kept")


def assert_only(h: Harness, kept_vm: str, kept_disks: set[str]) -> None:
    """Nothing of the killed restore is left; the finished restore and the bystanders are."""
    assert set(h.engine.vms) == {"other", kept_vm}
    assert set(h.engine.disks) == kept_disks
    assert set(h.engine.templates) == {"tpl-x"}
    assert all(t.phase.startswith("finished") for t in h.engine.transfers.values()), (
        h.engine.transfers
    )


async def write_all_but_last_close(h: Harness, session: RestoreSession, name: str) -> None:
    """The whole set, but the last image's tool stops half-way (its handle stays open)."""
    s = make_set(name=name)
    images = s.image_names()
    await h.copy(session, s, [n for n in s.files if n != images[-1]])
    f = session.new_file(images[-1])
    session.open(f)
    await session.write(f, 0, s.files[images[-1]][: len(s.files[images[-1]]) // 2])


@pytest.mark.parametrize("phase", ["uploading", "uploaded", "creating_vm", "vm_unrecorded"])
async def test_gc_after_a_killed_restore_removes_exactly_its_objects(
    autojump_clock: MockClock, h: Harness, phase: str
) -> None:
    kept_vm, kept_disks = await finished_restore(h)
    s = make_set(name="killed")
    session = h.manager.create("killed")
    if phase == "uploading":  # a disk created, its transfer open, half its data sent
        await write_all_but_last_close(h, session, "killed")
        assert session.phase == "uploading"
    else:
        call, after = {
            "uploaded": ("create_vm_from_ovf", False),  # disks complete, no VM yet
            "creating_vm": ("add_nic", False),  # VM made, disks attached
            "vm_unrecorded": ("create_vm_from_ovf", True),  # VM made, its id never came back
        }[phase]
        called = hold_forever(h.engine, call, after=after)
        await h.copy(session, s)
        with trio.fail_after(10):
            await called.wait()
        assert session.phase == "creating_vm"
    entries = restore_entries(h)
    assert [e.owner_name for e in entries] == ["killed"]
    entry = entries[0]
    assert len(entry.disk_ids) == 2 and set(entry.disk_ids) <= set(h.engine.disks)
    assert [h.engine.disks[d].description for d in entry.disk_ids] == [entry.marker] * 2
    if phase == "vm_unrecorded":
        assert entry.pending == ("vm",) and entry.vm_ids == ()
        assert [v.comment for v in h.engine.vms.values() if v.name == "killed"] == [entry.marker]
    if phase == "creating_vm":
        assert entry.vm_ids and disks_of(h.engine, "killed") == set(entry.disk_ids)

    next_mount = kill_the_mount(h)
    lines = await collect_garbage(h.engine, next_mount, config=CFG)

    assert_only(h, kept_vm, kept_disks)
    assert next_mount.entries() == []
    assert any("killed" in line for line in lines), lines
    assert not any("kept" in line or "other" in line for line in lines), lines


async def test_entries_are_written_before_each_create_call(
    autojump_clock: MockClock, h: Harness
) -> None:
    """Write-ahead: the id (or, for a VM, the intent and its marker) is in the journal when
    the engine is asked to create the object."""
    seen: dict[str, JournalEntry] = {}
    for name in ("create_disk", "start_transfer", "create_vm_from_ovf"):
        original = getattr(h.engine, name)

        def spy(original: Any = original, name: str = name) -> Callable[..., Awaitable[Any]]:
            async def call(**kwargs: Any) -> Any:
                (entry,) = restore_entries(h)
                seen.setdefault(name, entry)
                if name == "create_disk":
                    assert kwargs["disk_id"] in entry.disk_ids
                if name == "start_transfer":
                    assert kwargs["transfer_id"] in entry.transfer_ids
                if name == "create_vm_from_ovf":
                    assert "vm" in entry.pending and kwargs["comment"] == entry.marker
                return await original(**kwargs)

            return call

        setattr(h.engine, name, spy())
    session = h.manager.create("wal")
    await h.copy(session, make_set(name="wal"))
    assert (await h.settle(session))["phase"] == "done"
    assert set(seen) == {"create_disk", "start_transfer", "create_vm_from_ovf"}
    assert restore_entries(h) == []  # done: the VM and its disks are the user's


def described_set(name: str, *, kind: str = "vm") -> SetFiles:
    """A set whose disks have descriptions and whose OVF has a comment."""
    s = make_set(name=name, kind=kind)
    for i, d in enumerate(s.manifest["disks"]):
        d["description"] = f"the set's disk {i}"
    s.files["manifest.json"] = json.dumps(s.manifest, indent=2).encode()
    s.files["vm.ovf"] = s.files["vm.ovf"].replace(
        f"<Name>{name}</Name>".encode(),
        f"<Name>{name}</Name><Comment>ovf says hi</Comment>".encode(),
    )
    return s


async def test_a_restore_marks_what_it_makes_until_done_then_gives_back_its_own(
    autojump_clock: MockClock, h: Harness
) -> None:
    """While it runs, every object carries the marker (this installation, this mount); once
    done, the VM has the OVF's comment and the disks the set's descriptions, after the entry
    went (the calls that give them back come after the journal lost the restore)."""
    seen: dict[str, list[str]] = {"disk": [], "vm": []}
    order: list[str] = []
    for name, kind, field in (
        ("create_disk", "disk", "description"),
        ("create_vm_from_ovf", "vm", "comment"),
    ):
        original = getattr(h.engine, name)

        def spy(
            original: Any = original, kind: str = kind, field: str = field
        ) -> Callable[..., Awaitable[Any]]:
            async def call(**kwargs: Any) -> Any:
                seen[kind].append(kwargs[field])
                return await original(**kwargs)

            return call

        setattr(h.engine, name, spy())
    for name in ("update_disk_description", "update_vm_comment"):
        original = getattr(h.engine, name)

        def later(original: Any = original, name: str = name) -> Callable[..., Awaitable[Any]]:
            async def call(*args: Any) -> Any:
                order.append(f"{name} entries={len(restore_entries(h))}")
                return await original(*args)

            return call

        setattr(h.engine, name, later())
    session = h.manager.create("kept")
    await h.copy(session, described_set("kept"))
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    vm_id = status["vm_id"]

    (marker,) = set(seen["disk"]) | set(seen["vm"])  # one marker for all, no set description
    assert len(seen["disk"]) == 2 and len(seen["vm"]) == 1
    info = parse_description(marker)
    assert info is not None and info.kind == "restore"
    assert info.installation == journal_of(h).installation.id
    assert info.instance == journal_of(h).installation.instance
    assert order == ["update_vm_comment entries=0"] + ["update_disk_description entries=0"] * 2
    assert h.engine.vms[vm_id].comment == "ovf says hi"
    by_alias = {
        h.engine.disks[d].alias: h.engine.disks[d].description for d in disks_of(h.engine, "kept")
    }
    assert by_alias == {"disk0": "the set's disk 0", "disk1": "the set's disk 1"}
    assert journal_of(h).entries() == []
    # gc of a later mount never touches it
    next_mount = kill_the_mount(h)
    assert await collect_garbage(h.engine, next_mount, config=CFG) == []
    assert vm_id in h.engine.vms


async def test_template_restore_killed_before_its_id_came_back(
    autojump_clock: MockClock, h: Harness
) -> None:
    called = hold_forever(h.engine, "create_template_from_ovf", after=True)
    session = h.manager.create("tplk")
    await h.copy(session, make_set(kind="template", name="tplk"))
    with trio.fail_after(10):
        await called.wait()
    (made,) = [t for t in h.engine.templates.values() if t.name == "tplk"]
    await collect_garbage(h.engine, kill_the_mount(h), config=CFG)
    assert made.id not in h.engine.templates and set(h.engine.templates) == {"tpl-x"}
    assert h.engine.disks == {}


async def test_a_restored_template_gets_its_ovf_comment_and_set_descriptions_back(
    autojump_clock: MockClock, h: Harness
) -> None:
    session = h.manager.create("tpl")
    await h.copy(session, described_set("tpl", kind="template"))
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    tpl = h.engine.templates[status["template_id"]]
    assert tpl.comment == "ovf says hi"
    disks = [h.engine.disks[a.disk.id] for a in h.engine.attachments[tpl.id]]
    assert sorted((d.alias, d.description) for d in disks) == [
        ("disk0", "the set's disk 0"),
        ("disk1", "the set's disk 1"),
    ]
    assert restore_entries(h) == []


async def test_template_made_from_the_restored_vm_stays_and_base_vm_goes(
    autojump_clock: MockClock, h: Harness
) -> None:
    session = h.manager.create("base")
    await h.write_file(
        session, "rhvfs-restore.conf", b"template_name = golden\nremove_base_vm = yes\n"
    )
    await h.copy(session, make_set(name="base"))
    assert (await h.settle(session))["phase"] == "done"
    (golden,) = [t for t in h.engine.templates.values() if t.name == "golden"]
    assert golden.comment == ""  # the marker it was made with is gone (it asked for none)
    assert restore_entries(h) == []


async def test_failed_restore_is_rolled_back_and_leaves_no_entry(
    autojump_clock: MockClock, h: Harness
) -> None:
    h.engine.fail_on.add("add_nic")
    session = h.manager.create("boom")
    await h.copy(session, make_set(name="boom"))
    status = await h.settle(session)
    assert status["phase"] == "failed"
    assert set(h.engine.vms) == {"other"} and h.engine.disks == {}
    assert restore_entries(h) == []


async def test_a_rollback_that_cannot_remove_keeps_the_entry_for_gc(
    autojump_clock: MockClock, h: Harness
) -> None:
    h.engine.fail_on |= {"add_nic", "remove_vm"}
    session = h.manager.create("stuck")
    await h.copy(session, make_set(name="stuck"))
    status = await h.settle(session)
    assert status["phase"] == "failed"
    assert any(v.name == "stuck" for v in h.engine.vms.values())
    (entry,) = restore_entries(h)
    assert any("journal entry" in line for line in status["log"]), status["log"]
    h.engine.fail_on.clear()  # the engine lets go; the next mount's gc removes it
    await collect_garbage(h.engine, kill_the_mount(h), config=CFG)
    assert set(h.engine.vms) == {"other"} and h.engine.disks == {}
    assert restore_entries(h) == []


async def test_live_restores_are_left_alone_by_gc(autojump_clock: MockClock, h: Harness) -> None:
    session = h.manager.create("live")
    await write_all_but_last_close(h, session, "live")
    before = set(h.engine.disks)
    assert await collect_garbage(h.engine, Journal(journal_of(h).path), config=CFG) == []
    assert set(h.engine.disks) == before and len(restore_entries(h)) == 1


async def test_leftovers_need_the_marker_and_the_entry(autojump_clock: MockClock) -> None:
    """A VM or template the entry names whose comment is not the entry's marker is left
    alone, and so is a disk whose description is not; a pending create finds only objects
    with the marker; dry runs change nothing."""
    engine = FakeEngine()
    marker = "rhvfs-session restore-1 host=h pid=1 inst=0123456789abcdef mount=0123456789abcdef"
    engine.vms["a"] = Vm(id="a", name="a", status="down", comment=marker)
    engine.vms["b"] = Vm(id="b", name="b", status="down", comment="taken over by a person")
    engine.vms["c"] = Vm(id="c", name="c", status="down", comment=marker)  # id never recorded
    engine.vms["d"] = Vm(id="d", name="d", status="down", comment="")
    engine.add_disk("x", 4096, disk_id="disk-1", description=marker)
    engine.add_disk("y", 4096, disk_id="disk-2", description="the set's disk")  # handed over
    engine.add_disk("z", 4096, disk_id="disk-3")  # no description at all
    entry = JournalEntry(
        session_id="restore-1",
        process=procid.current(),
        owner_kind=RESTORE_KIND,
        owner_id="",
        owner_name="r",
        started="",
        vm_ids=("a", "b", "gone"),
        disk_ids=("disk-1", "disk-gone", "disk-2", "disk-3"),
        pending=("vm",),
        marker=marker,
    )
    dry = await remove_restore_leftovers(engine, entry, config=CFG, dry_run=True)
    assert set(engine.vms) == {"a", "b", "c", "d"} and len(engine.disks) == 3
    assert [line.split(" (")[0] for line in dry.lines if line.startswith("would")] == [
        "would remove vm a",
        "would remove vm c",
        "would remove disk disk-1",
    ]
    report = await remove_restore_leftovers(engine, entry, config=CFG)
    assert report.ok
    assert set(engine.vms) == {"b", "d"} and set(engine.disks) == {"disk-2", "disk-3"}
    left = sorted(line.split(" named")[0] for line in report.lines if "left alone" in line)
    assert left == ["left alone: disk disk-2", "left alone: disk disk-3", "left alone: vm b"]


async def test_a_transfer_whose_id_the_engine_chose_is_found_by_its_disk(
    autojump_clock: MockClock, h: Harness
) -> None:
    """The engine may ignore the client's transfer id; a mount killed before the answer
    never learns it: gc cancels every live transfer of the restore's disks."""
    original = h.engine.start_transfer
    called = trio.Event()

    async def own_id_then_hang(**kwargs: Any) -> Any:
        kwargs["transfer_id"] = None
        await original(**kwargs)
        called.set()
        await trio.sleep_forever()

    h.engine.start_transfer = own_id_then_hang  # type: ignore[method-assign]
    session = h.manager.create("tk")
    s = make_set(name="tk")
    await h.copy(session, s, [n for n in s.files if n not in s.image_names()])
    f = session.new_file(s.image_names()[0])
    session.open(f)
    async with trio.open_nursery() as writing:
        writing.start_soon(session.write, f, 0, b"\x01" * 4096)  # waits for its transfer
        with trio.fail_after(10):
            await called.wait()
        (entry,) = restore_entries(h)
        (live,) = [t for t in h.engine.transfers.values() if t.phase == "transferring"]
        assert live.id not in entry.transfer_ids and live.disk_id in entry.disk_ids
        await collect_garbage(h.engine, kill_the_mount(h), config=CFG)
        assert h.engine.transfers[live.id].phase == "finished_failure"
        assert h.engine.disks == {}
        writing.cancel_scope.cancel()


async def test_the_entry_follows_what_created_hands_over(tmp_path: Path) -> None:
    """Ids are recorded before the create call; what ``Created`` stops naming (the restored
    VM and its disks on success, a removed base VM) leaves the entry at the next engine
    call; ``done`` removes the entry."""
    journal = Journal(tmp_path / "state" / "j.json")
    services: Any = SimpleNamespace(engine=FakeEngine(), journal=journal, config=CFG)
    created = Created()
    rj = RestoreJournal(services, "x", created, note=lambda text: None)
    engine = rj.services.engine
    assert journal.entries() == []  # nothing created, nothing written
    disk = await engine.create_disk(
        alias="a", provisioned_size=4096, format="raw", sparse=True, storage_domain=SD_ID
    )
    created.disks.append(disk.id)
    vm = await engine.create_vm_from_ovf(
        ovf="<x/>", cluster=CLUSTER_ID, name="v", regenerate_ids=True
    )
    created.vm = vm.id
    (entry,) = journal.entries()
    assert (entry.disk_ids, entry.vm_ids, entry.pending) == ((disk.id,), (vm.id,), ())
    assert services.engine.vms[vm.id].comment == entry.marker == rj.marker
    created.vm = None
    created.disks.clear()  # handed over
    await engine.list_clusters()  # any engine call syncs first
    (entry,) = journal.entries()
    assert (entry.disk_ids, entry.vm_ids) == ((), ())
    rj.done()
    assert journal.entries() == []
    with pytest.raises(RestoreFailed):  # nothing is created once the restore ended
        await engine.create_disk(
            alias="b", provisioned_size=4096, format="raw", sparse=True, storage_domain=SD_ID
        )


@pytest.mark.parametrize("held", ["before", "after"])
async def test_an_overwrite_killed_at_its_point_of_no_return_keeps_the_new_vm(
    autojump_clock: MockClock, h: Harness, held: str
) -> None:
    """The journal hands everything over before the replaced VM's removal is sent: gc after
    a crash there (removal sent or done) never removes the new VM, so one VM always stays."""
    kept_vm, _ = await finished_restore(h)
    called = hold_forever(h.engine, "remove_vm", after=held == "after")
    session = h.manager.create("again")
    await h.write_file(session, "rhvfs-restore.conf", b"vm_name = kept\nvm_force_overwrite = yes\n")
    await h.copy(session, make_set(name="kept"))
    with trio.fail_after(10):
        await called.wait()
    new_vm = session.created.vm or next(v for v in h.engine.vms if v not in ("other", kept_vm))
    (entry,) = restore_entries(h)
    assert (entry.vm_ids, entry.disk_ids) == ((), ())  # handed over before the removal
    await collect_garbage(h.engine, kill_the_mount(h), config=CFG)
    assert new_vm in h.engine.vms and len(h.engine.attachments[new_vm]) == 2
    assert (kept_vm in h.engine.vms) == (held == "before")


async def test_an_overwrite_that_fails_past_its_point_of_no_return_is_unmarked(
    autojump_clock: MockClock, h: Harness
) -> None:
    """The new VM is kept (the replaced one is gone) although the restore failed: it is the
    user's, so it gets its own comment and the set's descriptions back as after a done one."""
    await finished_restore(h)
    h.engine.fail_on.add("rename_vm")
    session = h.manager.create("again")
    await h.write_file(session, "rhvfs-restore.conf", b"vm_name = kept\nvm_force_overwrite = yes\n")
    await h.copy(session, described_set("kept"))
    status = await h.settle(session)
    assert status["phase"] == "failed" and "kept" in status["error"]
    (new_vm,) = [v for v in h.engine.vms.values() if v.id != "other"]
    assert new_vm.comment == "ovf says hi"
    descriptions = {h.engine.disks[a.disk.id].description for a in h.engine.attachments[new_vm.id]}
    assert descriptions == {"the set's disk 0", "the set's disk 1"}
    assert restore_entries(h) == []


async def test_gc_stops_a_vm_the_killed_restore_started(
    autojump_clock: MockClock, h: Harness
) -> None:
    called = hold_forever(h.engine, "start_vm", after=True)
    session = h.manager.create("up")
    await h.write_file(session, "rhvfs-restore.conf", b"vm_switchon = yes\n")
    await h.copy(session, make_set(name="up"))
    with trio.fail_after(10):
        await called.wait()
    (vm,) = [v for v in h.engine.vms.values() if v.name == "up"]
    assert vm.status == "up"
    lines = await collect_garbage(h.engine, kill_the_mount(h), config=CFG)
    assert [line for line in lines if line.startswith("removed vm")] == [
        f"removed vm {vm.id} (up) of {lines[0].split(' of ', 1)[1].split(',')[0]}, stopped first (up)"
    ]
    assert set(h.engine.vms) == {"other"} and h.engine.disks == {}


def test_every_report_line_has_a_beginning_rhvfs_gc_knows() -> None:
    """``rhvfs gc`` sorts report lines by their beginning (actions, left alone, failures);
    each line ``_restore_leftovers`` reports starts with one of those prefixes."""
    import ast

    from rhvfs.commands.gc import ACTION_PREFIXES, ERROR_PREFIXES, LEFT_ALONE_PREFIXES
    from rhvfs.sessions.core import _restore_leftovers

    tree = ast.parse(Path(_restore_leftovers.__file__).read_text())
    starts: list[str] = []
    for node in ast.walk(tree):
        value: ast.expr | None = None
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "report.lines.append":
            value = node.args[0]
        elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "line":
            value = node.value
        if value is None or isinstance(value, ast.Name):
            continue
        assert isinstance(value, ast.JoinedStr), ast.unparse(value)
        first = value.values[0]
        if isinstance(first, ast.FormattedValue):  # f"{verb} ..."
            assert ast.unparse(first.value) == "verb"
            starts += ["removed ", "would remove "]
        else:
            assert isinstance(first, ast.Constant)
            starts.append(str(first.value))
    assert len(starts) >= 8
    known = ACTION_PREFIXES + LEFT_ALONE_PREFIXES + ERROR_PREFIXES
    assert [s for s in starts if not s.startswith(known)] == []
