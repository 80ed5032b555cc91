"""rhvfs: an oVirt / RHV engine as a filesystem, for file-based backup and restore."""

__version__ = "0.1.0"

#: Every engine artifact rhvfs creates carries this marker in its description,
#: with the installation and mount that created it, so a later mount or
#: ``rhvfs gc`` of the same installation can find leftovers of a crashed
#: session and never touch anything it did not create.
ARTIFACT_MARKER = "rhvfs-session"
