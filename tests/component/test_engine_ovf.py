"""The OVF reads of rhvfs.engine against the simulator: VM, template and snapshot.

The simulator, like the engine, returns ``initialization/configuration`` only
when the request asks for all content (header ``All-Content: true`` or
``?all_content=true``). ``TemplateService.get`` and ``SnapshotService.get`` of
SDK 4.6.3 have no ``all_content`` parameter and drop it silently, so these tests
pin that every OVF read really receives the OVF, and that it describes the
right object (names, ids, disks), not just that something came back.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rhvfs.config import load_config
from rhvfs.engine import Engine, open_engine
from rhvfs.retry import RetryPolicy

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
FAST_POLL = RetryPolicy.for_polling(interval_s=0.05, max_interval_s=0.25, timeout_s=120.0)


@pytest.fixture
async def engine(sim: Any) -> AsyncIterator[Engine]:
    cfg = load_config(section=sim.section, config_file=sim.conf_file)
    async with open_engine(cfg, connections=2, poll=FAST_POLL) as eng:
        yield eng


def _o(name: str) -> str:
    return f"{{{OVF_NS}}}{name}"


def _parse(text: str) -> tuple[str, str, set[str]]:
    """(Content/Name, OperatingSystemSection ovf:id, disk ids of the DiskSection) of an OVF."""
    root = ET.fromstring(text)
    assert root.tag == _o("Envelope")
    # Only the envelope is namespaced; its children are plain elements, as in the engine's OVF.
    content = root.find("Content")
    assert content is not None
    name = content.findtext("Name")
    assert name is not None
    os_ids = [
        s.get(_o("id"), "")
        for s in content.findall("Section")
        if s.get(f"{{{XSI_NS}}}type") == "ovf:OperatingSystemSection_Type"
    ]
    assert len(os_ids) == 1
    disk_ids = {
        d.get(_o("disk-id"), "")
        for section in root.findall("Section")
        if section.get(f"{{{XSI_NS}}}type") == "ovf:DiskSection_Type"
        for d in section.findall("Disk")
    }
    return name, os_ids[0], disk_ids


async def test_vm_ovf_names_the_vm_and_its_disks(engine: Engine) -> None:
    vm = await engine.find_vm("myvm")
    assert vm is not None
    name, vm_id, disk_ids = _parse(await engine.vm_ovf(vm.id))
    assert (name, vm_id) == ("myvm", vm.id)
    assert disk_ids == {a.disk.id for a in await engine.disk_attachments(vm.id)}
    assert b"<initialization>" in await engine.vm_xml(vm.id)


async def test_template_ovf_names_the_template_and_its_disks(engine: Engine) -> None:
    tpl = next(t for t in await engine.list_templates() if t.name == "mytemplate")
    text = await engine.template_ovf(tpl.id)
    name, tpl_id, disk_ids = _parse(text)
    assert (name, tpl_id) == ("mytemplate", tpl.id)
    atts = await engine.template_disk_attachments(tpl.id)
    assert atts and disk_ids == {a.disk.id for a in atts}
    xml = await engine.template_xml(tpl.id)
    assert b"<initialization>" in xml and b"<configuration>" in xml


async def test_snapshot_ovf_of_a_fresh_snapshot(engine: Engine) -> None:
    vm = await engine.find_vm("myvm")
    assert vm is not None
    snap = await engine.create_snapshot(vm.id, description=f"rhvfs-test-{uuid.uuid4()}")
    try:
        text = await engine.snapshot_ovf(vm.id, snap.id)
        assert text is not None and text.strip()
        name, vm_id, disk_ids = _parse(text)
        assert (name, vm_id) == ("myvm", vm.id)
        assert disk_ids == {d.id for d in await engine.snapshot_disks(vm.id, snap.id)}
    finally:
        await engine.remove_snapshot(vm.id, snap.id)
