"""rhvfs.engine — the only package that imports ovirtsdk4 (see CONTRACT.md).

Public surface: ``open_engine``, ``Engine`` and the value types of
``rhvfs.engine.types``. Its retry and poll policies are ``rhvfs.retry.RetryPolicy``.
"""

from rhvfs.engine._engine import Engine, open_engine
from rhvfs.engine.types import (
    Backup,
    Checkpoint,
    Cluster,
    DataCenter,
    Disk,
    DiskAttachment,
    EngineProduct,
    Host,
    ImageTransfer,
    Nic,
    Snapshot,
    StorageDomain,
    Tag,
    Template,
    Vm,
    VnicProfile,
)

__all__ = [
    "Backup",
    "Checkpoint",
    "Cluster",
    "DataCenter",
    "Disk",
    "EngineProduct",
    "DiskAttachment",
    "Engine",
    "Host",
    "ImageTransfer",
    "Nic",
    "Snapshot",
    "StorageDomain",
    "Tag",
    "Template",
    "Vm",
    "VnicProfile",
    "open_engine",
]
