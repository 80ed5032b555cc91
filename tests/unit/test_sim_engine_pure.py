"""Pure pieces of the simulated engine: XML rendering, search, faults, tasks, state, OVF."""

from __future__ import annotations

import inspect
import re
import threading
import time
import types as pytypes
from pathlib import Path

import ovirtsdk4.reader
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ovirtsdk4 import types

from rhvfs.sim import (
    api_admin,
    api_backups,
    api_disks,
    api_infra,
    api_ovf,
    api_snapshots,
    api_templates,
    api_transfers,
    api_vms,
    follow,
    xmlio,
)
from rhvfs.sim.api_base import search, with_href
from rhvfs.sim.faults import EngineFault, Faults
from rhvfs.sim.httpd import (
    NO_ROUTE,
    App,
    Auth,
    CallCounter,
    HttpError,
    Request,
    Response,
    Route,
    Router,
)
from rhvfs.sim.state import (
    Attachment,
    Cluster,
    DataCenter,
    Disk,
    Nic,
    State,
    StorageDomain,
    Vm,
    Volume,
)
from rhvfs.sim.tasks import Tasks


def _req(**query: str) -> Request:
    return Request(method="GET", path="/x", query=query, headers={}, body=b"")


def test_render_adds_links_that_the_sdk_turns_into_hrefs() -> None:
    vm = with_href(
        types.Vm(id="v1", name="myvm", status=types.VmStatus.UP), xmlio.href("vms", "v1")
    )
    vm.cluster = with_href(types.Cluster(id="c1"), xmlio.href("clusters", "c1"))
    body = xmlio.render(vm)
    parsed = ovirtsdk4.reader.Reader.read(body)
    assert parsed.href == "/ovirt-engine/api/vms/v1"
    assert parsed.cluster.href == "/ovirt-engine/api/clusters/c1"
    assert parsed.disk_attachments.href == "/ovirt-engine/api/vms/v1/diskattachments"
    assert parsed.snapshots.href == "/ovirt-engine/api/vms/v1/snapshots"
    assert parsed.status == types.VmStatus.UP
    # A nested reference (no children) gets no links.
    assert b'<cluster href="/ovirt-engine/api/clusters/c1" id="c1" />' in body


def test_render_list_uses_the_plural_root_and_empty_lists_parse() -> None:
    disks = [
        with_href(types.Disk(id=f"d{i}", alias=f"a{i}"), xmlio.href("disks", f"d{i}"))
        for i in range(2)
    ]
    parsed = ovirtsdk4.reader.Reader.read(xmlio.render_list(disks, "disks"))
    assert [d.id for d in parsed] == ["d0", "d1"]
    assert parsed[0].disk_snapshots.href == "/ovirt-engine/api/disks/d0/disksnapshots"
    assert ovirtsdk4.reader.Reader.read(xmlio.render_list([], "image_transfers")) == []


def test_fault_body_parses_as_fault() -> None:
    fault = ovirtsdk4.reader.Reader.read(xmlio.fault("Operation Failed", "[Cannot x]"))
    assert isinstance(fault, types.Fault)
    assert (fault.reason, fault.detail) == ("Operation Failed", "[Cannot x]")


def test_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        xmlio.parse(b"")
    with pytest.raises(ValueError):
        xmlio.parse(b"<vm><stateless>maybe</stateless></vm>")


def test_search_terms_wildcards_case_and_pages() -> None:
    names = ["myvm", "myvm0", "web01", "MyOther"]
    fields = {"name": lambda n: n, "status": lambda n: "up" if n.startswith("web") else "down"}
    assert search(_req(search="name=MYVM"), names, fields) == ["myvm"]
    assert search(_req(search="name=MYVM", case_sensitive="true"), names, fields) == []
    assert search(_req(search="name=my*"), names, fields) == ["myvm", "myvm0", "MyOther"]
    assert search(_req(search="name=my* and status=down"), names, fields) == [
        "myvm",
        "myvm0",
        "MyOther",
    ]
    assert search(_req(search="name=* AND status=up"), names, fields) == ["web01"]
    assert search(_req(search="page 2", max="1"), names, fields) == ["myvm0"]
    assert search(_req(search="page 9", max="1"), names, fields) == []
    assert search(_req(max="2"), names, fields) == ["myvm", "myvm0"]
    with pytest.raises(HttpError) as err:
        search(_req(search="color=red"), names, fields)
    assert err.value.status == 400


