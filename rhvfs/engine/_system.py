"""Engine-wide calls: the product version (the API root) and external events (the audit log).

``product_version`` reads ``product_info.version.full_version`` of
``GET /ovirt-engine/api``. ``add_event`` posts one external event
(``POST /ovirt-engine/api/events``): the engine requires ``origin`` (anything
but ``oVirt``), ``custom_id`` (unique per origin), ``severity`` and
``description``; only the id of a ``vm`` link is used. It is sent once, never
retried: the caller decides what a lost event means (rhvfs: a warning).

Must not: decide when events are posted (``rhvfs.sessions.core._events`` does).
"""

from __future__ import annotations

import ovirtsdk4.types as sdk

from rhvfs.engine._core import EngineCore

SEVERITIES = frozenset({"normal", "warning", "error", "alert"})


class SystemMixin(EngineCore):
    async def product_version(self) -> str | None:
        """The engine's version (``4.5.5-1.el8``), or None when it does not say."""
        api = await self.call(lambda c: c.system_service().get(), "get api")
        info = api.product_info
        version = info.version if info is not None else None
        if version is None:
            return None
        if version.full_version:
            return str(version.full_version)
        parts = (version.major, version.minor, version.build, version.revision)
        return ".".join(str(p) for p in parts if p is not None) or None

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
