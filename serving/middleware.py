"""Pure ASGI middleware (no per-request task): body limit, JSON-only POSTs, request metrics and ids."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from contextlib import nullcontext

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from churn_platform import logs, tracing
from serving.errors import CLIENT_CLOSED, BodyTooLarge, UnsupportedMediaType, logged_path, problem, problem_for
from serving.metrics import Metrics

JSON = "application/json"
#: What an X-Request-ID may be to be kept (a trace or correlation id); anything else is replaced.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_STORED_ID_CHARS = 40
access = logging.getLogger("churn.access")
log = logging.getLogger(__name__)


class _BodyOverLimit(Exception):
    """Raised into the app by ``BodyLimit`` when a streamed body passes the limit."""


class BodyLimit:
    """Refuse bodies over the limit with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_big(scope, receive, send)
        seen, exceeded = 0, False

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # stop the app: the part it has read may parse, and must not be acted on
                exceeded = True
                raise _BodyOverLimit
            return message

        async def guarded(message: Message) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, limited, guarded)
        except _BodyOverLimit:
            pass
        if exceeded:
            await self._too_big(scope, receive, send)

    async def _too_big(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem_for(BodyTooLarge(f"request body is larger than {self.max_bytes} bytes"))(scope, receive, send)


class JsonOnly:
    """Answer 415 to a POST whose body is not declared ``application/json``.

    A browser sends a cross-site POST with ``text/plain`` (a "simple" request) without a
    CORS preflight; were it scored, any web page a user visits could write rows into the
    inference log that monitoring reads. A charset parameter is fine; a POST without a body
    (``/admin/reload``) passes whatever it declares: ``curl -d ''`` declares a form, and
    without the admin key that was a 415, not the 401 that says what is missing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        # The first, as Starlette reads it (a dict keeps the last): a text/plain before an
        # application/json passed here and then went unparsed by FastAPI.
        declared = next((value for key, value in scope.get("headers") or [] if key == b"content-type"), None)
        if headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers:
            return await self.app(scope, receive, send)
        media_type = (declared or b"").split(b";", 1)[0].strip().lower().decode("latin-1")
        # Every Content-Encoding header, each maybe a list: "gzip" then "identity" is still gzip.
        # Transfer-Encoding's codings but chunked too: uvicorn passes a gzip one on still compressed.
        codings = b",".join(v for k, v in scope.get("headers") or []
                            if k in (b"content-encoding", b"transfer-encoding")).decode("latin-1")  # fmt: skip
        encoding = ", ".join(c for c in (c.strip().lower() for c in codings.split(","))
                             if c not in ("identity", "chunked", ""))  # fmt: skip
        if media_type == JSON and not encoding:
            return await self.app(scope, receive, send)
        if media_type == JSON:  # a gzip body would be read as JSON and called invalid
            error = UnsupportedMediaType(f"unsupported content encoding {encoding!r}: send the body uncompressed")
        else:
            shown = repr(media_type) if media_type else "none"
            error = UnsupportedMediaType(f"unsupported content type {shown}: send the body as {JSON}")
        await problem_for(error)(scope, receive, send)


class ServerErrors:
    """Answer an unexpected error with a JSON 500 inside CORS and ``RequestMetrics``: the 500
    carries the request id and the CORS headers (a page can read its status and quote the
    id; answered outside CORS, the browser saw a network error), and its log line the
    request's fields and trace id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except ClientDisconnect:
            raise  # no one to answer: RequestMetrics counts it as 499
        except Exception as exc:
            if started:
                raise  # the request's span records it on the way out
            tracing.record_exception(exc)
            log.exception("unexpected error on %s", logged_path(scope))
            await problem(500, "internal error; see the server log")(scope, receive, send)


class RequestMetrics:
    """Count requests and time them per route template; give each a request id (the caller's
    ``X-Request-ID`` when it is a sane token, else a new one), returned in the response and
    carried by every log line of the request; optionally, one access line per request."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, access_log: bool = False, paths: frozenset[str] = frozenset()
    ) -> None:
        self.app, self.metrics, self.access_log, self.paths = app, metrics, access_log, paths

    def _fixed_path(self, scope: Scope) -> str:
        """The request's path when it is one of the routes' ``paths`` (those without a
        parameter: ``/predict``), else ``unmatched``: a label per path sent would let any
        client grow the metrics."""
        return scope["path"] if scope["path"] in self.paths else "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        valid = bool(_REQUEST_ID.fullmatch(given))
        request_id = given if valid else uuid.uuid4().hex
        # The inference log's key must be unique (a caller may reuse its ids, so theirs gets a suffix)
        # and fit its column (64, with room for a rollout arm's "~shadow"): a long id is cut to 40.
        # 64 random bits: with 48, a client reusing one id a million times had a 0.2 % chance that
        # two requests shared a key, the second's rows skipped as "already stored".
        log_key = f"{request_id[:_STORED_ID_CHARS]}/{uuid.uuid4().hex[:16]}" if valid else request_id
        header = (b"x-request-id", request_id.encode("latin-1"))

        started_response = False

        async def record(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        traced = tracing.server_span(scope["method"], _headers(scope)) if tracing.enabled() else nullcontext()
        with logs.request_context(request_id=request_id, log_key=log_key) as context, traced as span:
            try:
                await self.app(scope, receive, record)
            except ClientDisconnect:
                # Gone before its body arrived: no one to answer, and no fault of ours (a 500
                # here fed the 5xx alert). 499 is nginx's "client closed request".
                status = CLIENT_CLOSED
                log.info("client closed the request on %s before its body arrived", logged_path(scope))
            except asyncio.CancelledError:
                # Cancelled unanswered (uvicorn at the end of its graceful shutdown): no 500 was
                # sent, so none is counted (they fed the 5xx alert) nor traced as an error.
                if not started_response:
                    status = CLIENT_CLOSED
                raise
            finally:
                # The route's template without converters: /predict/{customer_id}, not {customer_id:path}.
                # A request refused before routing (413, 415) counts under its route's path too.
                endpoint = getattr(scope.get("route"), "path_format", None) or self._fixed_path(scope)
                elapsed = time.perf_counter() - started
                self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
                self.metrics.latency.labels(endpoint).observe(elapsed)
                if span is not None:
                    span.update_name(f"{scope['method']} {endpoint}")
                    span.set_attributes({
                        "http.request.method": scope["method"], "http.route": endpoint,
                        "http.response.status_code": status, "churn.request_id": request_id,
                        "churn.log_key": log_key,  # the inference log's request_id for these rows
                    })  # fmt: skip
                    # Also a 503 of our own (no model served), as OTel's HTTP conventions say; not
                    # /ready's 503, which answers a probe as asked (each one an error trace buried the real ones).
                    if status >= 500 and not (endpoint == "/ready" and status == 503):
                        tracing.failed(span)
                if self.access_log:
                    context.update(route=endpoint, status=status, duration_ms=round(elapsed * 1000, 3))
                    access.info("%s %s %s", scope["method"], logged_path(scope), status)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
