"""Replacing a VM (``vm_force_overwrite``) without ever losing it.

The VM being replaced (the *original*) stays exactly as it was (disks,
configuration, power state) until the new VM is complete: built, its disks
attached, its NICs added, its template made and its power-on done when the
options ask. Only then is the original removed; any failure before that
removes only what the restore made (``_rollback``) and leaves the original
untouched. The steps (``_vm.create_vm`` drives them):

1. ``begin``: the original is looked up again and must still be down; its
   *fingerprint* (the VM record, each disk attachment with the disk's active
   volume id, each NIC with its MAC) and MACs are kept.
2. The new VM is built under a temporary name (``build_name``: engine VM names
   are unique, and the original holds the real one). It gets a new id: the
   original's id is in use (``.status`` says so).
3. NICs: a MAC the options want (``original``, an explicit ``NIC:MAC``, or
   ``auto`` keeping the set's MACs when free) that the original holds cannot
   be given to the new VM yet (the engine's MAC pool, like the simulator,
   refuses a MAC in use): such a NIC gets a pool MAC, and a ``MacMove``
   records the MAC it is owed. A wanted MAC held by any *other* VM is handled
   as without overwrite (``auto`` takes a new one, ``original``/explicit fail).
4. Template (``template_name``) and power-on (``vm_switchon``) run on the new
   VM, before the original is touched: their failure leaves the original as
   it was. A guest started here boots with the pool MAC of a moved NIC.
5. ``replace``: right before the removal the original's fingerprint is read
   again; a difference (it was started, edited, snapshotted, its disks or NICs
   changed) refuses the replacement (``RestoreBusy``) and rolls the new VM back
   (stopped first if it runs). Then the original is removed; this is the point
   of no return (``Created.replaces`` before the call, ``Created.committed``
   after it). A removal that fails with the original still there and
   unchanged rolls the new VM back; a failure that leaves it gone, partly
   removed or unknown keeps the new VM.
6. After the point of no return: the new VM is renamed to the wanted name,
   and each moved NIC gets its MAC (on a running VM: unplugged, MAC changed,
   plugged again, as the engine requires). A failure here never removes the
   new, complete VM: the restore ends ``failed`` with an error that says the
   original is gone, which VM (id, temporary name) holds the restore and what
   is left to do by hand.

Why this order: the acceptance asks that a power-on failure leave the
original intact, so power-on must precede the removal; the MACs then must move
after it (a second power cycle instead would be a second chance to fail after
the point of no return). The cost: for a few seconds the new guest runs with
a pool MAC and then sees its NIC unplugged and plugged back with the original
MAC (guests handle a NIC hot-plug; a DHCP lease taken on the pool MAC is
renewed on the plug).

Must not: change the original VM before ``replace``, or anything but remove
it there; remove anything it did not create (``_rollback`` does the removing
of what the restore made).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable

from rhvfs.engine.types import DiskAttachment, Nic, Vm
from rhvfs.errors import NotFound, RestoreBusy, RestoreFailed
from rhvfs.sessions.restore._ports import RestoreEngine
from rhvfs.sessions.restore._rollback import Created

#: The engine's VM name limit the temporary name stays within.
VM_NAME_MAX = 64
#: Temporary names: ``<name>-rhvfs-restore-<8 hex>`` (``<name>`` cut to fit).
BUILD_TAG = "-rhvfs-restore-"


def build_name(name: str) -> str:
    """A free-looking temporary name for the VM built to replace ``name``."""
    suffix = f"{BUILD_TAG}{uuid.uuid4().hex[:8]}"
    return name[: VM_NAME_MAX - len(suffix)] + suffix


def _disk_key(a: DiskAttachment) -> tuple[object, ...]:
    d = a.disk
    return (d.id, d.image_id, d.provisioned_size, a.interface, a.bootable, a.active, a.read_only)


def _nic_key(n: Nic) -> tuple[object, ...]:
    return (n.id, n.name, n.mac, n.interface, n.plugged, n.linked, n.vnic_profile_id)


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What must not change between ``begin`` and the removal."""

    vm: Vm
    disks: tuple[tuple[object, ...], ...]
    nics: tuple[tuple[object, ...], ...]

    def differences(self, now: Fingerprint) -> list[str]:
        out = []
        if now.vm.status != self.vm.status:
            out.append(f"it is {now.vm.status} (was {self.vm.status})")
        if dataclasses.replace(now.vm, status=self.vm.status, host_id=self.vm.host_id) != self.vm:
            out.append("its configuration changed")
        if now.disks != self.disks:
            out.append("its disks or their volumes changed")
        if now.nics != self.nics:
            out.append("its NICs changed")
        return out


async def fingerprint(engine: RestoreEngine, vm_id: str) -> Fingerprint:
    vm = await engine.get_vm(vm_id)
    disks = tuple(sorted((_disk_key(a) for a in await engine.disk_attachments(vm_id)), key=repr))
    nics = tuple(sorted((_nic_key(n) for n in await engine.vm_nics(vm_id)), key=repr))
    return Fingerprint(vm, disks, nics)


