"""Engine fault injection: 5xx answers or delays on calls matching `METHOD path-glob`.

Owns the list of active engine faults and their remaining counts. The HTTP
layer asks `match()` before dispatching each request. Data-plane faults
(dropped imageio connections, paused transfers, expired tickets) are applied
directly by the admin endpoint (`api_admin`), not stored here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EngineFault:
    """`method` "*" or a verb; `path_glob` matched against the request path
    (e.g. `/ovirt-engine/api/imagetransfers/*`); `status` 0 means only delay;
    `times` < 0 means forever."""

    method: str
    path_glob: str
    status: int = 500
    delay_s: float = 0.0
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        method_ok = self.method == "*" or self.method.upper() == method.upper()
        return method_ok and fnmatch.fnmatchcase(path, self.path_glob)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[EngineFault] = []

    def add(self, fault: EngineFault) -> None:
        with self._lock:
            self._faults.append(fault)
        log.info("engine fault added: %s", fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dataclasses.asdict(f) for f in self._faults]

    def match(self, method: str, path: str) -> EngineFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.times > 0:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    log.info("injecting fault on %s %s: %s", method, path, fault)
                    return fault
        return None
