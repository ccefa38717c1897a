"""Errors users are meant to read, each with the CLI exit code it maps to (``ExitCode``)."""

from __future__ import annotations

from typing import Any

from churn_platform.contract import ExitCode


class ChurnPlatformError(Exception):
    """Base class: a message for a person, no traceback needed."""

    exit_code: ExitCode = ExitCode.USAGE
    #: How the CLI introduces the message; an answer that is no failure (a retrain not needed) has none.
    prefix: str = "error: "
    #: More for ``--json`` beside ``error`` and ``exit_code`` (a declined retrain's decision).
    details: dict[str, Any] | None = None


class DataError(ChurnPlatformError):
    """Input data cannot be read or does not match the customer schema."""


class DataSourceError(DataError):
    """The file, object or bucket does not exist or cannot be read."""


class SourceChanging(DataSourceError):
    """A file written again while it was read: a retry reads it whole (exit 3, as an outage)."""

    exit_code = ExitCode.UNREACHABLE


class DataValidationError(DataError):
    """The data was read but breaks the schema; the message names columns and rows."""


class SettingsError(ChurnPlatformError):
    """An environment variable has a value the platform cannot use; the message names it."""


class NotFoundError(ChurnPlatformError):
    """A registered model, version, alias, artifact or data window does not exist."""


class RegistryNotFound(NotFoundError):
    """The registry's own database does not exist (a typo in the URI): no model is missing from it."""


class GateRefused(ChurnPlatformError):
    """A promotion gate refused the change (nothing was changed)."""

    exit_code = ExitCode.REFUSED


class RegistryUnreachable(ChurnPlatformError):
    """The MLflow tracking server / registry (or its artifact store) cannot be reached."""

    exit_code = ExitCode.UNREACHABLE


class RegistryRefused(RegistryUnreachable):
    """The registry answered and refused this user (no credentials, or no permission): no
    retry mends it, so exit 2, not 3 (a Job's podFailurePolicy ends it at once). A subclass
    so that the API, which keeps serving while it cannot read the registry, does so here too."""

    exit_code = ExitCode.USAGE


class SparkUnreachable(ChurnPlatformError):
    """The Spark master did not answer (exit 3, as any service a job needs)."""

    exit_code = ExitCode.UNREACHABLE


class StorageUnreachable(ChurnPlatformError):
    """The S3-compatible object store or a database cannot be reached."""

    exit_code = ExitCode.UNREACHABLE


class StorageRefused(StorageUnreachable):
    """A database that refused this user (a missing grant): an operator's to mend, so exit 2
    for a job; a subclass so that the API still answers 503, and a sender keeps its data."""

    exit_code = ExitCode.USAGE
