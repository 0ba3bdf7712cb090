"""Errors raised by the ecrec-stream library. Everything subclasses :class:`EcrecError`."""


class EcrecError(Exception):
    """Base class of every error ecrec-stream raises on purpose."""


class ConfigError(EcrecError):
    """A setting is missing, malformed or inconsistent."""


class ModelLoadError(EcrecError):
    """An encoder model could not be loaded (offline, missing path, bad files)."""


class IndexError_(EcrecError):
    """The item index was asked for something it cannot do (bad shape, unknown backend)."""


class SnapshotError(EcrecError):
    """A snapshot directory is missing, incomplete or inconsistent."""
