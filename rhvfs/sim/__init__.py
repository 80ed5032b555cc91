"""The engine simulator (``rhvfs sim``); see CONTRACT.md and the module docstrings.

Its data plane (the ovirt-imageio daemon) and its CA (``cryptography``) are
needed by nothing else in rhvfs, so they are the ``sim`` extra of the package
(``pip install 'rhvfs[sim]'``), not dependencies of the mount.
``missing_requirements`` names those not installed; ``rhvfs sim`` checks it
first. This module imports nothing else of the simulator.
"""

from __future__ import annotations

import importlib

#: Import names of what only the simulator needs: the ``sim`` extra of pyproject.toml.
SIM_ONLY_MODULES = ("cryptography", "ovirt_imageio")
INSTALL_HINT = "pip install 'rhvfs[sim]'"


def missing_requirements() -> list[str]:
    """Those of ``SIM_ONLY_MODULES`` that cannot be imported."""
    missing = []
    for name in SIM_ONLY_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing
