"""``OwnerDataSource``: one fetch of an owner's data, one OVF fallback rule, cached names."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from rhvfs.backupset import missing_ovf
from rhvfs.errors import EngineError, EngineUnavailable, NotFound
from rhvfs.sessions.core._model import Owner
from rhvfs.sessions.core._owner_data import NAMES_TTL_S, OwnerDataSource, image_disks
from tests.support.fake_engine import FakeEngine


class Engine(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.ovf_error: EngineError | None = None
        self.cluster_lists = 0

    async def vm_ovf(self, vm_id: str) -> str:
        if self.ovf_error is not None:
            raise self.ovf_error
        return await super().vm_ovf(vm_id)

    async def list_clusters(self) -> list:  # type: ignore[type-arg]
        self.cluster_lists += 1
        return await super().list_clusters()


async def test_vm_and_template_data(autojump_clock: trio.testing.MockClock) -> None:
    eng = Engine()
    vm = eng.add_vm("v1", disks=[("a", 65536), ("b", 65536)])
    tpl = eng.add_template("t1")
    source = OwnerDataSource(eng)
    data = await source.fetch(Owner("vm", vm.id, vm.name))
    assert data.kind == "vm" and data.entity == vm and data.ovf_available
    assert data.ovf == (await eng.vm_ovf(vm.id)).encode()
    assert [d.alias for d in image_disks(data)] == ["a", "b"]
    assert data.cluster_names and data.storage_domain_names
    tdata = await source(Owner("template", tpl.id, tpl.name), tpl)
    assert tdata.kind == "template" and tdata.entity == tpl
    assert [d.alias for d in image_disks(tdata)] == ["tdisk"]


@pytest.mark.allow_log("rhvfs.sessions.core._owner_data", "WARNING", match="no OVF")
async def test_no_ovf_gives_the_placeholder_but_gone_and_transient_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    eng = Engine()
    vm = eng.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    source = OwnerDataSource(eng)
    eng.ovf_error = EngineError("no configuration", code=400)
    data = await source.fetch(owner)
    assert data.ovf == missing_ovf("vm", "v1") and not data.ovf_available
    for error in (NotFound(vm.id), EngineUnavailable("503")):
        eng.ovf_error = error
        with pytest.raises(type(error)):
            await source.fetch(owner)


async def test_names_are_cached_for_a_while(autojump_clock: trio.testing.MockClock) -> None:
    eng = Engine()
    vm = eng.add_vm("v1")
    owner = Owner("vm", vm.id, vm.name)
    source = OwnerDataSource(eng)
    await source.fetch(owner)
    await source.fetch(owner)
    assert eng.cluster_lists == 1
    await trio.sleep(NAMES_TTL_S + 1)
    await source.fetch(owner)
    assert eng.cluster_lists == 2
