"""Configurations for tests against fakes (no engine is contacted).

Must not: read configuration files (component tests use the simulator's).
"""

from __future__ import annotations

from typing import Any

from rhvfs.config import Config
from tests.support.data import MiB


def make_config(**overrides: Any) -> Config:
    """The settings the backup session tests assume, with ``overrides``."""
    values: dict[str, Any] = dict(
        engine_url="https://engine.example:8443",
        username="admin@internal",
        password="secret",
        system_tries=3,
        system_interval=0.5,
        system_timeout=30.0,
        grace_period=10.0,
        inactivity_timeout=60,
        prefetch_memory=64 * MiB,
        prefetch_streams=4,
    )
    values.update(overrides)
    return Config(**values)


def restore_config(**restore_defaults: str) -> Config:
    """A configuration for fake engines, with ``restore_defaults``."""
    return Config(
        engine_url="http://fake.invalid",
        username="u",
        password="p",
        restore_defaults=restore_defaults,
    )
