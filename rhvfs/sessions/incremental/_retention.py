"""Checkpoint retention: after a VM's set completed, remove the old checkpoints rhvfs made.

Every engine backup leaves a checkpoint on the VM (a persistent dirty bitmap in
each incremental disk's qcow2 volumes); without removal they pile up. After a
set of a VM completed and the chain advanced (``IncrementalSession._cleanup``,
while the session still holds the VM's only backup, so nothing of rhvfs
starts one meanwhile), ``prune_checkpoints`` keeps the newest ``keep``
checkpoints rhvfs created for the VM and removes the older ones.

Rules:

- **Only rhvfs's own.** A checkpoint is rhvfs's when the chain state names it
  (``ChainState.owned_checkpoints``: recorded when the backup that made it was
  ready, completed or abandoned, and every completed set's). Any other
  checkpoint -- another backup product's, another rhvfs installation's, one made
  by an older rhvfs for a set that never completed -- is never removed.
- **Oldest first, and only the oldest.** oVirt removes only the VM's root
  (oldest) checkpoint, so removal walks the engine's list from the oldest and
  stops at the first checkpoint it must keep: one that is not rhvfs's (then
  no newer one can go either: logged), one among the newest ``keep`` of
  rhvfs's, or a protected one.
- **Protected:** the checkpoint of the VM's newest completed set (the base of
  the next ``@rhv-incremental/`` set; also always among the newest ``keep``)
  and, once the VM has a completed differential set, the checkpoint of its
  newest full set (the base of ``@rhv-differential/``): while a differential
  chain is in use, checkpoints newer than its full set are kept until the
  next full set. Without differential sets the newest full set's checkpoint
  goes like any other, and a later ``@rhv-differential/`` set is a full one
  (with a warning). ``@rhv-since/<cp>/`` is no longer listed once retention
  removed ``<cp>``.
- **Never fails a backup.** A removal that fails (a backup of another product
  running, an engine error) is logged and stops this round; the next completed
  set of the VM tries again.

Must not: remove anything the chain state does not name; remove a checkpoint
newer than one it keeps; raise (it returns what it did).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from rhvfs.engine.types import Checkpoint
from rhvfs.errors import EngineError, NotFound, RhvfsError
from rhvfs.sessions.incremental._chainstate import ChainState

log = logging.getLogger(__name__)


class CheckpointEngine(Protocol):
    async def list_checkpoints(self, vm_id: str) -> list[Checkpoint]: ...
    async def remove_checkpoint(self, vm_id: str, checkpoint_id: str) -> None: ...


def oldest_first(checkpoints: Sequence[Checkpoint]) -> list[Checkpoint]:
    """The engine's checkpoints from the root along ``parent_id`` (the engine lists them
    oldest first; the parent links decide where they disagree)."""
    by_id = {c.id: c for c in checkpoints}
    children: dict[str | None, list[Checkpoint]] = {}
    for c in checkpoints:
        parent = c.parent_id if c.parent_id in by_id else None
        children.setdefault(parent, []).append(c)
    out: list[Checkpoint] = []
    todo = list(children.get(None, []))
    while todo:
        c = todo.pop(0)
        out.append(c)
        todo[:0] = children.get(c.id, [])
    # anything unreachable (a cycle) keeps the engine's order, after the chain
    out += [c for c in checkpoints if c not in out]
    return out


async def prune_checkpoints(
    engine: CheckpointEngine,
    chain: ChainState,
    vm_id: str,
    *,
    keep: int,
    vm_name: str = "",
    warn: Callable[[str], None] | None = None,
) -> list[str]:
    """Remove the checkpoints rhvfs created for ``vm_id`` beyond the newest ``keep`` (0: none
    removed), oldest first; returns the ids removed. Never raises an engine error."""
    name = vm_name or vm_id
    if keep <= 0:
        return []

    def trouble(message: str) -> None:
        if warn is not None:
            warn(message)  # it logs
        else:
            log.warning("%s", message)

    try:
        on_engine = oldest_first(await engine.list_checkpoints(vm_id))
    except RhvfsError as e:
        trouble(f"checkpoint retention of VM {name}: listing checkpoints failed ({e}); next time")
        return []
    present = {c.id for c in on_engine}
    owned = chain.owned_checkpoints(vm_id)
    chain.forget_checkpoints(vm_id, {c for c in owned if c not in present}, removed=False)
    mine = [c.id for c in on_engine if c.id in owned]
    keep_ids = set(mine[-keep:])
    sets = chain.sets(vm_id)
    usable = [s for s in sets if s.checkpoint_id and not s.checkpoint_removed]
    if usable:
        keep_ids.add(usable[-1].checkpoint_id or "")
    fulls = [s for s in usable if s.set_type == "full"]
    if fulls and any(s.set_type == "differential" for s in sets):
        keep_ids.add(fulls[-1].checkpoint_id or "")
    removed: list[str] = []
    for cp in on_engine:
        if cp.id not in owned:
            if len(mine) - len(removed) > keep:
                log.warning(
                    "checkpoint retention of VM %s: the oldest checkpoint %s is not rhvfs's; "
                    "oVirt removes only the oldest, so rhvfs keeps its %d newer ones",
                    name,
                    cp.id,
                    len(mine) - len(removed),
                )
            break
        if cp.id in keep_ids:
            break
        try:
            await engine.remove_checkpoint(vm_id, cp.id)
        except NotFound:
            pass
        except EngineError as e:
            trouble(
                f"checkpoint retention of VM {name}: removing checkpoint {cp.id} failed ({e}); "
                "retried after the next completed set"
            )
            break
        removed.append(cp.id)
        chain.forget_checkpoints(vm_id, {cp.id}, removed=True)
        log.info("checkpoint retention of VM %s: removed checkpoint %s", name, cp.id)
    return removed
