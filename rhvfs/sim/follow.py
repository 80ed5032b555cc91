"""The `follow` parameter (API 4.2+): linked objects inlined into the answer, as the engine does.

Owns the engine's link following for the entities the simulator renders:
`GET /vms?follow=disk_attachments.disk,nics,tags` answers every VM with its
disk attachments (each with its full disk), NICs and tags inlined, in one
request. As in the engine's `LinkFollower`, the value is a comma-separated
list of dotted paths; each path segment names either a sub-collection of the
entity (its `<link rel>` without underscores: `disk_attachments` ->
`diskattachments`) or a referenced entity (`disk`, `cluster`, `template`,
`host`, `vnic_profile`, `storage_domains`, ...), fetched as a plain `GET` of
its href would answer it (no `all_content`); the next segment applies to
what the previous one fetched. A segment the entity has no link or
reference for, or a reference that is absent (`host` of a VM that is down),
is a 400 here (the engine fails those requests too). Pure reads of the
state: callers hold the lock. No HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ovirtsdk4 import types

from rhvfs.sim import api_types as conv
from rhvfs.sim import xmlio
from rhvfs.sim.api_base import Engine
from rhvfs.sim.httpd import Request, bad_request
from rhvfs.sim.state import ZERO_ID

# (entity type, link rel) -> its sub-collection as `GET <href>/<rel>` answers it.
_SubCollection = Callable[[Engine, Any], list[Any]]


def _vm_attachments(e: Engine, vm: types.Vm) -> list[Any]:
    v = e.state.vms[vm.id]
    return [conv.attachment(e, "vms", v.id, a) for a in v.attachments]


def _vm_nics(e: Engine, vm: types.Vm) -> list[Any]:
    v = e.state.vms[vm.id]
    return [conv.nic(e, "vms", v.id, n) for n in v.nics]


def _vm_tags(e: Engine, vm: types.Vm) -> list[Any]:
    st = e.state
    return [conv.tag(e, st.tags[t]) for t in st.vms[vm.id].tag_ids if t in st.tags]


def _vm_snapshots(e: Engine, vm: types.Vm) -> list[Any]:
    st = e.state
    return [
        conv.snapshot(e, st.snapshots[s]) for s in st.vms[vm.id].snapshot_ids if s in st.snapshots
    ]


def _template_attachments(e: Engine, t: types.Template) -> list[Any]:
    if t.id == ZERO_ID:
        return []
    return [conv.attachment(e, "templates", t.id, a) for a in e.state.templates[t.id].attachments]


def _template_nics(e: Engine, t: types.Template) -> list[Any]:
    if t.id == ZERO_ID:
        return []
    return [conv.nic(e, "templates", t.id, n) for n in e.state.templates[t.id].nics]


def _empty(e: Engine, obj: Any) -> list[Any]:
    return []


_SUB_COLLECTIONS: dict[tuple[type, str], _SubCollection] = {
    (types.Vm, "diskattachments"): _vm_attachments,
    (types.Vm, "nics"): _vm_nics,
    (types.Vm, "tags"): _vm_tags,
    (types.Vm, "snapshots"): _vm_snapshots,
    **{
        (types.Vm, rel): _empty
        for rel in ("permissions", "statistics", "reporteddevices", "cdroms", "graphicsconsoles")
    },
    (types.Template, "diskattachments"): _template_attachments,
    (types.Template, "nics"): _template_nics,
    (types.Template, "permissions"): _empty,
    **{(types.Disk, rel): _empty for rel in ("permissions", "statistics")},
}


def _template(e: Engine, template_id: str) -> Any:
    if template_id == ZERO_ID:
        return conv.blank_template()
    t = e.state.templates.get(template_id)
    return None if t is None else conv.template(e, t)


def _entity(table: str, render: Callable[[Engine, Any], Any]) -> Callable[[Engine, str], Any]:
    def fetch(e: Engine, record_id: str) -> Any:
        record = getattr(e.state, table).get(record_id)
        return None if record is None else render(e, record)

    return fetch


# collection name in an href (`/ovirt-engine/api/<collection>/<id>`) -> the entity's GET.
_ENTITIES: dict[str, Callable[[Engine, str], Any]] = {
    "vms": _entity("vms", conv.vm),
    "disks": _entity("disks", conv.disk),
    "clusters": _entity("clusters", conv.cluster),
    "datacenters": _entity("datacenters", conv.datacenter),
    "hosts": _entity("hosts", conv.host),
    "storagedomains": _entity("storage_domains", conv.storage_domain),
    "networks": _entity("networks", conv.network),
    "vnicprofiles": _entity("vnic_profiles", conv.vnic_profile),
    "tags": _entity("tags", conv.tag),
    "templates": _template,
}


def paths(req: Request) -> list[list[str]]:
    """The request's `follow` as dotted paths split into segments (empty: none)."""
    value = req.query.get("follow", "")
    result = []
    for link in value.split(","):
        link = link.strip()
        if not link:
            continue
        segments = link.split(".")
        if any(not s.strip() for s in segments):
            raise bad_request(f"Cannot follow {link!r}: empty path segment", reason="Invalid value")
        result.append([s.strip() for s in segments])
    return result


