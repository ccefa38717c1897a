"""Log lines a person reads (text) or a collector parses (JSON lines), with each request's
context: ``request_id``, ``model_version``, ``arm``, ``route``, ``status``, ``duration_ms``, ...

The serving middleware opens a context per request (``request_context``); code that learns
something about the request (the predictor: version and arm) adds to it with ``bind``; every
line logged while the request runs carries it. ``CHURN_LOG_FORMAT=json`` (the image's
default) writes one JSON object per line: time, level, logger, message and those fields.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from churn_platform import tracing

LogFormat = Literal["text", "json"]
#: The request's fields, one mutable dict per request (threads the request runs in share it).
_context: ContextVar[dict[str, Any] | None] = ContextVar("churn_log_context", default=None)
#: ``log_key``: the request's id in the inference log (the caller's, made unique: callers reuse
#: theirs). ``challenger_version``: a canary's, beside Production's ``model_version`` (each field
#: keeps one type: a collector maps a field by its first value and drops lines that differ).
FIELDS = ("request_id", "log_key", "model_version", "challenger_version", "arm", "route", "status", "duration_ms",
          "trace_id")  # fmt: skip
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NOISY = ("botocore", "urllib3", "alembic", "httpx", "huey", "sqlalchemy.engine")
#: Loggers ``import mlflow`` gives a text handler of its own (and ``propagate=False``).
_MLFLOW_OWNED = ("mlflow", "sqlalchemy.engine", "alembic", "huey")


@contextmanager
def request_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """A request's log context for as long as it runs; the dict may be added to."""
    context = dict(fields)
    token = _context.set(context)
    try:
        yield context
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the current request's context (nothing outside a request)."""
    context = _context.get()
    if context is not None:
        context.update(fields)


def current(name: str) -> Any:
    context = _context.get()
    return None if context is None else context.get(name)


class WithContext(logging.Filter):
    """Puts the request's fields (and, when tracing, the trace id) on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        if context:
            for name, value in context.items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        if tracing.enabled() and not hasattr(record, "trace_id"):
            record.trace_id = tracing.trace_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the request's fields when there are any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} [request {request_id}]" if request_id else text


def configure(level: int = logging.INFO, log_format: LogFormat = "text") -> None:
    """Send every logger's lines to stderr in ``log_format`` (replacing what this set before).

    Like ``logging.basicConfig``, it leaves alone a process whose logging something else set
    up (a host application, a test runner's capture)."""
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "churn_platform", False)]
    if len(ours) != len(root.handlers):
        return
    for handler in ours:
        root.removeHandler(handler)
    if log_format == "json":  # one JSON object per line, MLflow's lines too, whenever mlflow is imported
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
        for name in _MLFLOW_OWNED:
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = [], True
    handler = logging.StreamHandler(sys.stderr)
    handler.churn_platform = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if log_format == "json" else _TextFormatter(TEXT_FORMAT))
    handler.addFilter(WithContext())
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # a library's warning is a line in the format, not raw text among JSON lines
