"""What ``pip install rhvfs`` pulls: the mount's needs only; the simulator's are the ``sim`` extra.

- The ``sim`` extra of pyproject.toml is exactly the distributions of
  ``rhvfs.sim.SIM_ONLY_MODULES`` (what ``rhvfs sim`` checks before it runs), and
  none of them is a dependency of the package.
- Every third-party import of the mount side (rhvfs minus rhvfs/sim, read with
  ``ast``: module-level and function-level imports) comes from a dependency;
  every one of the simulator from a dependency or the ``sim`` extra.
- Importing every module of the mount side, and ``rhvfs --version``, work in a
  process where the simulator-only modules can't be imported.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from rhvfs.sim import SIM_ONLY_MODULES

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rhvfs"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def dist_name(requirement: str) -> str:
    """The normalized distribution name of a requirement string (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def dists_of(module: str) -> set[str]:
    """The installed distributions that provide top-level module ``module``."""
    found = importlib.metadata.packages_distributions().get(module, [])
    assert found, f"{module} is imported but not installed here: is it in pyproject.toml?"
    return {dist_name(d) for d in found}


RUNTIME = {dist_name(r) for r in PROJECT["dependencies"]}
SIM_EXTRA = {dist_name(r) for r in PROJECT["optional-dependencies"]["sim"]}


def modules(*, sim: bool) -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if (path.relative_to(PACKAGE).parts[0] == "sim") == sim:
            yield path


def third_party_imports(paths: Iterator[Path]) -> dict[str, list[str]]:
    """Top-level third-party module -> where it is imported (``file:line``)."""
    found: dict[str, list[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("rhvfs", "__future__"):
                    continue
                found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_sim_extra_is_what_rhvfs_sim_checks_and_no_dependency() -> None:
    assert SIM_EXTRA == {d for m in SIM_ONLY_MODULES for d in dists_of(m)}
    assert SIM_EXTRA == {"ovirt-imageio", "cryptography"}
    assert RUNTIME & SIM_EXTRA == set()


def test_the_mount_side_imports_only_runtime_dependencies() -> None:
    found = third_party_imports(modules(sim=False))
    assert {"pyfuse3", "trio", "httpx", "ovirtsdk4"} <= set(found)  # the scan sees them
    outside = {module: where for module, where in found.items() if not dists_of(module) <= RUNTIME}
    assert outside == {}, "imported by the mount side but not a dependency"
    assert not set(found) & set(SIM_ONLY_MODULES)


def test_the_simulator_imports_only_dependencies_and_its_extra() -> None:
    found = third_party_imports(modules(sim=True))
    assert set(SIM_ONLY_MODULES) - {"ovirt_imageio"} <= set(found)  # the daemon is a program
    outside = {
        module: where
        for module, where in found.items()
        if not dists_of(module) <= RUNTIME | SIM_EXTRA
    }
    assert outside == {}


IMPORT_ALL_BUT_SIM = """
import importlib, pkgutil, sys
import rhvfs
from rhvfs.sim import SIM_ONLY_MODULES  # the package itself imports nothing of them
for name in SIM_ONLY_MODULES:
    sys.modules[name] = None  # `import name` now fails as if it were not installed
names = sorted(
    m.name for m in pkgutil.walk_packages(rhvfs.__path__, "rhvfs.")
    if m.name != "rhvfs.sim" and not m.name.startswith("rhvfs.sim.")
)
for name in names:
    importlib.import_module(name)
from rhvfs.cli import main
assert main(["--version"]) == 0
print(len(names))
"""


def test_the_mount_side_imports_without_the_simulators_modules() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL_BUT_SIM], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    version, count = result.stdout.splitlines()
    assert version.startswith("rhvfs ")
    assert int(count) == len(
        [
            p
            for p in modules(sim=False)
            if p.name != "__init__.py" or p.parent != PACKAGE  # rhvfs itself is not walked
        ]
    )
