"""OpenTelemetry traces of the API and its model loads: off unless the standard variables say
where to send them (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``;
``OTEL_SERVICE_NAME`` names the service, default ``churn-api``), then exported over OTLP/HTTP
to a collector, Jaeger or Tempo.

Off, nothing is created per request (the middleware does not open a span). The provider is
this module's own, not the process-wide one, so MLflow's tracing and ours never share it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

NAME = "churn_platform"
_provider: TracerProvider | None = None


def configured() -> bool:
    """Whether the environment asks for traces, and does not turn them off as the standard
    variables do (``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none``)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def check() -> None:
    """``SettingsError`` when traces are asked for in a way this API cannot send: over gRPC (set
    with a port 4317 endpoint), every batch went to a gRPC-only port and was lost, with only the
    exporter's warnings to say so; or name a propagator that is not installed."""
    from churn_platform.errors import SettingsError

    if (missing := _missing_propagator()) is not None:
        raise SettingsError(f"OTEL_PROPAGATORS={os.environ['OTEL_PROPAGATORS']}: no propagator {missing!r} is "
                            f"installed (installed: {', '.join(sorted(_propagators()))}); tracecontext,baggage "
                            "is the default, none turns propagation off")  # fmt: skip
    name = next((n for n in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
                 if os.environ.get(n)), None)  # fmt: skip
    protocol = os.environ.get(name, "").strip() if name else ""
    if configured() and name and not protocol.startswith("http/"):  # http/json: sent as protobuf, same port
        raise SettingsError(f"{name}={protocol}: this API sends traces over OTLP/HTTP only; set "
                            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf and point OTEL_EXPORTER_OTLP_ENDPOINT "
                            "(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) at the collector's HTTP port (4318)")


def _propagators() -> set[str]:
    from importlib.metadata import entry_points

    return {point.name for point in entry_points(group="opentelemetry_propagator")}


def _missing_propagator() -> str | None:
    """The first name in ``OTEL_PROPAGATORS`` with no installed propagator, as OpenTelemetry reads
    the list (up to a ``none``). FastAPI imports ``opentelemetry.propagate``, which raises on it:
    with ``b3`` or ``xray`` set cluster-wide, the API died loading, traces on or off."""
    given = os.environ.get("OTEL_PROPAGATORS", "")
    if not given:
        return None
    installed = _propagators()  # the entry points scanned once, not once per name
    for name in (part.strip() for part in given.split(",")):
        if name.lower() == "none":
            return None
        if name not in installed:  # "" too: OpenTelemetry refuses an empty entry ("tracecontext,")
            return name
    return None


def setup(service: str = "churn-api", exporter: SpanExporter | None = None) -> bool:
    """Start tracing when configured (or into ``exporter``, for tests); True when on."""
    global _provider
    if exporter is None and not configured():
        return False
    if exporter is None:
        check()
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if _provider is not None:
        _provider.shutdown()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service)}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads the OTEL_* variables
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider = provider
    return True


def shutdown() -> None:
    """Flush and stop (the API's shutdown; tests)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def enabled() -> bool:
    return _provider is not None


def span(name: str, attributes: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """A span around a block when tracing is on; nothing at all when it is off."""
    if _provider is None:
        return nullcontext()
    return _provider.get_tracer(NAME).start_as_current_span(name, attributes=attributes, **kwargs)


@contextmanager
def server_span(method: str, headers: Mapping[str, str]) -> Iterator[Any]:
    """The request's span, continuing the caller's trace (W3C ``traceparent``)."""
    assert _provider is not None
    from opentelemetry.propagate import extract

    with _provider.get_tracer(NAME).start_as_current_span(
        method, context=extract(headers), kind=trace.SpanKind.SERVER
    ) as current:
        yield current


def failed(span: Any) -> None:
    """Mark a request's span failed (a 5xx answered by our own handlers, so no exception left
    the span to mark it): a trace search for errors finds it."""
    span.set_status(trace.Status(trace.StatusCode.ERROR))


def record_exception(exc: BaseException) -> None:
    """Record ``exc`` on the current span (the request's); nothing when tracing is off."""
    trace.get_current_span().record_exception(exc)


def trace_id() -> str | None:
    """The current trace's id (32 hex), for log lines; None outside a span, and for a trace
    not sampled (it is never exported: a log line's link to it would lead nowhere)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid and context.trace_flags.sampled else None
