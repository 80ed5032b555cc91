"""The checks that can refuse a restore before anything on the engine changes.

Owns, once a set's manifest is parsed and the options frozen: the options
checked against the set (they name only disks it has), the name to restore
to (``target_name``), the target cluster and storage domains exist and the
domains have room for the selected disks, the target name is free (or
``vm_force_overwrite`` given and that VM down), and the engine facade can do
what the options ask. Every refusal is a named ``RestoreError``
(``RestoreInputError``, ``RestoreNameClash``, ``RestoreNoSpace``,
``RestoreBusy``, ``RestoreUnsupported``).

Must not: create, change or remove anything on the engine (only list and
find); keep state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rhvfs.backupset import Manifest, ManifestDisk
from rhvfs.engine.types import StorageDomain, Vm
from rhvfs.errors import (
    RestoreBusy,
    RestoreInputError,
    RestoreNameClash,
    RestoreNoSpace,
    RestoreUnsupported,
)
from rhvfs.sessions.restore._options import ORIGINAL, RestoreOptions, unknown_disk_keys
from rhvfs.sessions.restore._ports import RestoreEngine


def check_options(manifest: Manifest, opts: RestoreOptions) -> None:
    """The per-disk options name only disks of the set."""
    bad = unknown_disk_keys(opts, manifest.disk_keys())
    if bad:
        raise RestoreInputError(f"options name disks that are not in the set: {', '.join(bad)}")


def target_name(manifest: Manifest, opts: RestoreOptions, directory: str) -> str:
    """The name of the VM (or template) to restore: from the options, else the directory;
    ``vm_name = original`` is the name of the VM (or template) the set was read from."""
    vm_name = opts.vm_name
    if vm_name is not None and vm_name.lower() == ORIGINAL:
        vm_name = manifest.owner_name
    if manifest.kind == "template":
        return opts.template_name or vm_name or directory
    return vm_name or directory


async def preflight(
    engine: RestoreEngine,
    manifest: Manifest,
    opts: RestoreOptions,
    *,
    name: str,
    note: Callable[[str], None],
) -> Vm | None:
    """Every check that can refuse the restore to ``name``; returns the VM an overwrite
    replaces (None when there is none)."""
    kind = manifest.kind
    overwrite: Vm | None = None
    clusters = await engine.list_clusters()
    wanted = opts.cluster or manifest.cluster_id or manifest.cluster_name
    if not any(wanted in (c.id, c.name) for c in clusters):
        alt = manifest.cluster_name if opts.cluster is None else None
        if alt is None or not any(alt == c.name for c in clusters):
            raise RestoreInputError(f"cluster {wanted!r} does not exist on the engine")
    if kind == "vm" and opts.template_name and getattr(engine, "create_template", None) is None:
        raise RestoreUnsupported(
            "this engine facade cannot make a template from a VM (no create_template): "
            "template_name is only supported for template sets"
        )
    if kind == "template" or opts.template_name:
        tname = name if kind == "template" else opts.template_name
        if any(t.name == tname for t in await engine.list_templates()):
            raise RestoreNameClash(f"a template named {tname!r} already exists")
    if kind == "vm":
        existing = await engine.find_vm(name)
        if existing is not None:
            if not opts.vm_force_overwrite:
                raise RestoreNameClash(
                    f"a VM named {name!r} already exists ({existing.id}); set "
                    "vm_force_overwrite = yes to replace it, or vm_name to restore a copy"
                )
            if existing.status != "down":
                raise RestoreBusy(
                    f"VM {name!r} is {existing.status}; overwrite only replaces a VM that is down"
                )
            overwrite = existing
            note(f"will replace vm {name} ({existing.id}) once the new one is complete")
    sds = await engine.list_storage_domains()
    need: dict[str, int] = {}
    for d in manifest.disks:
        if not opts.selects(d.id, d.alias):
            continue
        sd = storage_domain_of(d, opts, sds)
        # a sparse disk needs what it held (thin provisioning), a preallocated one its size
        held = d.actual_size if d.sparse and d.actual_size is not None else d.size
        need[sd.id] = need.get(sd.id, 0) + held
    for sd_id, nbytes in need.items():
        sd = next(s for s in sds if s.id == sd_id)
        if sd.available is not None and nbytes > sd.available:
            raise RestoreNoSpace(
                f"storage domain {sd.name} has {sd.available} bytes free; the disks to "
                f"restore on it need {nbytes}"
            )
    return overwrite


def storage_domain_of(
    d: ManifestDisk, opts: RestoreOptions, sds: Sequence[StorageDomain]
) -> StorageDomain:
    """The storage domain ``d`` is restored to: from the options, else the set's."""
    wanted = opts.storage_domain.get(d.id, d.alias)
    candidates = [wanted] if wanted else [d.storage_domain_id, d.storage_domain_name]
    for c in candidates:
        for sd in sds:
            if c and c in (sd.id, sd.name):
                return sd
    raise RestoreInputError(
        f"storage domain {candidates[0] or candidates[-1]!r} of disk {d.alias} does not exist "
        "(set storage_domain in the options)"
    )
