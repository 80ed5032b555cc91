"""rhvfs.engine's public surface, and the rule that only it imports ovirtsdk4."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pathlib

import rhvfs.engine
from rhvfs.engine import types


def test_exports_every_value_type_and_the_facade() -> None:
    value_types = {
        name
        for name, obj in vars(types).items()
        if dataclasses.is_dataclass(obj) and inspect.isclass(obj)
    }
    assert value_types <= set(rhvfs.engine.__all__)
    assert {"open_engine", "Engine"} <= set(rhvfs.engine.__all__)
    for name in rhvfs.engine.__all__:
        assert getattr(rhvfs.engine, name) is not None


def test_contract_methods_exist_and_are_async() -> None:
    names = [
        "list_datacenters", "list_clusters", "list_hosts", "list_storage_domains", "list_tags", "list_vms",
        "get_vm", "find_vm", "vms_by_tag", "list_templates", "get_template", "disk_attachments",
        "template_disk_attachments", "storage_domain_disks", "get_disk", "vm_nics", "template_nics",
        "list_vnic_profiles", "vm_ovf", "vm_xml", "template_ovf", "template_xml",
        "create_snapshot", "list_snapshots", "snapshot_disks", "remove_snapshot",
        "start_transfer", "get_transfer", "finalize_transfer", "cancel_transfer", "list_transfers",
        "list_all_snapshots_with_description_prefix",
        "start_backup", "backup_disks", "finalize_backup", "list_backups", "list_checkpoints", "remove_checkpoint",
        "create_disk", "remove_disk", "create_vm_from_ovf", "create_vm", "attach_disk", "add_nic",
        "remove_vm", "start_vm", "stop_vm", "create_template_from_ovf",
        "product_info", "add_event",
    ]  # fmt: skip
    for name in names:
        assert inspect.iscoroutinefunction(getattr(rhvfs.engine.Engine, name)), name


def test_value_types_are_frozen() -> None:
    for name in rhvfs.engine.__all__:
        obj = getattr(rhvfs.engine, name)
        if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
            assert vars(obj)["__dataclass_params__"].frozen, name


def test_only_the_engine_package_imports_the_sdk() -> None:
    root = pathlib.Path(rhvfs.engine.__file__).parent.parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in ("engine", "sim"):
            continue  # the simulator may use the SDK's XML readers/writers
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "ovirtsdk4" or n.startswith("ovirtsdk4.") for n in names):
                offenders.append(str(rel))
    assert offenders == []
