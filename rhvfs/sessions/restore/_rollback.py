"""What a restore created on the engine, and removing it when the restore fails.

Owns ``Created``, the ledger every engine-changing part of a restore writes
to right after the engine call that made something returns (no ``await`` in
between), and ``roll_back``, which removes what the ledger holds: the VM,
the template, the disks (a disk the engine already removed after a failed
upload is skipped).

Must not: touch anything the ledger does not name (the VM an overwrite
replaces is removed only by the VM build, and only once the disks are up);
let an error escape (a rollback step that fails is noted and the rest go on).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from rhvfs.errors import NotFound
from rhvfs.sessions.restore._ports import RestoreEngine


@dataclasses.dataclass
class Created:
    """Engine objects of one restore. ``vm`` and ``disks`` are removed on failure and
    cleared once the restore is done; ``template`` and ``restored_vm`` are what
    ``.status`` shows (``template_id``, ``vm_id``)."""

    disks: list[str] = dataclasses.field(default_factory=list)
    vm: str | None = None
    template: str | None = None
    restored_vm: str | None = None


async def roll_back(engine: RestoreEngine, created: Created, note: Callable[[str], None]) -> None:
    """Remove what ``created`` names; call it shielded (it must finish)."""
    if created.vm is not None:
        try:
            await engine.remove_vm(created.vm)
            note(f"rolled back: removed vm {created.vm}")
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
