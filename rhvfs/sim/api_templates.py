"""REST resources for templates: list/get (with the OVF under `all_content`),
create from a VM, import from an OVF configuration, edit (name, description,
comment), removal, and their disk attachments and NICs.

Owns `/templates`. The Blank template (all-zero id) always exists and cannot
be removed. A template made from a VM (which must be down) gets copies of the
VM's disks (new ids, content copied by `disk_copy`), its disk attachments and
NICs; it is `locked` until the copies are done, then `ok` (the VM is
`image_locked` and its disks `locked` meanwhile).
"""

from __future__ import annotations

import logging

from ovirtsdk4 import types

from rhvfs.sim import api_disks, api_ovf, disk_copy, follow, xmlio
from rhvfs.sim import api_types as conv
from rhvfs.sim.api_base import (
    Engine,
    action_done,
    by_id_or_name,
    check_disk_unlocked,
    get_or_404,
    href,
    parse_body,
    search,
)
from rhvfs.sim.httpd import Request, Response, Route, bad_request, conflict, xml
from rhvfs.sim.state import ZERO_ID, Attachment, Nic, Template, Vm, new_id

log = logging.getLogger(__name__)


def blank() -> types.Template:
    return conv.blank_template()


def template_ovf(e: Engine, t: Template) -> str:
    """The template's configuration in the same OVF layout as a VM's."""
    view = Vm(
        id=t.id,
        name=t.name,
        cluster_id=t.cluster_id or next(iter(e.state.clusters)),
        active_snapshot_id="",
        description=t.description,
        comment=t.comment,
        memory_bytes=t.memory_bytes,
        os_type=t.os_type,
        attachments=t.attachments,
        nics=t.nics,
    )
    return api_ovf.make_ovf(e, view)


def _import(e: Engine, body: types.Template) -> Template:
    st = e.state
    config = body.initialization.configuration
    try:
        ovf = api_ovf.parse_ovf(config.data)
    except ValueError as err:
        raise bad_request(f"Cannot parse the OVF: {err}", reason="Invalid value") from err
    regenerate = bool(body.initialization.regenerate_ids)
    template_id = None if regenerate or not ovf.vm_id else ovf.vm_id
    if template_id is not None and (template_id in st.templates or template_id == ZERO_ID):
        raise conflict(f"Cannot import Template. Template id {template_id} already exists.")
    name = body.name or ovf.name
    if not name:
        raise bad_request("Template [name] required for add")
    if name == "Blank" or any(t.name == name for t in st.templates.values()):
        raise conflict("Cannot add Template. The Template name is already in use.")
    cluster = by_id_or_name(st.clusters, body.cluster, "cluster")
    t = Template(
        id=template_id or new_id(),
        name=name,
        description=body.description if body.description is not None else ovf.description,
        comment=body.comment if body.comment is not None else ovf.comment,
        cluster_id=cluster.id,
        memory_bytes=ovf.memory_bytes or 1024**3,
        os_type=ovf.os_type or "other_linux",
    )
    for od in ovf.disks:
        d = st.disks.get(od.disk_id)
        if d is None or st.vm_of_disk(d.id) is not None or st.template_of_disk(d.id) is not None:
            st.add_event(
                f"Template {name}: disk {od.disk_id} is missing or in use, skipped.",
                severity="warning",
            )
            continue
        d.active.snapshot_id = None
        t.attachments.append(Attachment(disk_id=d.id, interface=od.interface, bootable=od.bootable))
    for on in ovf.nics:
        profile = next((p for p in st.vnic_profiles.values() if p.name == on.network), None)
        t.nics.append(
            Nic(
                id=new_id(),
                name=on.name,
                mac="",
                vnic_profile_id=profile.id if profile else None,
                interface=on.interface,
            )
        )
    st.templates[t.id] = t
    st.add_event(f"Template {name} was imported from a configuration.")
    return t


def _from_vm(e: Engine, body: types.Template) -> Template:
    """`<template><name/><vm id=…/></template>` (caller holds the lock)."""
    st = e.state
    if not body.name:
        raise bad_request("Template [name] required for add")
    vm = by_id_or_name(st.vms, body.vm, "vm")
    if vm.status != "down":
        raise conflict(f"Cannot add Template. VM {vm.name} is {vm.status}; it must be down.")
    if body.name == "Blank" or any(t.name == body.name for t in st.templates.values()):
        raise conflict("Cannot add Template. The Template name is already in use.")
    sources = []
    for a in vm.attachments:
        d = st.disks.get(a.disk_id)
        if d is None:
            continue
        check_disk_unlocked(d)
        sources.append((a, d, d.active.id))
    cluster_id = vm.cluster_id
    if body.cluster is not None and (body.cluster.id or body.cluster.name):
        cluster_id = by_id_or_name(st.clusters, body.cluster, "cluster").id
    t = Template(
        id=new_id(),
        name=body.name,
        description=body.description or "",
        comment=body.comment or "",
        cluster_id=cluster_id,
        memory_bytes=vm.memory_bytes,
        os_type=vm.os_type,
        nics=[
            Nic(
                id=new_id(),
                name=n.name,
                mac="",
                vnic_profile_id=n.vnic_profile_id,
                interface=n.interface,
            )
            for n in vm.nics
        ],
    )
    st.templates[t.id] = t
    disk_copy.copy_disks(e, t, sources, source_vm_id=vm.id)
    st.add_event(f"Creation of Template {t.name} from VM {vm.name} was initiated.")
    log.info("template %s (%s) from vm %s: %d disk(s)", t.id, t.name, vm.id, len(sources))
    return t