def test_search_or_not_equal_and_many_valued_fields() -> None:
    tags = {"a": ["x", "y"], "b": ["y"], "c": [], "d": ["z"]}
    fields = {"name": lambda n: n, "tag": lambda n: tags[n]}

    def found(query: str) -> list[str]:
        return search(_req(search=query), list(tags), fields)

    assert found("tag=y") == ["a", "b"]
    assert found("tag!=y") == ["c", "d"]
    assert found("tag=x or tag=z") == ["a", "d"]
    assert found("tag=y and name!=a or name=c") == ["b", "c"]
    assert found("tag=*") == ["a", "b", "d"]
    assert found("TAG = Z") == ["d"]
    with pytest.raises(HttpError) as err:
        found("tag")
    assert err.value.status == 400


def test_follow_paths_split_on_commas_and_dots() -> None:
    assert follow.paths(_req(follow="disk_attachments.disk, nics,tags")) == [
        ["disk_attachments", "disk"],
        ["nics"],
        ["tags"],
    ]
    assert follow.paths(_req()) == [] and follow.paths(_req(follow="")) == []
    with pytest.raises(HttpError) as err:
        follow.paths(_req(follow="disk_attachments..disk"))
    assert err.value.status == 400


def test_the_app_counts_calls_by_template_and_adds_latency(tmp_path: Path) -> None:
    router = Router()
    router.add("GET", "/vms/{vm}", lambda req, vm: Response(body=vm.encode()))
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    auth = Auth(username="admin@internal", password="pw", admin_token="adm")
    calls = CallCounter()
    admin = Router()
    admin.add("GET", "/calls", lambda req: Response(body=b"{}"))
    app = App(
        router=router,
        admin_router=admin,
        auth=auth,
        faults=Faults(),
        ca_file=ca,
        calls=calls,
        latency_s=0.05,
    )
    bearer = {"authorization": f"Bearer {auth.new_token()}"}

    def get(path: str, headers: dict[str, str]) -> tuple[Response, float]:
        start = time.monotonic()
        resp = app.handle(Request(method="GET", path=path, query={}, headers=headers, body=b""))
        return resp, time.monotonic() - start

    for vm in ("a", "b"):
        resp, took = get(f"/ovirt-engine/api/vms/{vm}", bearer)
        assert resp.body == vm.encode() and took >= 0.05
    assert get("/ovirt-engine/api/nothing", bearer)[0].status == 404
    assert get("/ovirt-engine/api/vms/a", {})[0].status == 401  # refused, still a call
    assert get("/rhvfs-sim/calls", {"authorization": "Bearer adm"})[0].status == 200
    assert calls.snapshot() == {("GET", "/vms/{vm}"): 3, ("GET", NO_ROUTE): 1}
    assert calls.reset() == {("GET", "/vms/{vm}"): 3, ("GET", NO_ROUTE): 1}
    assert calls.snapshot() == {}
    with pytest.raises(ValueError):
        App(router=router, admin_router=admin, auth=auth, faults=Faults(), ca_file=ca, latency_s=-1)


@given(
    st.lists(st.text(alphabet="abcXYZ01", min_size=1, max_size=6), max_size=12), st.integers(1, 5)
)
def test_pages_partition_the_result(names: list[str], size: int) -> None:
    pages = []
    for page in range(1, len(names) + 2):
        pages += search(_req(search=f"page {page}", max=str(size)), names, {"name": lambda n: n})
    assert pages == names


def test_router_params_405_and_404() -> None:
    router = Router()
    router.add("GET", "/vms/{vm}/snapshots/{snap}", lambda req, vm, snap: (vm, snap))
    handler, params = router.resolve("GET", "/vms/a/snapshots/b")
    assert params == {"vm": "a", "snap": "b"}
    with pytest.raises(HttpError) as err:
        router.resolve("DELETE", "/vms/a/snapshots/b")
    assert err.value.status == 405
    with pytest.raises(HttpError) as err:
        router.resolve("GET", "/vms/a/nothing")
    assert err.value.status == 404


