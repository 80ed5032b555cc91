"""REST resources for the static inventory: API root, data centers, clusters,
hosts, networks, vNIC profiles, storage domains (and their disks / disk
snapshots), tags, events and jobs.

Owns the handlers of those paths: one route table per resource (plain
functions of the `Engine` and the request), `ROUTES` is all of them. Disk
removal through a storage domain delegates to `api_disks`. No phase machines
here.
"""

from __future__ import annotations

import datetime
from typing import Any

from ovirtsdk4 import types

from rhvfs.sim import api_disks, xmlio
from rhvfs.sim import api_types as conv
from rhvfs.sim.api_base import (
    Engine,
    by_id_or_name,
    get_or_404,
    href,
    parse_body,
    ref_tag,
    ref_vm,
    search,
    with_href,
)
from rhvfs.sim.httpd import Request, Response, Route, bad_request, conflict, xml
from rhvfs.sim.state import ZERO_ID, Tag, new_id


def _sv(req: Request, field: str) -> str | None:
    """The value given for `field` in the search query (for membership searches)."""
    query = req.query.get("search", "")
    for term in query.split(" and "):
        k, _, v = term.partition("=")
        if k.strip().lower() == field:
            return v.strip()
    return None


# the API root

_ROOT_LINKS = (
    "clusters",
    "datacenters",
    "disks",
    "events",
    "hosts",
    "imagetransfers",
    "jobs",
    "networks",
    "storagedomains",
    "tags",
    "templates",
    "vms",
    "vnicprofiles",
)
_ROOT_SEARCH_LINKS = (
    "clusters",
    "datacenters",
    "disks",
    "hosts",
    "storagedomains",
    "templates",
    "vms",
)


def get_api(e: Engine, req: Request) -> Response:
    st = e.state
    with st.lock:
        vms = list(st.vms.values())
        links = [(rel, href(rel)) for rel in _ROOT_LINKS]
        links += [(f"{rel}/search", href(rel) + "?search={query}") for rel in _ROOT_SEARCH_LINKS]
        api = types.Api(
            product_info=types.ProductInfo(
                name="oVirt Engine",
                vendor="ovirt.org",
                version=types.Version(
                    build=5, full_version="4.5.5-1.el8", major=4, minor=5, revision=0
                ),
            ),
            special_objects=types.SpecialObjects(
                blank_template=with_href(types.Template(id=ZERO_ID), href("templates", ZERO_ID)),
                root_tag=ref_tag(ZERO_ID),
            ),
            summary=types.ApiSummary(
                hosts=types.ApiSummaryItem(active=len(st.hosts), total=len(st.hosts)),
                storage_domains=types.ApiSummaryItem(
                    active=len(st.storage_domains), total=len(st.storage_domains)
                ),
                users=types.ApiSummaryItem(active=1, total=1),
                vms=types.ApiSummaryItem(
                    active=sum(1 for v in vms if v.status == "up"), total=len(vms)
                ),
            ),
            time=datetime.datetime.now(datetime.UTC),
            authenticated_user=with_href(types.User(id=ZERO_ID), href("users", ZERO_ID)),
            effective_user=with_href(types.User(id=ZERO_ID), href("users", ZERO_ID)),
        )
    return xml(xmlio.render(api, links=links))


API_ROOT: tuple[Route, ...] = (Route("GET", "/", get_api),)


# /datacenters


def list_datacenters(e: Engine, req: Request) -> Response:
    st = e.state
    with st.lock:
        fields = {
            "name": lambda d: d.name,
            "id": lambda d: d.id,
            "storage.name": lambda d: next(
                (
                    s.name
                    for s in st.storage_domains.values()
                    if s.dc_id == d.id and s.name == _sv(req, "storage.name")
                ),
                None,
            ),
            "clusters.name": lambda d: next(
                (
                    c.name
                    for c in st.clusters.values()
                    if c.dc_id == d.id
                    and c.name.lower() == (_sv(req, "clusters.name") or "").lower()
                ),
                None,
            ),
        }
        found = search(req, list(st.datacenters.values()), fields)
        return xml(xmlio.render_list([conv.datacenter(e, d) for d in found], "data_centers"))


def get_datacenter(e: Engine, req: Request, dc: str) -> Response:
    with e.state.lock:
        return xml(xmlio.render(conv.datacenter(e, get_or_404(e.state.datacenters, dc))))


def list_datacenter_clusters(e: Engine, req: Request, dc: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.datacenters, dc)
        items = [conv.cluster(e, c) for c in st.clusters.values() if c.dc_id == dc]
        return xml(xmlio.render_list(items, "clusters"))


def list_datacenter_storage_domains(e: Engine, req: Request, dc: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.datacenters, dc)
        items = [
            conv.storage_domain(e, s, with_status=True)
            for s in st.storage_domains.values()
            if s.dc_id == dc
        ]
        return xml(xmlio.render_list(items, "storage_domains"))


