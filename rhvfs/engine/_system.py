"""Engine-wide calls: the product version (the API root) and external events (the audit log).

``product_info`` reads ``product_info`` (name, ``version.full_version``) of
``GET /ovirt-engine/api``. ``add_event`` posts one external event
(``POST /ovirt-engine/api/events``): the engine requires ``origin`` (anything
but ``oVirt``), ``custom_id`` (unique per origin), ``severity`` and
``description``; only the id of a ``vm`` link is used. It is sent once, never
retried: the caller decides what a lost event means (rhvfs: a warning).

Must not: decide when events are posted (``rhvfs.sessions.core._events`` does).
"""

from __future__ import annotations

import ovirtsdk4.types as sdk

from rhvfs.engine import types as t
from rhvfs.engine._core import EngineCore

SEVERITIES = frozenset({"normal", "warning", "error", "alert"})


class SystemMixin(EngineCore):
    async def product_info(self) -> t.EngineProduct:
        """The engine's product name and version (``4.5.5-1.el8``); None where it is silent."""
        api = await self.call(lambda c: c.system_service().get(), "get api")
        info = api.product_info
        version = info.version if info is not None else None
        text = None
        if version is not None:
            parts = (version.major, version.minor, version.build, version.revision)
            text = version.full_version or ".".join(str(p) for p in parts if p is not None)
        return t.EngineProduct(name=info.name if info is not None else None, version=text or None)

    async def add_event(
        self,
        *,
        description: str,
        severity: str,
        custom_id: int,
        origin: str = "rhvfs",
        vm_id: str | None = None,
    ) -> None:
        """Post one external event to the engine's audit log (one request, no retry)."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity {severity!r} is not one of {sorted(SEVERITIES)}")
        event = sdk.Event(
            description=description,
            severity=sdk.LogSeverity(severity),
            origin=origin,
            custom_id=custom_id,
            vm=sdk.Vm(id=vm_id) if vm_id else None,
        )
        await self.call_once(lambda c: c.system_service().events_service().add(event), "add event")
