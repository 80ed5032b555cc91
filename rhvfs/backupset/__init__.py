"""The one definition of a backup set: file names, manifest, OVF helpers, qcow2 deltas, chains.

Pure: no engine, imageio or filesystem I/O beyond parsing bytes a caller hands
in (a delta file is read through the caller's path). Everything that writes or
reads a set -- the backup sessions that serve it and the restore sessions that
parse it -- uses this package, so the format is written down once.
"""