def get_datacenter_storage_domain(e: Engine, req: Request, dc: str, sd: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.datacenters, dc)
        s = get_or_404(st.storage_domains, sd)
        return xml(xmlio.render(conv.storage_domain(e, s, with_status=True)))


def list_datacenter_networks(e: Engine, req: Request, dc: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.datacenters, dc)
        items = [conv.network(e, n) for n in st.networks.values() if n.dc_id == dc]
        return xml(xmlio.render_list(items, "networks"))


DATACENTERS: tuple[Route, ...] = (
    Route("GET", "/datacenters", list_datacenters),
    Route("GET", "/datacenters/{dc}", get_datacenter),
    Route("GET", "/datacenters/{dc}/clusters", list_datacenter_clusters),
    Route("GET", "/datacenters/{dc}/storagedomains", list_datacenter_storage_domains),
    Route("GET", "/datacenters/{dc}/storagedomains/{sd}", get_datacenter_storage_domain),
    Route("GET", "/datacenters/{dc}/networks", list_datacenter_networks),
)


# /clusters


def list_clusters(e: Engine, req: Request) -> Response:
    with e.state.lock:
        found = search(
            req,
            list(e.state.clusters.values()),
            {"name": lambda c: c.name, "id": lambda c: c.id},
        )
        return xml(xmlio.render_list([conv.cluster(e, c) for c in found], "clusters"))


def get_cluster(e: Engine, req: Request, cluster: str) -> Response:
    with e.state.lock:
        return xml(xmlio.render(conv.cluster(e, get_or_404(e.state.clusters, cluster))))


def list_cluster_networks(e: Engine, req: Request, cluster: str) -> Response:
    st = e.state
    with st.lock:
        c = get_or_404(st.clusters, cluster)
        items = [conv.network(e, n) for n in st.networks.values() if n.dc_id == c.dc_id]
        return xml(xmlio.render_list(items, "networks"))


CLUSTERS: tuple[Route, ...] = (
    Route("GET", "/clusters", list_clusters),
    Route("GET", "/clusters/{cluster}", get_cluster),
    Route("GET", "/clusters/{cluster}/networks", list_cluster_networks),
)


# /hosts


def list_hosts(e: Engine, req: Request) -> Response:
    st = e.state
    with st.lock:
        fields = {
            "name": lambda h: h.name,
            "id": lambda h: h.id,
            "status": lambda h: h.status,
            "address": lambda h: h.address,
            "hw_id": lambda h: h.id,
            "datacenter": lambda h: st.datacenters[st.clusters[h.cluster_id].dc_id].name,
            "cluster": lambda h: st.clusters[h.cluster_id].name,
        }
        found = search(req, list(st.hosts.values()), fields)
        return xml(xmlio.render_list([conv.host(e, h) for h in found], "hosts"))


def get_host(e: Engine, req: Request, host: str) -> Response:
    with e.state.lock:
        return xml(xmlio.render(conv.host(e, get_or_404(e.state.hosts, host))))


HOSTS: tuple[Route, ...] = (
    Route("GET", "/hosts", list_hosts),
    Route("GET", "/hosts/{host}", get_host),
)


# /networks and /vnicprofiles


def list_networks(e: Engine, req: Request) -> Response:
    with e.state.lock:
        found = search(
            req,
            list(e.state.networks.values()),
            {"name": lambda n: n.name, "id": lambda n: n.id},
        )
        return xml(xmlio.render_list([conv.network(e, n) for n in found], "networks"))


def get_network(e: Engine, req: Request, network: str) -> Response:
    with e.state.lock:
        return xml(xmlio.render(conv.network(e, get_or_404(e.state.networks, network))))


def list_network_vnic_profiles(e: Engine, req: Request, network: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.networks, network)
        items = [
            conv.vnic_profile(e, p) for p in st.vnic_profiles.values() if p.network_id == network
        ]
        return xml(xmlio.render_list(items, "vnic_profiles"))


def list_vnic_profiles(e: Engine, req: Request) -> Response:
    with e.state.lock:
        items = [conv.vnic_profile(e, p) for p in e.state.vnic_profiles.values()]
        return xml(xmlio.render_list(items, "vnic_profiles"))


def get_vnic_profile(e: Engine, req: Request, profile: str) -> Response:
    with e.state.lock:
        return xml(xmlio.render(conv.vnic_profile(e, get_or_404(e.state.vnic_profiles, profile))))


NETWORKS: tuple[Route, ...] = (
    Route("GET", "/networks", list_networks),
    Route("GET", "/networks/{network}", get_network),
    Route("GET", "/networks/{network}/vnicprofiles", list_network_vnic_profiles),
)

