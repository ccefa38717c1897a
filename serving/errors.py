"""Errors of the HTTP layer, each carrying its status, and the one table that maps them.

Like MLServer's ``rest/errors.py``: routes and the predictor raise domain errors; the
handlers below are the only place that turns an exception into a response, and every
error body has the same shape (``Problem``): ``message`` in words, ``detail`` with more.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from churn_platform.schema import ID_CONTROL_PROBLEM

log = logging.getLogger(__name__)

#: The most problems one 422 lists; its message counts them all.
MAX_ERRORS_LISTED = 100

#: The status recorded for a request whose client left before its body arrived (nginx's 499).
CLIENT_CLOSED = 499


class ServingError(Exception):
    """An error a client caused or must wait out; ``status_code`` is its HTTP status."""

    status_code = 500
    #: Headers the status calls for (a 401's challenge, a passing 503's Retry-After).
    headers: dict[str, str] = {}

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message, self.detail = message, detail


class NoModelServed(ServingError):
    status_code = 503
    headers = {"Retry-After": "5"}  # the replica retries its load by itself


class BodyTooLarge(ServingError):
    status_code = 413


class BatchTooLarge(ServingError):
    status_code = 413


class NotExplainable(ServingError):
    """``explain=true`` for a version that serves without explanations (``/model`` says why)."""

    status_code = 409


class UnknownCustomer(ServingError):
    """``GET /predict/{customer_id}`` for an id the online store does not hold."""

    status_code = 404


class BadOutcomes(ServingError):
    status_code = 422


class StoreUnavailable(ServingError):
    """The database behind the inference log and outcomes cannot be reached: try again later."""

    status_code = 503
    headers = {"Retry-After": "5"}


class ShuttingDown(ServingError):
    """The process stopped before the answer was ready: another replica (or this one restarted) answers."""

    status_code = 503
    headers = {"Retry-After": "5"}


class UnsupportedMediaType(ServingError):
    status_code = 415


class MissingApiKey(ServingError):
    status_code = 401
    headers = {"WWW-Authenticate": 'Bearer realm="churn-api"'}  # RFC 9110: a 401 names how to authenticate


class AdminDisabled(ServingError):
    status_code = 403


class CrossSiteRequest(ServingError):
    """A request a browser made for a page of another site, which the route does not answer."""

    status_code = 403


class WrongApiKey(ServingError):
    status_code = 403


def logged_path(scope: Any) -> str:
    """The request's path for a log line, as sent (still percent-encoded): decoded, a %0A in it
    wrote a forged line of its own in the text format."""
    return scope.get("raw_path", b"").decode("latin-1") or quote(scope["path"])


def problem(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"message": message, "detail": message if detail is None else detail}
    )


def problem_for(error: ServingError) -> JSONResponse:
    """The response for a domain error (also used by the middleware, outside the handlers' reach)."""
    response = problem(error.status_code, error.message, error.detail)
    response.headers.update(error.headers)
    return response


class CountedValidationError(RequestValidationError):
    """A 422 that lists some of its problems and counts them all."""

    def __init__(self, errors: Sequence[Any], total: int, note: str = "") -> None:
        super().__init__(errors)
        self.total, self.note = total, note


def validation_message(errors: list[dict[str, Any]], total: int | None = None) -> str:
    """The first few validation errors as one line: ``customers.0.tenure: Input should be ...``."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg')}")
    total = len(errors) if total is None else total
    more = f" (and {total - 5} more)" if total > 5 else ""
    return "; ".join(parts) + more


def invalid_json(cause: ValueError | RecursionError) -> RequestValidationError:
    """The 422 for a body Python's JSON parser refused, for routes that read their own body."""
    if isinstance(cause, json.JSONDecodeError):  # as FastAPI words it: _named says where
        return RequestValidationError([{"type": "json_invalid", "loc": ("body", cause.pos), "msg": "JSON decode error",
                                        "input": {}, "ctx": {"error": cause.msg}}])  # fmt: skip
    if isinstance(cause, UnicodeDecodeError):
        why = f"not {cause.encoding.upper().replace('_', '-')} ({cause.reason} at byte {cause.start})"
    elif isinstance(cause, RecursionError):
        why = "nested too deeply"
    else:  # e.g. an integer of more digits than Python converts
        why = str(cause).split(";")[0]
    return RequestValidationError([{"loc": ["body"], "msg": f"Invalid JSON: {why}", "type": "json_invalid"}])


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    return problem_for(exc)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    every = exc.errors()
    errors = [_named(e) for e in every[:MAX_ERRORS_LISTED]]
    note = f" ({exc.note})" if getattr(exc, "note", "") else ""
    return problem(422, validation_message(errors, getattr(exc, "total", len(every))) + note, errors)


def _named(error: dict[str, Any]) -> dict[str, Any]:
    """An error as the client sees it; FastAPI's JSON decode error puts a character offset
    where a field goes and keeps the problem in ``ctx``: say it as /predict's parser does."""
    if error.get("type") == "json_invalid" and "error" in (error.get("ctx") or {}):
        at = error["loc"][-1] if len(error.get("loc", ())) > 1 else None
        where = f" at character {at}" if isinstance(at, int) else ""
        return {"loc": ["body"], "msg": f"Invalid JSON: {error['ctx']['error']}{where}", "type": "json_invalid"}
    return {k: v for k, v in error.items() if k in ("loc", "msg", "type")}


#: ``GET /predict/{customer_id}``'s path with an id holding a newline.
_ID_WITH_NEWLINE = re.compile(r"/predict/[^\n]*\n")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # FastAPI's own: 404, 405
    cause = exc.__cause__
    if isinstance(cause, ClientDisconnect):  # FastAPI's 400 for a body that never came: not the client's error
        log.info("client closed the request on %s before its body arrived", logged_path(request.scope))
        return problem(CLIENT_CLOSED, "client closed the request before its body arrived")
    if isinstance(cause, ValueError | RecursionError):  # FastAPI's "error parsing the body": a 400 naming nothing
        return await _invalid_request(request, invalid_json(cause))
    if exc.status_code == 404 and request.method in ("GET", "HEAD") and _ID_WITH_NEWLINE.match(request.scope["path"]):
        # Starlette's `:path` (`.*`) stops at a newline, so no route matched: the id's own 422,
        # as for any other control character, not a bare "Not Found". (The scope's path:
        # request.url drops a newline, as urlsplit does.)
        return await _invalid_request(request, RequestValidationError([
            {"type": "control_character", "loc": ("path", "customer_id"), "msg": ID_CONTROL_PROBLEM}]))  # fmt: skip
    response = problem(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})  # a 405's Allow: the methods the path takes
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", logged_path(request.scope))
    return problem(500, "internal error; see the server log")


Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]

#: Every exception a request can end in, and how it is answered.
EXCEPTION_HANDLERS: dict[type[Exception], Handler] = {
    ServingError: _serving_error,
    RequestValidationError: _invalid_request,
    HTTPException: _http_error,
    Exception: _unexpected,
}
