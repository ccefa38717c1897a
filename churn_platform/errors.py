"""Errors users are meant to read, each with the CLI exit code it maps to.

Exit codes are the same for every command: 0 done, 1 refused by a gate,
2 bad usage / bad input / not found, 3 registry or storage unreachable.
"""

from __future__ import annotations


class ChurnPlatformError(Exception):
    """Base class: a message for a person, no traceback needed."""

    exit_code = 2


class DataError(ChurnPlatformError):
    """Input data cannot be read or does not match the customer schema."""


class DataSourceError(DataError):
    """The file, object or bucket does not exist or cannot be read."""


class DataValidationError(DataError):
    """The data was read but breaks the schema; the message names columns and rows."""


class NotFoundError(ChurnPlatformError):
    """A registered model, version or alias does not exist."""


class GateRefused(ChurnPlatformError):
    """A promotion gate refused the change (nothing was changed)."""

    exit_code = 1


class RegistryUnreachable(ChurnPlatformError):
    """The MLflow tracking server / registry (or its artifact store) cannot be reached."""

    exit_code = 3


class StorageUnreachable(ChurnPlatformError):
    """The S3-compatible object store cannot be reached."""

    exit_code = 3
