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
    ``sim_factory(*, sample=True, delay_s=0.0, state_dir=None, serve_args=()) -> SimProcess``
    starts an isolated simulator (for destructive tests); ``state_dir`` reuses
    a directory (restart tests); ``serve_args`` are more ``rhvfs sim serve``
    options (e.g. ``("--token-ttl", "3")``). Every simulator it started is stopped at the
    end of the test, with the same leftover-process check; ``SimProcess.stop()``
    stops one earlier.

``log_check`` (autouse) and ``expect_log``
    Every test fails when it logs a record at WARNING or above (in this
    process) that it did not declare: ``@pytest.mark.allow_log(logger,
    level="WARNING", match=None)`` on the test, or ``expect_log(logger,
    level="WARNING", match=None)`` while it runs (``tests.support.logcheck``).
    Records of the setup and the test body fail the test; those of the
    fixtures' teardown make a teardown error.

``root_logging``
    Gives back the root logger's handlers and level and ``sys.excepthook``
    after a test that called ``rhvfs.commands.common.setup_logging``.

Hypothesis runs derandomized (the same examples on every run: CI is
deterministic) and without an example database (nothing written next to the
tests); ``HYPOTHESIS_PROFILE=explore`` draws new examples instead.

``scratch_sweep`` (autouse, per test and per module)
    A full run writes tens of GB of images, tar files and simulator storage
    under pytest's base temp. What a passed test (or a module without failures)
    created there is removed at its end, so the run's peak stays a few GB; what
    failed keeps its files for a look. The session ``sim`` is never swept, nor a
    directory that still has a mount in it.

The simulator helpers live in ``tests.support.sim``; fakes and other shared
helpers in ``tests.support``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.logcheck import LogCheck
from tests.support.sim import SimProcess, start_sim

LOG_CHECK = pytest.StashKey[LogCheck]()
FAILED = pytest.StashKey[bool]()
# Scratch directories that outlive a module (the session simulator's).
_KEEP: set[Path] = set()
_FAILED_MODULES: set[Path] = set()

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_log(logger, level='WARNING', *, match=None): the test may log records of "
        "logger (and its children) up to level whose message matches the regex match",
    )


@pytest.fixture(autouse=True)
def log_check(request: pytest.FixtureRequest) -> Iterator[LogCheck]:
    check = LogCheck()
    for mark in request.node.iter_markers("allow_log"):
        check.allow(*mark.args, **mark.kwargs)
    request.node.stash[LOG_CHECK] = check
    root = logging.getLogger()
    root.addHandler(check)
    try:
        yield check
    finally:
        root.removeHandler(check)
    check.check("teardown")


@pytest.fixture
def expect_log(log_check: LogCheck) -> Callable[..., None]:
    """``expect_log(logger, level="WARNING", *, match=None)``: allow such records from now on."""
    return log_check.allow


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    result = yield  # a test that already failed keeps its own failure
    check = item.stash.get(LOG_CHECK, None)
    if check is not None:
        check.check("setup and call")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[FAILED] = True
        _FAILED_MODULES.add(item.path)
    return report


def _sweep(base: Path, before: set[Path]) -> None:
    """Remove what appeared under ``base`` since ``before``, but kept or mounted paths."""
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1].replace("\\040", " ") for line in f]
    for path in set(base.iterdir()) - before - _KEEP:
        prefix = f"{path}/"
        if any(m == str(path) or m.startswith(prefix) for m in mounts):
            continue
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def scratch_sweep_module(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.path not in _FAILED_MODULES:
        _sweep(base, before)


@pytest.fixture(autouse=True)
def scratch_sweep(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if not request.node.stash.get(FAILED, False):
        _sweep(base, before)


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    state_dir = tmp_path_factory.mktemp("sim")
    _KEEP.add(state_dir)
    s = start_sim(state_dir, sample=True, delay_s=0.0)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sim_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SimProcess]]:
    started: list[SimProcess] = []

    def factory(
        *,
        sample: bool = True,
        delay_s: float = 0.0,
        state_dir: Path | None = None,
        serve_args: Sequence[str] = (),
    ) -> SimProcess:
        s = start_sim(
            state_dir or tmp_path_factory.mktemp("simf"),
            sample=sample,
            delay_s=delay_s,
            serve_args=serve_args,
        )
        started.append(s)
        return s

    try:
        yield factory
    finally:
        for s in started:
            s.stop()


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Give back the root logger and excepthook that ``setup_logging`` replaces."""
    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    chatty = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "pyfuse3")}
    try:
        yield
    finally:
        for name, lv in chatty.items():
            logging.getLogger(name).setLevel(lv)
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.excepthook = hook