VNIC_PROFILES: tuple[Route, ...] = (
    Route("GET", "/vnicprofiles", list_vnic_profiles),
    Route("GET", "/vnicprofiles/{profile}", get_vnic_profile),
)


# /storagedomains


def list_storage_domains(e: Engine, req: Request) -> Response:
    with e.state.lock:
        found = search(
            req,
            list(e.state.storage_domains.values()),
            {"name": lambda s: s.name, "id": lambda s: s.id, "status": lambda s: s.status},
        )
        return xml(xmlio.render_list([conv.storage_domain(e, s) for s in found], "storage_domains"))


def get_storage_domain(e: Engine, req: Request, sd: str) -> Response:
    with e.state.lock:
        return xml(xmlio.render(conv.storage_domain(e, get_or_404(e.state.storage_domains, sd))))


def list_storage_domain_disks(e: Engine, req: Request, sd: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.storage_domains, sd)
        disks = [d for d in st.disks.values() if d.sd_id == sd]
        found = search(
            req,
            disks,
            {"name": lambda d: d.alias, "alias": lambda d: d.alias, "id": lambda d: d.id},
        )
        return xml(xmlio.render_list([conv.disk(e, d) for d in found], "disks"))


def get_storage_domain_disk(e: Engine, req: Request, sd: str, disk: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.storage_domains, sd)
        d = get_or_404(st.disks, disk)
        if d.sd_id != sd:
            raise bad_request("not on this domain")
        return xml(xmlio.render(conv.disk(e, d)))


def remove_storage_domain_disk(e: Engine, req: Request, sd: str, disk: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.storage_domains, sd)
        d = get_or_404(st.disks, disk)
        api_disks.remove_disk(e, d)
    return xml(xmlio.render(types.Action(status="complete")))


def list_storage_domain_disk_snapshots(e: Engine, req: Request, sd: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.storage_domains, sd)
        items = []
        include_active = req.flag("include_active")
        for d in st.disks.values():
            if d.sd_id != sd:
                continue
            for v in d.volumes:
                if v is d.active and not include_active:
                    continue
                items.append(conv.disk_snapshot(e, d, v))
        return xml(xmlio.render_list(items, "disk_snapshots"))


def get_storage_domain_disk_snapshot(e: Engine, req: Request, sd: str, image: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.storage_domains, sd)
        d = st.disk_of_volume(image)
        if d is None or d.sd_id != sd:
            raise get_or_404({}, image)
        vol = d.volume(image)
        assert vol is not None
        return xml(xmlio.render(conv.disk_snapshot(e, d, vol)))


STORAGE_DOMAINS: tuple[Route, ...] = (
    Route("GET", "/storagedomains", list_storage_domains),
    Route("GET", "/storagedomains/{sd}", get_storage_domain),
    Route("GET", "/storagedomains/{sd}/disks", list_storage_domain_disks),
    Route("GET", "/storagedomains/{sd}/disks/{disk}", get_storage_domain_disk),
    Route("DELETE", "/storagedomains/{sd}/disks/{disk}", remove_storage_domain_disk),
    Route("GET", "/storagedomains/{sd}/disksnapshots", list_storage_domain_disk_snapshots),
    Route("GET", "/storagedomains/{sd}/disksnapshots/{image}", get_storage_domain_disk_snapshot),
)


# /tags


def list_tags(e: Engine, req: Request) -> Response:
    with e.state.lock:
        found = search(
            req, list(e.state.tags.values()), {"name": lambda t: t.name, "id": lambda t: t.id}
        )
        items = [conv.tag(e, t) for t in found]
        if not req.query.get("search"):
            items.append(conv.root_tag())
        return xml(xmlio.render_list(items, "tags"))


def get_tag(e: Engine, req: Request, tag: str) -> Response:
    with e.state.lock:
        if tag == ZERO_ID:
            return xml(xmlio.render(conv.root_tag()))
        return xml(xmlio.render(conv.tag(e, get_or_404(e.state.tags, tag))))


def add_tag(e: Engine, req: Request) -> Response:
    st = e.state
    body = parse_body(req, types.Tag)
    if not body.name:
        raise bad_request("Tag [name] required for add")
    with st.lock:
        if any(t.name == body.name for t in st.tags.values()):
            raise conflict("Cannot add Tag. Tag name is in use.")
        parent_id = ZERO_ID
        if body.parent is not None and (body.parent.id or body.parent.name):
            if body.parent.id == ZERO_ID or body.parent.name == "root":
                parent_id = ZERO_ID
            else:
                parent_id = by_id_or_name(st.tags, body.parent, "parent tag").id
        t = Tag(
            id=new_id(), name=body.name, description=body.description or "", parent_id=parent_id
        )
        st.tags[t.id] = t
        e.save()
        return xml(xmlio.render(conv.tag(e, t)), status=201, Location=href("tags", t.id))


