"""REST resources for the static inventory: API root, data centers, clusters,
hosts, networks, vNIC profiles, storage domains (and their disks / disk
snapshots), tags, templates, events and jobs.

Owns the handlers of those paths. Disk removal through a storage domain
delegates to `api_disks`. No phase machines here.
"""

from __future__ import annotations

import datetime

from ovirtsdk4 import types

from rhvfs.sim import api_types as conv
from rhvfs.sim import xmlio
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
from rhvfs.sim.httpd import Request, Response, Router, bad_request, conflict, xml
from rhvfs.sim.state import ZERO_ID, Tag, new_id


def register(router: Router, e: Engine) -> None:
    st = e.state

    def api_root(req: Request) -> Response:
        with st.lock:
            vms = list(st.vms.values())
            links = [
                (rel, href(rel))
                for rel in (
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
            ]
            links += [
                (f"{rel}/search", href(rel) + "?search={query}")
                for rel in (
                    "clusters",
                    "datacenters",
                    "disks",
                    "hosts",
                    "storagedomains",
                    "templates",
                    "vms",
                )
            ]
            api = types.Api(
                product_info=types.ProductInfo(
                    name="oVirt Engine",
                    vendor="ovirt.org",
                    version=types.Version(
                        build=5, full_version="4.5.5-1.el8", major=4, minor=5, revision=0
                    ),
                ),
                special_objects=types.SpecialObjects(
                    blank_template=with_href(
                        types.Template(id=ZERO_ID), href("templates", ZERO_ID)
                    ),
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

    router.add("GET", "/", api_root)

    # data centers

    def dcs_list(req: Request) -> Response:
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

    def dc_get(req: Request, dc: str) -> Response:
        with st.lock:
            return xml(xmlio.render(conv.datacenter(e, get_or_404(st.datacenters, dc))))

    def dc_clusters(req: Request, dc: str) -> Response:
        with st.lock:
            get_or_404(st.datacenters, dc)
            items = [conv.cluster(e, c) for c in st.clusters.values() if c.dc_id == dc]
            return xml(xmlio.render_list(items, "clusters"))

    def dc_sds(req: Request, dc: str) -> Response:
        with st.lock:
            get_or_404(st.datacenters, dc)
            items = [
                conv.storage_domain(e, s, with_status=True)
                for s in st.storage_domains.values()
                if s.dc_id == dc
            ]
            return xml(xmlio.render_list(items, "storage_domains"))

    def dc_sd(req: Request, dc: str, sd: str) -> Response:
        with st.lock:
            get_or_404(st.datacenters, dc)
            s = get_or_404(st.storage_domains, sd)
            return xml(xmlio.render(conv.storage_domain(e, s, with_status=True)))

    def dc_networks(req: Request, dc: str) -> Response:
        with st.lock:
            get_or_404(st.datacenters, dc)
            items = [conv.network(e, n) for n in st.networks.values() if n.dc_id == dc]
            return xml(xmlio.render_list(items, "networks"))

    router.add("GET", "/datacenters", dcs_list)
    router.add("GET", "/datacenters/{dc}", dc_get)
    router.add("GET", "/datacenters/{dc}/clusters", dc_clusters)
    router.add("GET", "/datacenters/{dc}/storagedomains", dc_sds)
    router.add("GET", "/datacenters/{dc}/storagedomains/{sd}", dc_sd)
    router.add("GET", "/datacenters/{dc}/networks", dc_networks)

    # clusters, hosts, networks, vnic profiles

    def clusters_list(req: Request) -> Response:
        with st.lock:
            found = search(
                req, list(st.clusters.values()), {"name": lambda c: c.name, "id": lambda c: c.id}
            )
            return xml(xmlio.render_list([conv.cluster(e, c) for c in found], "clusters"))

    def cluster_get(req: Request, cluster: str) -> Response:
        with st.lock:
            return xml(xmlio.render(conv.cluster(e, get_or_404(st.clusters, cluster))))

    def cluster_networks(req: Request, cluster: str) -> Response:
        with st.lock:
            c = get_or_404(st.clusters, cluster)
            items = [conv.network(e, n) for n in st.networks.values() if n.dc_id == c.dc_id]
            return xml(xmlio.render_list(items, "networks"))

    def hosts_list(req: Request) -> Response:
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

    def host_get(req: Request, host: str) -> Response:
        with st.lock:
            return xml(xmlio.render(conv.host(e, get_or_404(st.hosts, host))))

    def networks_list(req: Request) -> Response:
        with st.lock:
            found = search(
                req, list(st.networks.values()), {"name": lambda n: n.name, "id": lambda n: n.id}
            )
            return xml(xmlio.render_list([conv.network(e, n) for n in found], "networks"))

    def network_get(req: Request, network: str) -> Response:
        with st.lock:
            return xml(xmlio.render(conv.network(e, get_or_404(st.networks, network))))

    def network_profiles(req: Request, network: str) -> Response:
        with st.lock:
            get_or_404(st.networks, network)
            items = [
                conv.vnic_profile(e, p)
                for p in st.vnic_profiles.values()
                if p.network_id == network
            ]
            return xml(xmlio.render_list(items, "vnic_profiles"))

    def profiles_list(req: Request) -> Response:
        with st.lock:
            items = [conv.vnic_profile(e, p) for p in st.vnic_profiles.values()]
            return xml(xmlio.render_list(items, "vnic_profiles"))

    def profile_get(req: Request, profile: str) -> Response:
        with st.lock:
            return xml(xmlio.render(conv.vnic_profile(e, get_or_404(st.vnic_profiles, profile))))

    router.add("GET", "/clusters", clusters_list)
    router.add("GET", "/clusters/{cluster}", cluster_get)
    router.add("GET", "/clusters/{cluster}/networks", cluster_networks)
    router.add("GET", "/hosts", hosts_list)
    router.add("GET", "/hosts/{host}", host_get)
    router.add("GET", "/networks", networks_list)
    router.add("GET", "/networks/{network}", network_get)
    router.add("GET", "/networks/{network}/vnicprofiles", network_profiles)
    router.add("GET", "/vnicprofiles", profiles_list)
    router.add("GET", "/vnicprofiles/{profile}", profile_get)

    # storage domains

    def sds_list(req: Request) -> Response:
        with st.lock:
            found = search(
                req,
                list(st.storage_domains.values()),
                {"name": lambda s: s.name, "id": lambda s: s.id, "status": lambda s: s.status},
            )
            return xml(
                xmlio.render_list([conv.storage_domain(e, s) for s in found], "storage_domains")
            )

    def sd_get(req: Request, sd: str) -> Response:
        with st.lock:
            return xml(xmlio.render(conv.storage_domain(e, get_or_404(st.storage_domains, sd))))

    def sd_disks(req: Request, sd: str) -> Response:
        with st.lock:
            get_or_404(st.storage_domains, sd)
            disks = [d for d in st.disks.values() if d.sd_id == sd]
            found = search(
                req,
                disks,
                {"name": lambda d: d.alias, "alias": lambda d: d.alias, "id": lambda d: d.id},
            )
            return xml(xmlio.render_list([conv.disk(e, d) for d in found], "disks"))

    def sd_disk(req: Request, sd: str, disk: str) -> Response:
        with st.lock:
            get_or_404(st.storage_domains, sd)
            d = get_or_404(st.disks, disk)
            if d.sd_id != sd:
                raise bad_request("not on this domain")
            return xml(xmlio.render(conv.disk(e, d)))

    def sd_disk_delete(req: Request, sd: str, disk: str) -> Response:
        from rhvfs.sim import api_disks

        with st.lock:
            get_or_404(st.storage_domains, sd)
            d = get_or_404(st.disks, disk)
            api_disks.remove_disk(e, d)
        return xml(xmlio.render(types.Action(status="complete")))

    def sd_disksnapshots(req: Request, sd: str) -> Response:
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

    def sd_disksnapshot(req: Request, sd: str, image: str) -> Response:
        with st.lock:
            get_or_404(st.storage_domains, sd)
            d = st.disk_of_volume(image)
            if d is None or d.sd_id != sd:
                raise get_or_404({}, image)
            vol = d.volume(image)
            assert vol is not None
            return xml(xmlio.render(conv.disk_snapshot(e, d, vol)))

    router.add("GET", "/storagedomains", sds_list)
    router.add("GET", "/storagedomains/{sd}", sd_get)
    router.add("GET", "/storagedomains/{sd}/disks", sd_disks)
    router.add("GET", "/storagedomains/{sd}/disks/{disk}", sd_disk)
    router.add("DELETE", "/storagedomains/{sd}/disks/{disk}", sd_disk_delete)
    router.add("GET", "/storagedomains/{sd}/disksnapshots", sd_disksnapshots)
    router.add("GET", "/storagedomains/{sd}/disksnapshots/{image}", sd_disksnapshot)

    # tags

    def tags_list(req: Request) -> Response:
        with st.lock:
            found = search(
                req, list(st.tags.values()), {"name": lambda t: t.name, "id": lambda t: t.id}
            )
            items = [conv.tag(e, t) for t in found]
            if not req.query.get("search"):
                items.append(conv.root_tag())
            return xml(xmlio.render_list(items, "tags"))

    def tag_get(req: Request, tag: str) -> Response:
        with st.lock:
            if tag == ZERO_ID:
                return xml(xmlio.render(conv.root_tag()))
            return xml(xmlio.render(conv.tag(e, get_or_404(st.tags, tag))))

    def tag_add(req: Request) -> Response:
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

    def tag_update(req: Request, tag: str) -> Response:
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

    def tag_delete(req: Request, tag: str) -> Response:
        with st.lock:
            get_or_404(st.tags, tag)
            del st.tags[tag]
            for v in st.vms.values():
                if tag in v.tag_ids:
                    v.tag_ids.remove(tag)
            e.save()
        return xml(xmlio.render(types.Action(status="complete")))

    router.add("GET", "/tags", tags_list)
    router.add("POST", "/tags", tag_add)
    router.add("GET", "/tags/{tag}", tag_get)
    router.add("PUT", "/tags/{tag}", tag_update)
    router.add("DELETE", "/tags/{tag}", tag_delete)

    # events and jobs

    def events_list(req: Request) -> Response:
        with st.lock:
            text = req.query.get("search", "").strip().lower()
            events = [
                ev for ev in reversed(st.events) if not text or text in ev.description.lower()
            ]
            limit = int(req.query.get("max", "0") or 0)
            if limit > 0:
                events = events[:limit]
            items = [
                with_href(
                    types.Event(
                        id=str(ev.id),
                        code=ev.code,
                        description=ev.description,
                        severity=types.LogSeverity(ev.severity),
                        time=datetime.datetime.fromisoformat(ev.time),
                        origin=ev.origin,
                        custom_id=ev.custom_id,
                        vm=ref_vm(ev.vm_id) if ev.vm_id else None,
                    ),
                    href("events", str(ev.id)),
                )
                for ev in events
            ]
            return xml(xmlio.render_list(items, "events"))

    def events_add(req: Request) -> Response:
        body = parse_body(req, types.Event)
        with st.lock:
            ev = st.add_event(
                body.description or "",
                code=body.code or 0,
                severity=body.severity.value if body.severity else "normal",
                custom_id=body.custom_id,
                origin=body.origin or "external",
            )
            e.save()
            out = with_href(
                types.Event(
                    id=str(ev.id),
                    description=ev.description,
                    severity=types.LogSeverity(ev.severity),
                    time=datetime.datetime.fromisoformat(ev.time),
                    origin=ev.origin,
                    custom_id=ev.custom_id,
                ),
                href("events", str(ev.id)),
            )
            return xml(xmlio.render(out), status=201)

    def jobs_list(req: Request) -> Response:
        return xml(xmlio.render_list([], "jobs"))

    router.add("GET", "/events", events_list)
    router.add("POST", "/events", events_add)
    router.add("GET", "/jobs", jobs_list)


def _sv(req: Request, field: str) -> str | None:
    """The value given for `field` in the search query (for membership searches)."""
    query = req.query.get("search", "")
    for term in query.split(" and "):
        k, _, v = term.partition("=")
        if k.strip().lower() == field:
            return v.strip()
    return None
