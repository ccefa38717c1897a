"""Dependencies of the routes, read from ``request.app.state`` (set once by ``create_app``).

All are ``async def``, though none awaits: FastAPI runs a plain ``def`` dependency in its
threadpool, and two thread hops per prediction cost more than the prediction itself.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from churn_platform.loading import LoadedModel
from churn_platform.settings import Settings
from serving.errors import AdminDisabled, MissingApiKey, NoModelServed, WrongApiKey
from serving.features import FeatureSource
from serving.holder import ModelHolder
from serving.metrics import Metrics
from serving.predictor import Predictor
from serving.schemas import Problem


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _predictor(request: Request) -> Predictor:
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:  # the lifespan has not run (yet): nothing can be served
        raise NoModelServed("the service is starting")
    return predictor


async def _served(predictor: Annotated[Predictor, Depends(_predictor)]) -> LoadedModel:
    """The model that will answer, taken once per request (so a reload cannot split a request);
    resolved before the body is read, so a service without a model answers 503 at once."""
    return predictor.model


async def _holder(request: Request) -> ModelHolder:
    return request.app.state.holder


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def _features(request: Request) -> FeatureSource:
    features = getattr(request.app.state, "features", None)
    if features is None:
        raise NoModelServed("the service is starting")
    return features


SettingsDep = Annotated[Settings, Depends(_settings)]
PredictorDep = Annotated[Predictor, Depends(_predictor)]
ServedModel = Annotated[LoadedModel, Depends(_served)]
HolderDep = Annotated[ModelHolder, Depends(_holder)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
FeaturesDep = Annotated[FeatureSource, Depends(_features)]


# Security schemes, not plain headers: the OpenAPI document says how to authenticate, and
# the docs page gets its Authorize button. Neither refuses on its own (auto_error=False):
# require_admin decides, with our error bodies.
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="The admin key, CHURN_ADMIN_API_KEY.")
_BEARER = HTTPBearer(auto_error=False, description="The admin key as a bearer token.")


#: Authorization schemes a client may send the key under by mistake (IANA's registry, and
#: the non-standard `Token` and `ApiKey`).
_OTHER_SCHEMES = frozenset({"basic", "digest", "negotiate", "ntlm", "token", "apikey", "hoba", "mutual", "vapid",
                            "scram-sha-1", "scram-sha-256", "dpop", "gnap", "privatetoken", "concealed"})


async def require_admin(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Security(_API_KEY)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """The admin key, from ``X-API-Key`` or ``Authorization: Bearer``, compared in constant time."""
    expected = settings.admin_api_key.get_secret_value() if settings.admin_api_key else ""
    if not expected:
        raise AdminDisabled("admin endpoints are disabled: set CHURN_ADMIN_API_KEY")
    given = x_api_key or (bearer.credentials if bearer else None)
    if not given and authorization and authorization.strip():
        # `curl -u` sends Basic: a key was sent, under a scheme this API does not read. Only a
        # scheme HTTP defines is named: a bare key, even one with spaces, is never echoed.
        scheme = authorization.strip().partition(" ")[0]
        holds = f"{scheme!r} credentials" if scheme.lower() in _OTHER_SCHEMES else "no 'Bearer' token"
        raise MissingApiKey(f"the Authorization header holds {holds}: send the admin key as "
                            "`Authorization: Bearer KEY` or in the X-API-Key header")  # fmt: skip
    if not given:
        raise MissingApiKey("missing API key: send it in the X-API-Key header")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise WrongApiKey("wrong API key")


AdminKey = Depends(require_admin)


def _query_names(route: APIRoute) -> set[str]:
    """The query parameters a route and its dependencies declare (walked only for a request
    that sends some: a few objects)."""
    names, pending = set(), [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(p.alias for p in dependant.query_params)
        pending.extend(dependant.dependencies)
    return names


async def _known_query(request: Request) -> None:
    """A misspelt query parameter (``?explian=true``, ``?stict=false``) was ignored: a 200
    without what was asked for. Refused by name, as an unknown body field is."""
    route = request.scope.get("route")
    # A route hidden from the schema stands in for others (GET /predict/single: 405, whatever the query).
    if not request.query_params or not isinstance(route, APIRoute) or not route.include_in_schema:
        return
    known = _query_names(route)
    if unknown := [k for k in request.query_params if k not in known]:
        raise RequestValidationError([
            {"type": "extra_forbidden", "loc": ("query", name), "input": request.query_params[name],
             "msg": f"Unknown query parameter; this route takes {', '.join(sorted(known)) or 'none'}"}
            for name in dict.fromkeys(unknown)
        ])  # fmt: skip
    # `?explain=true&explain=false` was answered by the last: no explanation, without a word.
    given = {name: request.query_params.getlist(name) for name in dict.fromkeys(request.query_params)}
    if repeated := {name: values for name, values in given.items() if len(values) > 1}:
        raise RequestValidationError([
            {"type": "value_error", "loc": ("query", name), "input": values,
             "msg": f"given {len(values)} times; give it once"}
            for name, values in repeated.items()
        ])  # fmt: skip


KnownQuery = Depends(_known_query)
#: What every admin route may answer besides its own responses.
ADMIN_RESPONSES: dict[int | str, dict] = {
    401: {"model": Problem, "description": "No admin key sent"},
    403: {"model": Problem, "description": "Wrong admin key, or admin endpoints disabled (no CHURN_ADMIN_API_KEY)"},
}