def update_tag(e: Engine, req: Request, tag: str) -> Response:
    st = e.state
    body = parse_body(req, types.Tag)
    with st.lock:
        t = get_or_404(st.tags, tag)
        if body.name:
            if any(o.name == body.name and o.id != t.id for o in st.tags.values()):
                raise conflict("Cannot edit Tag. Tag name is in use.")
            t.name = body.name
        if body.description is not None:
            t.description = body.description
        e.save()
        return xml(xmlio.render(conv.tag(e, t)))


def remove_tag(e: Engine, req: Request, tag: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.tags, tag)
        del st.tags[tag]
        for v in st.vms.values():
            if tag in v.tag_ids:
                v.tag_ids.remove(tag)
        e.save()
    return xml(xmlio.render(types.Action(status="complete")))


TAGS: tuple[Route, ...] = (
    Route("GET", "/tags", list_tags),
    Route("POST", "/tags", add_tag),
    Route("GET", "/tags/{tag}", get_tag),
    Route("PUT", "/tags/{tag}", update_tag),
    Route("DELETE", "/tags/{tag}", remove_tag),
)


# /events and /jobs


def _event_matches(ev: Any, search: str) -> bool:
    """``origin=X`` / ``severity=X`` terms match exactly, other words the description."""
    for term in search.split():
        key, sep, value = term.partition("=")
        if sep and key in ("origin", "severity"):
            if str(getattr(ev, key)).lower() != value.lower():
                return False
        elif term.lower() not in ev.description.lower():
            return False
    return True


def _event_out(ev: Any) -> types.Event:
    return with_href(
        types.Event(
            id=str(ev.id),
            code=ev.code,
            description=ev.description,
            severity=types.LogSeverity(ev.severity),
            time=datetime.datetime.fromisoformat(ev.time),
            origin=ev.origin,
            custom_id=ev.custom_id if ev.custom_id is not None else -1,
            vm=ref_vm(ev.vm_id) if ev.vm_id else None,
        ),
        href("events", str(ev.id)),
    )


def list_events(e: Engine, req: Request) -> Response:
    """Newest first; ``search`` (origin=, severity=, words of the description), ``max``,
    ``from`` (events with that id or newer)."""
    st = e.state
    with st.lock:
        search = req.query.get("search", "").strip()
        first = int(req.query.get("from", "0") or 0)
        events = [
            ev
            for ev in reversed(st.events)
            if ev.id >= first and (not search or _event_matches(ev, search))
        ]
        limit = int(req.query.get("max", "0") or 0)
        if limit > 0:
            events = events[:limit]
        return xml(xmlio.render_list([_event_out(ev) for ev in events], "events"))


def add_event(e: Engine, req: Request) -> Response:
    """An external event, checked as the engine does: origin, severity, custom_id and
    description are required; origin ``oVirt`` is the engine's own; (origin, custom_id)
    is unique. Of a ``vm`` link only the id counts."""
    st = e.state
    body = parse_body(req, types.Event)
    missing = [
        name
        for name, value in (
            ("origin", body.origin),
            ("severity", body.severity),
            ("customId", body.custom_id),
            ("description", body.description),
        )
        if value is None or value == ""
    ]
    if missing:
        raise bad_request(f"Event [{', '.join(missing)}] required for add")
    assert body.origin is not None and body.severity is not None
    if body.origin.lower() == "ovirt":
        raise conflict("Cannot add External Event. Illegal origin: oVirt")
    with st.lock:
        if any(ev.origin == body.origin and ev.custom_id == body.custom_id for ev in st.events):
            raise conflict(
                "Cannot add External Event. An event with the same origin and custom id exists"
            )
        ev = st.add_event(
            body.description or "",
            code=body.code or 0,
            severity=body.severity.value,
            custom_id=body.custom_id,
            origin=body.origin,
            vm_id=body.vm.id if body.vm is not None and body.vm.id else None,
        )
        e.save()
        return xml(xmlio.render(_event_out(ev)), status=201)


def list_jobs(e: Engine, req: Request) -> Response:
    return xml(xmlio.render_list([], "jobs"))


EVENTS: tuple[Route, ...] = (
    Route("GET", "/events", list_events),
    Route("POST", "/events", add_event),
)

JOBS: tuple[Route, ...] = (Route("GET", "/jobs", list_jobs),)


ROUTES: tuple[Route, ...] = (
    *API_ROOT,
    *DATACENTERS,
    *CLUSTERS,
    *HOSTS,
    *NETWORKS,
    *VNIC_PROFILES,
    *STORAGE_DOMAINS,
    *TAGS,
    *EVENTS,
    *JOBS,
)