def _all_content(req: Request) -> bool:
    return req.flag("all_content") or req.headers.get("all-content", "").lower() == "true"


def _render(e: Engine, t: Template, req: Request) -> types.Template:
    out = conv.template(e, t)
    if _all_content(req):
        out.initialization = types.Initialization(
            configuration=types.Configuration(
                type=types.ConfigurationType.OVF, data=template_ovf(e, t)
            )
        )
    return out


def list_templates(e: Engine, req: Request) -> Response:
    with e.state.lock:
        found = search(
            req,
            list(e.state.templates.values()),
            {"name": lambda t: t.name, "id": lambda t: t.id},
        )
        items = [_render(e, t, req) for t in found]
        query = req.query.get("search", "").lower().replace(" ", "")
        if not query or query in ("name=blank", f"id={ZERO_ID}"):
            items.insert(0, blank())
        follow.apply(e, req, items)
        return xml(xmlio.render_list(items, "templates"))


def get_template(e: Engine, req: Request, template: str) -> Response:
    with e.state.lock:
        if template == ZERO_ID:
            item = blank()
        else:
            item = _render(e, get_or_404(e.state.templates, template), req)
        follow.apply(e, req, [item])
        return xml(xmlio.render(item))


def add_template(e: Engine, req: Request) -> Response:
    body = parse_body(req, types.Template)
    with e.state.lock:
        if (
            body.initialization is not None
            and body.initialization.configuration is not None
            and body.initialization.configuration.data
        ):
            t = _import(e, body)
            e.save()
            return xml(
                xmlio.render(conv.template(e, t)), status=201, Location=href("templates", t.id)
            )
        if body.vm is not None and (body.vm.id or body.vm.name):
            t = _from_vm(e, body)
            e.save()
            return xml(
                xmlio.render(conv.template(e, t)), status=201, Location=href("templates", t.id)
            )
        raise bad_request("Template [vm|initialization.configuration] required for add")


def update_template(e: Engine, req: Request, template: str) -> Response:
    """Name, description and comment (the fields the engine's edit takes from a restore)."""
    st = e.state
    body = parse_body(req, types.Template)
    with st.lock:
        if template == ZERO_ID:
            raise conflict("Cannot edit Template. The Blank template cannot be edited.")
        t = get_or_404(st.templates, template)
        if body.name and body.name != t.name:
            if body.name == "Blank" or any(o.name == body.name for o in st.templates.values()):
                raise conflict("Cannot edit Template. The Template name is already in use.")
            t.name = body.name
        if body.description is not None:
            t.description = body.description
        if body.comment is not None:
            t.comment = body.comment
        e.save()
        return xml(xmlio.render(conv.template(e, t)))


def remove_template(e: Engine, req: Request, template: str) -> Response:
    st = e.state
    with st.lock:
        if template == ZERO_ID:
            raise conflict("Cannot remove Template. The Blank template cannot be removed.")
        t = get_or_404(st.templates, template)
        users = [v.name for v in st.vms.values() if v.template_id == t.id]
        if users:
            raise conflict(f"Cannot remove Template. It is used by VMs: {', '.join(users)}.")
        disks = [st.disks[a.disk_id] for a in t.attachments if a.disk_id in st.disks]
        for d in disks:
            if d.status == "locked":  # an illegal copy goes with its template
                check_disk_unlocked(d)
        del st.templates[t.id]
        for d in disks:
            api_disks.drop_disk(e, d)
        e.save()
    return xml(action_done())


def list_template_attachments(e: Engine, req: Request, template: str) -> Response:
    with e.state.lock:
        if template == ZERO_ID:
            return xml(xmlio.render_list([], "disk_attachments"))
        t = get_or_404(e.state.templates, template)
        items = [conv.attachment(e, "templates", t.id, a) for a in t.attachments]
        return xml(xmlio.render_list(items, "disk_attachments"))


def list_template_nics(e: Engine, req: Request, template: str) -> Response:
    with e.state.lock:
        if template == ZERO_ID:
            return xml(xmlio.render_list([], "nics"))
        t = get_or_404(e.state.templates, template)
        items = [conv.nic(e, "templates", t.id, n) for n in t.nics]
        return xml(xmlio.render_list(items, "nics"))


TEMPLATES: tuple[Route, ...] = (
    Route("GET", "/templates", list_templates),
    Route("POST", "/templates", add_template),
    Route("GET", "/templates/{template}", get_template),
    Route("PUT", "/templates/{template}", update_template),
    Route("DELETE", "/templates/{template}", remove_template),
)

TEMPLATE_DISK_ATTACHMENTS: tuple[Route, ...] = (
    Route("GET", "/templates/{template}/diskattachments", list_template_attachments),
)

TEMPLATE_NICS: tuple[Route, ...] = (Route("GET", "/templates/{template}/nics", list_template_nics),)

ROUTES: tuple[Route, ...] = (*TEMPLATES, *TEMPLATE_DISK_ATTACHMENTS, *TEMPLATE_NICS)
