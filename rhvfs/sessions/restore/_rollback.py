"""What a restore created on the engine, and removing it when the restore fails.

Owns ``Created``, the ledger every engine-changing part of a restore writes
to right after the engine call that made something returns (no ``await`` in
between), and ``roll_back``, which removes what the ledger holds: the VM
(stopped first if it runs: a failure after ``vm_switchon`` started it), the
template, the disks (a disk the engine already removed after a failed upload
is skipped).

An overwrite (``rhvfs.sessions.restore._overwrite``) has a point of no return:
once the VM it replaces is removed, what the restore built is all that is left
of that VM, so it is kept whatever fails later (``committed``). ``replaces``
names the replaced VM from the moment its removal is asked for; a rollback
that finds it set but not ``committed`` (the removal's outcome is unknown: an
error or a cancellation during the call) looks first: the replaced VM gone,
or being removed (``image_locked``), or not answering, means the point of no
return may have passed, and nothing is removed (noted in ``.status``).

Must not: touch anything the ledger does not name (the VM an overwrite
replaces is removed only by ``_overwrite``, and only once the new VM is
complete); let an error escape (a rollback step that fails is noted and the
rest go on); remove anything once ``committed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from rhvfs.errors import Conflict, NotFound
from rhvfs.sessions.restore._ports import RestoreEngine


@dataclasses.dataclass
class Created:
    """Engine objects of one restore. ``vm`` and ``disks`` are removed on failure and
    cleared once the restore is done; ``template`` and ``restored_vm`` are what
    ``.status`` shows (``template_id``, ``vm_id``); ``template`` is removed on failure
    too. ``replaces``/``committed``: see the module docstring."""

    disks: list[str] = dataclasses.field(default_factory=list)
    vm: str | None = None
    template: str | None = None
    restored_vm: str | None = None
    replaces: str | None = None  # the VM an overwrite is removing (set just before)
    committed: bool = False  # that VM is gone: nothing this restore made is removed


async def _past_no_return(
    engine: RestoreEngine, created: Created, note: Callable[[str], None]
) -> bool:
    """True when the overwrite may have removed the replaced VM (keep everything)."""
    if created.committed:
        return True
    if created.replaces is None:
        return False
    try:
        vm = await engine.get_vm(created.replaces)
    except NotFound:
        note(f"rollback: the replaced vm {created.replaces} is gone; keeping the new one")
        created.committed = True
        return True
    except Exception as e:
        note(
            f"rollback: cannot tell whether the replaced vm {created.replaces} still exists "
            f"({e}); keeping what this restore made (vm {created.vm}, template "
            f"{created.template}) so that nothing is lost"
        )
        return True
    if vm.status == "image_locked":
        note(
            f"rollback: the replaced vm {created.replaces} is being removed; keeping what "
            f"this restore made (vm {created.vm}, template {created.template})"
        )
        return True
    return False


async def _remove_vm(engine: RestoreEngine, vm_id: str, note: Callable[[str], None]) -> None:
    try:
        await engine.remove_vm(vm_id)
    except NotFound:
        return
    except Conflict:
        # it runs (started by vm_switchon before a later step failed): power it off first
        await engine.stop_vm(vm_id)
        note(f"rolled back: stopped vm {vm_id}")
        await engine.remove_vm(vm_id)
    note(f"rolled back: removed vm {vm_id}")


async def roll_back(engine: RestoreEngine, created: Created, note: Callable[[str], None]) -> None:
    """Remove what ``created`` names; call it shielded (it must finish)."""
    if await _past_no_return(engine, created, note):
        return
    if created.vm is not None:
        try:
            await _remove_vm(engine, created.vm, note)
        except NotFound:
            pass
        except Exception as e:
            note(f"rollback: cannot remove vm {created.vm}: {e}")
    if created.template is not None:
        try:
            await engine.remove_template(created.template)
            note(f"rolled back: removed template {created.template}")
        except Exception as e:
            note(f"rollback: cannot remove template {created.template}: {e}")
    for disk_id in created.disks:
        try:
            await engine.get_disk(disk_id)
        except NotFound:
            continue  # a failed upload removes its disk (the engine's endWithFailure)
        except Exception:
            pass
        try:
            await engine.remove_disk(disk_id)
            note(f"rolled back: removed disk {disk_id}")
        except NotFound:
            pass
        except Exception as e:
            note(f"rollback: cannot remove disk {disk_id}: {e}")
