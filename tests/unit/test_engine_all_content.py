"""What the SDK 4.6.3 services send when rhvfs.engine asks for all content.

``TemplateService.get`` and ``SnapshotService.get`` have no ``all_content``
parameter and swallow it in ``**kwargs``; ``all_content()`` must reach the wire
on every service the engine client reads the OVF through.
"""

from __future__ import annotations

from typing import Any

import pytest
from ovirtsdk4 import services

from rhvfs.engine._inventory import all_content


def _sent(service_cls: type, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> tuple[Any, Any]:
    captured: list[tuple[Any, Any]] = []

    def fake_internal_get(self: Any, headers: Any, query: Any, wait: Any) -> None:
        captured.append((headers, query))

    monkeypatch.setattr(services.Service, "_internal_get", fake_internal_get)
    service_cls(None, "x").get(**kwargs)
    assert len(captured) == 1
    return captured[0]


@pytest.mark.parametrize(
    "service_cls", [services.VmService, services.TemplateService, services.SnapshotService]
)
def test_all_content_reaches_the_request(
    service_cls: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers, query = _sent(service_cls, monkeypatch, **all_content())
    assert headers == {"All-Content": "true"}
    assert query["all_content"] == "true"


@pytest.mark.parametrize("service_cls", [services.TemplateService, services.SnapshotService])
def test_the_sdk_drops_the_all_content_keyword(
    service_cls: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why ``all_content()`` exists: on these services ``all_content=True`` sends nothing."""
    headers, query = _sent(service_cls, monkeypatch, all_content=True)
    assert not headers and "all_content" not in (query or {})


def test_each_call_gets_fresh_dicts() -> None:
    """The SDK adds its own query parameters to the dict it is given; calls must not share one."""
    first, second = all_content(), all_content()
    first["query"]["follow"] = "disks"
    assert second["query"] == {"all_content": "true"}
