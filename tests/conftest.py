"""Shared fixtures for every test tier. Other modules depend on these names: keep them stable.

``sim`` (session scope)
    A ``rhvfs sim serve --sample --port 0 --delay 0`` subprocess on a temporary
    state dir, shared by the whole session. It yields a ``SimProcess`` with:
    ``state_dir`` (Path), ``conf_file`` (Path of ``ovirt-img.conf``),
    ``section`` (``"sim"``), ``engine_url`` (``https://localhost:PORT``),
    ``api_url`` (``engine_url + "/ovirt-engine/api"``), ``cafile`` (str),
    ``username``, ``password``, ``admin`` (a ``rhvfs.sim.client.SimAdmin``:
    guest writes, volume sha256, faults) and ``sdk_connection(**kwargs)``
    returning a fresh ``ovirtsdk4.Connection`` (close it). At the end it stops
    the simulator and asserts that no qemu-nbd or ovirt-imageio process it
    started is left. Tests that change shared state (snapshots, uploads, guest
    writes, faults) must undo it or work on their own disks/VMs.

``sim_factory`` (function scope)
    ``sim_factory(*, sample=True, delay_s=0.0, state_dir=None) -> SimProcess``
    starts an isolated simulator (for destructive tests); ``state_dir`` reuses
    a directory (restart tests). Every simulator it started is stopped at the
    end of the test, with the same leftover-process check; ``SimProcess.stop()``
    stops one earlier.

The simulator helpers live in ``tests.support.sim``; fakes and other shared
helpers in ``tests.support``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.sim import SimProcess, start_sim


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    s = start_sim(tmp_path_factory.mktemp("sim"), sample=True, delay_s=0.0)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sim_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SimProcess]]:
    started: list[SimProcess] = []

    def factory(
        *, sample: bool = True, delay_s: float = 0.0, state_dir: Path | None = None
    ) -> SimProcess:
        s = start_sim(state_dir or tmp_path_factory.mktemp("simf"), sample=sample, delay_s=delay_s)
        started.append(s)
        return s

    try:
        yield factory
    finally:
        for s in started:
            s.stop()