def apply(e: Engine, req: Request, objs: list[Any]) -> None:
    """Inline what the request's `follow` names into `objs` (SDK entities, changed in place)."""
    for path in paths(req):
        _follow(e, objs, path)


def _follow(e: Engine, objs: list[Any], path: list[str]) -> None:
    segment, rest = path[0], path[1:]
    fetched: list[Any] = []
    for obj in objs:
        value = _fetch(e, obj, segment)
        fetched.extend(value if isinstance(value, list) else [value])
    if rest and fetched:
        _follow(e, fetched, rest)


def _fetch(e: Engine, obj: Any, segment: str) -> Any:
    """Set `obj.<segment>` to the followed value and return it (a list or an entity).

    A segment followed earlier in the same request (`disk_attachments,
    disk_attachments.disk`) is not fetched again."""
    kind = type(obj).__name__
    attr = segment.lower()
    rel = attr.replace("_", "")
    current = getattr(obj, attr, None) if hasattr(obj, attr) else None
    if not hasattr(obj, attr):
        raise bad_request(f"Problem following '{segment}' link in {kind} entity: no such link")
    if getattr(current, "_followed", False):
        return current
    sub = _SUB_COLLECTIONS.get((type(obj), rel))
    if sub is not None:
        value: Any = _Followed(sub(e, obj))
    elif isinstance(current, list) and current:
        value = _Followed(_resolve(e, ref, segment, kind) for ref in current)
    elif current is not None and not isinstance(current, list) and hasattr(current, "href"):
        value = _resolve(e, current, segment, kind)
    elif current is not None and not isinstance(current, list):
        raise bad_request(f"Problem following '{segment}' link in {kind} entity: not a link")
    else:
        raise bad_request(f"Problem fetching '{segment}' from {kind}: it has no {segment}")
    setattr(obj, attr, value)
    return value


def _resolve(e: Engine, ref: Any, segment: str, kind: str) -> Any:
    """The full entity a reference (`<cluster href=... id=.../>`) points at."""
    target = getattr(ref, "href", None) or ""
    prefix = xmlio.API + "/"
    parts = target[len(prefix) :].split("/") if target.startswith(prefix) else []
    fetch = _ENTITIES.get(parts[0]) if len(parts) == 2 else None
    entity = fetch(e, parts[1]) if fetch is not None else None
    if entity is None:
        raise bad_request(f"Problem fetching '{segment}' from {kind}: cannot follow {target!r}")
    entity._followed = True
    return entity


class _Followed(list[Any]):
    """A followed sub-collection (a plain list the SDK writer renders inline)."""

    _followed = True
