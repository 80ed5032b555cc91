"""Shared pieces of the restore mount tests: a module-wide mount, backup sets exported
through it, and the small steps of a restore (a ``restore/<name>`` directory, the
set's disks, VMs to remove afterwards)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mounts import SimMount
from tests.support.sim import remove_vm


def module_mount(
    sim: Any, tmp_path_factory: pytest.TempPathFactory, label: str, *args: str
) -> Iterator[SimMount]:
    """A mount for a test module (``yield from`` it in a fixture), unmounted after."""
    base = tmp_path_factory.mktemp(label)
    (base / "state").mkdir()
    m = SimMount(sim, base / "mnt", base / "state", *args)
    try:
        yield m
    finally:
        m.umount()


def export_sets(
    mnt: SimMount, base: Path, vms: Iterable[str], *, sparse: bool = False
) -> dict[str, Path]:
    """Each VM's ``@rhv/`` set copied out of the mount with ``cp -a`` (``sparse``: zero
    runs become holes, ``--sparse=always``)."""
    out = {}
    for vm in vms:
        argv = ["cp", "-a", *(["--sparse=always"] if sparse else [])]
        subprocess.run([*argv, str(mnt.mnt / "vms" / vm / "@rhv"), str(base / vm)], check=True)
        out[vm] = base / vm
    return out


def removing_vms(sim: Any) -> Iterator[list[str]]:
    """A list a test appends VM names to; they are removed afterwards (``yield from``)."""
    names: list[str] = []
    yield names
    for name in names:
        remove_vm(sim, name)


def manifest_disks(set_dir: Path) -> list[dict[str, Any]]:
    return json.loads((set_dir / "manifest.json").read_bytes())["disks"]  # type: ignore[no-any-return]


def start_restore(mnt: SimMount, name: str, options: str = "") -> Path:
    """``mkdir restore/<name>`` with the options file when given."""
    target = mnt.mnt / "restore" / name
    target.mkdir()
    if options:
        (target / "rhvfs-restore.conf").write_text(options)
    return target