def test_router_include_binds_the_context_of_a_route_table() -> None:
    def get_nic(ctx: str, req: Request, vm: str, nic: str) -> Response:
        return Response(body=f"{ctx} {req.method} {vm} {nic}".encode())

    router = Router()
    router.include([Route("GET", "/vms/{vm}/nics/{nic}", get_nic)], "engine")
    handler, params = router.resolve("GET", "/vms/a/nics/b")
    req = Request(method="GET", path="/vms/a/nics/b", query={}, headers={}, body=b"")
    assert handler(req, **params).body == b"engine GET a b"


_ROUTE_MODULES = (
    api_admin,
    api_backups,
    api_disks,
    api_infra,
    api_snapshots,
    api_templates,
    api_transfers,
    api_vms,
)


@pytest.mark.parametrize("module", _ROUTE_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_route_tables_are_unique_and_handlers_take_their_path_params(
    module: pytypes.ModuleType,
) -> None:
    seen = set()
    for route in module.ROUTES:
        key = (route.method, route.path)
        assert key not in seen, key
        seen.add(key)
        sig = inspect.signature(route.handler)
        path_params = set(re.findall(r"\{(\w+)\}", route.path))
        params = [p for p in sig.parameters.values() if p.kind is not p.KEYWORD_ONLY]
        # handler(context, req, *path params in path order)
        in_order = sorted(path_params, key=lambda name: route.path.index("{" + name + "}"))
        assert [p.name for p in params[2:]] == in_order, route


def test_all_route_tables_together_resolve_each_path_once() -> None:
    api = [r for m in _ROUTE_MODULES if m is not api_admin for r in m.ROUTES]
    keys = [(r.method, r.path) for r in api]
    assert len(keys) == len(set(keys))
    router = Router()
    router.include(api, object())
    handler, params = router.resolve("POST", "/vms/v1/start")
    assert params == {"vm": "v1"}
    with pytest.raises(HttpError) as err:
        router.resolve("PATCH", "/vms/v1")
    assert err.value.status == 405


def test_faults_match_count_down_and_glob() -> None:
    faults = Faults()
    faults.add(
        EngineFault(
            method="POST", path_glob="/ovirt-engine/api/imagetransfers*", status=503, times=2
        )
    )
    assert faults.match("GET", "/ovirt-engine/api/imagetransfers") is None
    first = faults.match("POST", "/ovirt-engine/api/imagetransfers/t1/finalize")
    assert first is not None and first.status == 503
    assert faults.match("post", "/ovirt-engine/api/imagetransfers") is not None
    assert faults.match("POST", "/ovirt-engine/api/imagetransfers") is None
    faults.add(EngineFault(method="*", path_glob="*", status=0, delay_s=0.5, times=-1))
    for _ in range(3):
        forever = faults.match("GET", "/anything")
        assert forever is not None and forever.delay_s == 0.5
    faults.clear()
    assert faults.match("GET", "/anything") is None


@pytest.mark.allow_log("rhvfs.sim.tasks", "ERROR", match="background step")
def test_tasks_run_in_due_order_after_their_delay() -> None:
    tasks = Tasks(delay_s=0.05)
    tasks.start()
    done: list[tuple[str, float]] = []
    finished = threading.Event()
    start = time.monotonic()
    try:
        tasks.step(lambda: done.append(("late", time.monotonic() - start)), delay_s=0.2)
        tasks.step(lambda: done.append(("default", time.monotonic() - start)))
        tasks.step(lambda: 1 / 0, delay_s=0.0)  # a failing step is logged, not fatal
        tasks.step(finished.set, delay_s=0.3)
        assert finished.wait(5)
    finally:
        tasks.stop()
    assert [name for name, _ in done] == ["default", "late"]
    assert done[0][1] >= 0.05 and done[1][1] >= 0.2


def _small_state(path: Path) -> State:
    state = State(path)
    state.datacenters["dc"] = DataCenter(id="dc", name="Default")
    state.clusters["c"] = Cluster(id="c", name="Default", dc_id="dc")
    state.storage_domains["sd"] = StorageDomain(id="sd", name="mydata", dc_id="dc")
    state.disks["d1"] = Disk(
        id="d1",
        alias="mydisk",
        sd_id="sd",
        provisioned_size=1 << 30,
        backup="incremental",
        volumes=[
            Volume(id="i1", fmt="cow", snapshot_id="s1"),
            Volume(id="i2", fmt="cow", parent_id="i1", snapshot_id="act"),
        ],
    )
    state.vms["v1"] = Vm(
        id="v1",
        name="myvm",
        cluster_id="c",
        active_snapshot_id="act",
        attachments=[Attachment(disk_id="d1", interface="virtio", bootable=True)],
        nics=[Nic(id="n1", name="nic1", mac="56:6f:00:00:00:01")],
        snapshot_ids=["s1", "act"],
    )
    return state


def test_state_round_trips_through_json(tmp_path: Path) -> None:
    state = _small_state(tmp_path / "engine.json")
    state.add_event("hello", vm_id="v1")
    state.save()
    loaded = State.load(tmp_path / "engine.json")
    assert loaded.disks["d1"] == state.disks["d1"]
    assert loaded.vms["v1"] == state.vms["v1"]
    assert loaded.disks["d1"].active.id == "i2"
    assert loaded.disk_of_volume("i1") is loaded.disks["d1"]
    assert loaded.vm_of_disk("d1") is loaded.vms["v1"]
    assert [e.description for e in loaded.events] == ["hello"]


def test_ovf_round_trip_keeps_ids_disks_and_nics(tmp_path: Path) -> None:
    state = _small_state(tmp_path / "engine.json")
    engine = pytypes.SimpleNamespace(state=state)
    text = api_ovf.make_ovf(engine, state.vms["v1"])  # type: ignore[arg-type]
    assert "ovf:Envelope" in text
    ovf = api_ovf.parse_ovf(text)
    assert ovf.vm_id == "v1"
    assert ovf.name == "myvm"
    assert [(d.disk_id, d.image_id, d.interface, d.bootable, d.alias) for d in ovf.disks] == [
        ("d1", "i2", "virtio", True, "mydisk")
    ]
    assert [(n.name, n.mac) for n in ovf.nics] == [("nic1", "56:6f:00:00:00:01")]
    assert ovf.memory_bytes == 1 << 30
    with pytest.raises(ValueError):
        api_ovf.parse_ovf("<notovf/>")


def test_finished_transfers_and_backups_are_swept_after_the_engine_delays(tmp_path: Path) -> None:
    import datetime

    from rhvfs.sim import api_backups, api_transfers
    from rhvfs.sim.state import Backup, ImageTransfer

    state = State(tmp_path / "engine.json")
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for tid, phase in (
        ("ok", "finished_success"),
        ("bad", "finished_failure"),
        ("live", "transferring"),
    ):
        state.transfers[tid] = ImageTransfer(
            id=tid,
            disk_id="d",
            vol_id="v",
            direction="download",
            format="raw",
            host_id="h",
            phase=phase,
            finish_time=t0.isoformat() if phase.startswith("finished") else None,
        )
    state.backups["b"] = Backup(
        id="b", vm_id="v", disk_ids=[], phase="succeeded", modified_date=t0.isoformat()
    )
    engine = pytypes.SimpleNamespace(state=state, save=lambda: None)
    api_transfers.sweep(engine, now=t0 + datetime.timedelta(minutes=14))  # type: ignore[arg-type]
    assert set(state.transfers) == {"ok", "bad", "live"}
    api_transfers.sweep(engine, now=t0 + datetime.timedelta(minutes=15))  # type: ignore[arg-type]
    assert set(state.transfers) == {"bad", "live"}
    api_transfers.sweep(engine, now=t0 + datetime.timedelta(minutes=31))  # type: ignore[arg-type]
    assert set(state.transfers) == {"live"}
    api_backups.sweep(engine, now=t0 + datetime.timedelta(minutes=16))  # type: ignore[arg-type]
    assert state.backups == {}
