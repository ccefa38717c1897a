"""Errors of the HTTP layer, each carrying its status, and the one table that maps them.

Like MLServer's ``rest/errors.py``: routes and the predictor raise domain errors; the
handlers below are the only place that turns an exception into a response, and every
error body has the same shape (``Problem``): ``message`` in words, ``detail`` with more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)


class ServingError(Exception):
    """An error a client caused or must wait out; ``status_code`` is its HTTP status."""

    status_code = 500

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message, self.detail = message, detail


class NoModelServed(ServingError):
    status_code = 503


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


class UnsupportedMediaType(ServingError):
    status_code = 415


class MissingApiKey(ServingError):
    status_code = 401


class AdminDisabled(ServingError):
    status_code = 403


class WrongApiKey(ServingError):
    status_code = 403


def problem(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"message": message, "detail": message if detail is None else detail}
    )


def problem_for(error: ServingError) -> JSONResponse:
    """The response for a domain error (also used by the middleware, outside the handlers' reach)."""
    return problem(error.status_code, error.message, error.detail)


def validation_message(errors: list[dict[str, Any]]) -> str:
    """The first few validation errors as one line: ``customers.0.tenure: Input should be ...``."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    return problem_for(exc)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    return problem(422, validation_message(errors), errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # FastAPI's own: 404, 405
    if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's "error parsing the body": a 400 naming nothing
        cause = exc.__cause__
        errors = [{"loc": ["body"], "msg": f"Invalid JSON: not UTF-8 ({cause.reason} at byte {cause.start})",
                   "type": "json_invalid"}]  # fmt: skip
        return problem(422, validation_message(errors), errors)
    response = problem(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})  # a 405's Allow: the methods the path takes
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path)
    return problem(500, "internal error; see the server log")


Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]

#: Every exception a request can end in, and how it is answered.
EXCEPTION_HANDLERS: dict[type[Exception], Handler] = {
    ServingError: _serving_error,
    RequestValidationError: _invalid_request,
    HTTPException: _http_error,
    Exception: _unexpected,
}
