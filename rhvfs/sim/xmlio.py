"""XML in and out of the simulated engine, through the official SDK's (de)serializers.

Owns the wire form of entities: `ovirtsdk4.writers` render `ovirtsdk4.types`
objects, then this module adds what the SDK writers never emit — `<link rel>`
children advertising sub-collections (ovirt-api-subset.md §2.3). Hrefs are set
on the SDK objects by the callers (see `href()`), so nested references carry
them too. Request bodies are parsed with `ovirtsdk4.reader.Reader`. No state,
no HTTP.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from ovirtsdk4 import reader as sdk_reader
from ovirtsdk4 import types
from ovirtsdk4 import writer as sdk_writer

API = "/ovirt-engine/api"

# Sub-collection rels advertised on full entities (keyed by element name).
LINKS: dict[str, tuple[str, ...]] = {
    "vm": (
        "diskattachments",
        "nics",
        "snapshots",
        "tags",
        "backups",
        "checkpoints",
        "permissions",
        "statistics",
        "reporteddevices",
    ),
    "template": ("diskattachments", "nics", "tags", "permissions"),
    "disk": ("disksnapshots", "permissions", "statistics"),
    "storage_domain": ("disks", "disksnapshots", "vms", "templates", "permissions"),
    "data_center": ("clusters", "storagedomains", "networks", "permissions"),
    "cluster": ("networks", "permissions"),
    "host": ("nics", "statistics", "permissions"),
    "snapshot": ("disks", "nics", "cdroms"),
    "backup": ("disks",),
    "checkpoint": ("disks",),
    "network": ("vnicprofiles", "permissions"),
}

# Elements that are their own entity (not a disk seen through a collection
# that uses the same tag for something else).
_NO_LINKS_UNDER = {"disk_snapshot"}


def href(*parts: str) -> str:
    """`href("vms", vm_id, "nics")` -> `/ovirt-engine/api/vms/<id>/nics`."""
    return "/".join((API, *parts))


def _add_links(elem: ET.Element) -> None:
    rels = LINKS.get(elem.tag)
    base = elem.get("href")
    if rels and base and len(elem) > 0 and elem.tag not in _NO_LINKS_UNDER:
        for rel in rels:
            ET.SubElement(elem, "link", {"href": f"{base}/{rel}", "rel": rel})
        # Nested full entities (e.g. disks inside a list) are handled below.
    for child in list(elem):
        if child.tag != "link":
            _add_links(child)


def render(obj: Any, *, links: Sequence[tuple[str, str]] = ()) -> bytes:
    """One entity (or an `Action`/`Fault`) as the engine's XML document.

    `links` are extra `(rel, href)` pairs (the API root's collection links)."""
    text = sdk_writer.Writer.write(obj)
    root = ET.fromstring(text)
    _add_links(root)
    for rel, target in links:
        ET.SubElement(root, "link", {"href": target, "rel": rel})
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def render_list(objs: Sequence[Any], root: str) -> bytes:
    """A list under its plural root element (`vms`, `disk_attachments`, ...)."""
    text = sdk_writer.Writer.write(list(objs), root=root)
    tree = ET.fromstring(text)
    for child in tree:
        _add_links(child)
    return ET.tostring(tree, encoding="utf-8", xml_declaration=True)


def fault(reason: str, detail: str) -> bytes:
    return render(types.Fault(reason=reason, detail=detail))


def parse(body: bytes) -> Any:
    """A request body as an SDK object; raises ValueError on malformed input."""
    if not body.strip():
        raise ValueError("empty body")
    try:
        return sdk_reader.Reader.read(body)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(str(e)) from e