@dataclasses.dataclass(frozen=True)
class Original:
    """The VM being replaced, as it was when the build began."""

    id: str
    name: str
    fingerprint: Fingerprint
    macs: frozenset[str]


@dataclasses.dataclass(frozen=True)
class MacMove:
    """A NIC of the new VM built with a pool MAC, owed ``mac`` (held by the original)."""

    nic_id: str
    nic_name: str
    mac: str


async def begin(
    engine: RestoreEngine, vm: Vm, *, name: str, note: Callable[[str], None]
) -> Original | None:
    """The original before anything is built: still down (else ``RestoreBusy``); None
    when it is gone already (nothing to protect: the build uses ``name`` directly)."""
    try:
        fp = await fingerprint(engine, vm.id)
    except NotFound:
        note(f"the vm to replace ({vm.id}) was removed meanwhile; nothing to replace")
        return None
    if fp.vm.status != "down":
        raise RestoreBusy(f"VM {name!r} is {fp.vm.status} now; not replacing it")
    macs = frozenset(str(n[2]).lower() for n in fp.nics if n[2])
    return Original(id=vm.id, name=name, fingerprint=fp, macs=macs)


async def _removal_failed(
    engine: RestoreEngine, original: Original, created: Created, error: Exception
) -> None:
    """``remove_vm`` of the original raised: find out where that leaves it."""
    try:
        now = await fingerprint(engine, original.id)
    except NotFound:
        return  # removed after all: past the point of no return
    except Exception as e:
        created.committed = True  # unknown: keep the new VM (never lose both)
        raise RestoreFailed(
            f"removing the replaced VM {original.name!r} ({original.id}) failed ({error}) and "
            f"its state is unknown ({e}); the new VM {created.vm} is kept: check both"
        ) from error
    if not original.fingerprint.differences(now):
        created.replaces = None  # intact: roll the new VM back, as for any earlier failure
        raise RestoreFailed(
            f"the VM to replace ({original.id}) could not be removed: {error}; it is unchanged"
        ) from error
    created.committed = True
    raise RestoreFailed(
        f"removing the replaced VM {original.name!r} ({original.id}) failed half-way ({error}); "
        f"the new VM {created.vm} is kept: check both"
    ) from error


async def _move_mac(engine: RestoreEngine, vm_id: str, move: MacMove) -> None:
    vm = await engine.get_vm(vm_id)
    nic = next((n for n in await engine.vm_nics(vm_id) if n.id == move.nic_id), None)
    if nic is None:
        raise RestoreFailed(f"nic {move.nic_name} is gone")
    live = vm.status != "down" and nic.plugged
    if live:
        await engine.update_nic(vm_id, nic.id, plugged=False)
    try:
        await engine.update_nic(vm_id, nic.id, mac=move.mac)
    finally:
        if live:
            await engine.update_nic(vm_id, nic.id, plugged=True)


async def replace(
    engine: RestoreEngine,
    original: Original,
    *,
    created: Created,
    vm_id: str | None,
    temp_name: str,
    moves: tuple[MacMove, ...],
    note: Callable[[str], None],
) -> None:
    """Steps 5 and 6 of the module docstring. ``vm_id``: the new VM (None when
    ``remove_base_vm`` already removed it: only the original goes)."""
    try:
        now = await fingerprint(engine, original.id)
    except NotFound:
        now = None
        note(f"the vm to replace ({original.id}) was removed meanwhile")
    if now is not None:
        changed = original.fingerprint.differences(now)
        if changed:
            raise RestoreBusy(
                f"VM {original.name!r} changed while the restore ran ({'; '.join(changed)}); "
                "it is kept as it is and the new VM is removed"
            )
        created.replaces = original.id
        try:
            await engine.remove_vm(original.id)
        except Exception as e:
            await _removal_failed(engine, original, created, e)
        note(f"removed the replaced vm {original.name} ({original.id})")
    created.committed = True  # the point of no return: nothing of the restore is removed now
    created.vm = None
    created.disks.clear()
    if vm_id is None:
        return
    problems = []
    try:
        await engine.rename_vm(vm_id, original.name)
        note(f"renamed vm {vm_id} from {temp_name} to {original.name}")
    except Exception as e:
        problems.append(f"renaming it to {original.name!r} failed: {e}")
    for move in moves:
        try:
            await _move_mac(engine, vm_id, move)
            note(f"nic {move.nic_name}: took over MAC {move.mac} from the replaced vm")
        except Exception as e:
            problems.append(f"nic {move.nic_name}: giving it MAC {move.mac} failed: {e}")
    if problems:
        raise RestoreFailed(
            f"the replaced VM {original.name!r} ({original.id}) is removed and the new VM "
            f"{vm_id} (built as {temp_name!r}) is complete and kept, but "
            + "; ".join(problems)
            + " — finish that by hand"
        )
