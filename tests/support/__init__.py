"""Helpers shared by every test tier, imported as ``tests.support.<module>``.

- ``fake_engine``: the one in-memory fake engine (inventory, snapshots,
  backups and checkpoints, transfers, restores) and ``inventory_engine()``;
- ``fake_dataplane``: imageio clients, block reader and upload target over it;
- ``fake_backups``: the backup sets the VFS tests browse;
- ``backup_sets``: full sets and chains made in memory, for restores;
- ``configs``: configurations for fakes;
- ``restore_rig``, ``incremental_rig``, ``fs_ops``: managers over the fakes,
  driven the way the VFS and copy tools drive them;
- ``sim``: starting ``rhvfs sim serve``, its config, SDK look-ups;
- ``mounts``, ``fake_mount``: real FUSE mounts (fakes, or the simulator);
- ``data``: deterministic bytes, sha256 of bytes, files and images;
- ``waiting``: waiting for a condition with a deadline;
- ``logcheck``: failing tests that log unexpected warnings.

Must not: hold tests (nothing here is collected).
"""
