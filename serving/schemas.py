"""Request and response bodies, generated from the customer schema (one source of truth).

Two validators are generated from the schema: pydantic's models are the contract (the
OpenAPI document, every 422's wording), and msgspec structs decode well-formed bodies
about six times faster. ``customers_from_json`` tries msgspec first and lets pydantic
decide anything msgspec refuses; msgspec's constraints are never looser than
pydantic's (tests/unit/test_schemas.py holds them to that with generated bodies).
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol

import msgspec
from fastapi import Request
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from churn_platform.contract import (
    EXPLANATION,
    FEATURES_AS_OF,
    MODEL_NAME,
    MODEL_VERSION,
    PROBABILITY,
    RISK,
    RISK_BANDS,
    WILL_CHURN,
)
from churn_platform.data import generate, to_records
from churn_platform.schema import (
    FEATURE_NAMES,
    FEATURES,
    ID_COLUMN,
    ID_CONTROL_CHARACTERS,
    ID_CONTROL_PROBLEM,
    ID_MAX_LENGTH,
    LABEL_COLUMN,
    Feature,
)
from churn_platform.scorer import by_key
from serving.errors import MAX_ERRORS_LISTED, CountedValidationError

_CONTROL = re.compile(f"[{ID_CONTROL_CHARACTERS}]")


def _no_control_characters(value: str) -> str:
    if _CONTROL.search(value):
        raise PydanticCustomError("control_character", ID_CONTROL_PROBLEM)
    return value


_NOT_UTF8 = "is not UTF-8 text (a lone surrogate escape, \\ud800 to \\udfff)"


def _utf8(value: Any) -> Any:
    try:
        if isinstance(value, str):
            value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("not_utf8", _NOT_UTF8) from None
    return value


#: Every id a route takes passes this, after its length limits: the log and the feature store
#: cannot hold a NUL, and a tab or newline in an id is a bug upstream, so the caller hears at once.
NO_CONTROL_CHARACTERS = AfterValidator(_no_control_characters)
#: Text from a body FastAPI parses (its JSON reader lets ``"\\ud800"`` through, and pydantic keeps it
#: in a plain ``str``; a constrained one, such as an id, refuses it): no database driver encodes a
#: lone surrogate, so without this it fails at the insert, or when the answer echoes it.
UTF8 = AfterValidator(_utf8)
#: What the OpenAPI document says about an id.
ID_DESCRIPTION = (f"1 to {ID_MAX_LENGTH} characters, none of them a control character (U+0000 to U+001F, "
                  "U+007F to U+009F) or a line or paragraph separator (U+2028, U+2029).")
#: Every id a route takes: the limits ``ID_DESCRIPTION`` states.
Id = Annotated[str, Field(min_length=1, max_length=ID_MAX_LENGTH), NO_CONTROL_CHARACTERS]

# A number in a string, as JSON writes one: pydantic's lax float would also take "5_000",
# " 5" and true (as 1.0), none of which the contract names or msgspec takes.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _number(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, str) and not _PLAIN_NUMBER.fullmatch(value)):
        raise PydanticCustomError("float_type", "Input should be a number, or a number in a string such as \"70.5\"")
    return value


def _an_integer(value: Any) -> Any:
    """Pydantic's ``Literal[0, 1]`` takes true as 1 and 1.0 as 1; msgspec and the contract do not."""
    if isinstance(value, bool):
        raise PydanticCustomError("literal_error", "Input should be 0 or 1, not true or false")
    if isinstance(value, float):
        raise PydanticCustomError("literal_error", "Input should be 0 or 1, an integer (not {value})", {"value": value})
    return value


#: A float field takes numbers, and numbers in strings; not booleans, and not Python's literals.
PLAIN_NUMBER = BeforeValidator(_number)


def _field(feature: Feature) -> tuple[Any, Any]:
    if feature.allowed is not None:
        allowed = Literal[feature.allowed]  # type: ignore[valid-type]
        if any(isinstance(v, int) for v in feature.allowed):
            allowed = Annotated[allowed, BeforeValidator(_an_integer)]
        return allowed, Field(description=feature.description)
    kind = int if feature.kind == "integer" else float
    return Annotated[kind, PLAIN_NUMBER] if kind is float else kind, Field(
        description=feature.description,
        ge=feature.minimum,
        le=feature.maximum,
        allow_inf_nan=False,
        strict=kind is int,
    )


def _example() -> dict[str, Any]:
    return to_records(generate(1, seed=7).drop(columns=[LABEL_COLUMN]))[0]


EXAMPLE_CUSTOMER = _example()

Customer = create_model(
    "Customer",
    __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_CUSTOMER]}),
    **{ID_COLUMN: (Id | None,
                   Field(None, description=f"Your id, echoed back. {ID_DESCRIPTION}"))},
    **{f.name: _field(f) for f in FEATURES},
)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"customers": [EXAMPLE_CUSTOMER]}]})

    customers: list[Customer] = Field(min_length=1, description="1 to CHURN_MAX_BATCH_SIZE customers.")  # type: ignore[valid-type]


class Contribution(BaseModel):
    feature: Literal[FEATURE_NAMES] = Field(description="A feature of the customer schema.")  # type: ignore[valid-type]
    value: str | int | float = Field(description="The customer's value of that feature, as sent.")
    contribution: float = Field(description="Log-odds of churn this value adds to (or, negative, takes from) the base.")


class Explanation(BaseModel):
    """``base + sum of every feature's contribution = logit(churn_probability)``; the
    ``top_k`` largest contributions by absolute size are listed, largest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "base": -1.52,
                    "contributions": [
                        {"feature": "contract", "value": "Month-to-month", "contribution": 0.81},
                        {"feature": "tenure", "value": 2, "contribution": 0.74},
                        {"feature": "internet_service", "value": "Fiber optic", "contribution": 0.52},
                    ],
                }
            ]
        }
    )

    base: float = Field(
        description="Log-odds the explanation starts from: the model's output for an average training "
        "customer (logistic), or its expected output over the training data (gradient boosting)."
    )
    contributions: list[Contribution] = Field(description="The top_k largest contributions, largest first.")


Prediction = create_model(
    "Prediction",
    **{
        ID_COLUMN: (str | None, None),
        PROBABILITY: (float, Field(ge=0, le=1)),
        WILL_CHURN: (bool, ...),
        RISK: (Literal[RISK_BANDS], ...),  # type: ignore[valid-type]
        MODEL_VERSION: (int, ...),
        EXPLANATION: (Explanation | None, Field(None, description="Only with explain=true.")),
        FEATURES_AS_OF: (str | None, Field(None, description="By id only: when the customer's snapshot in the "
                                           "online store was taken (UTC); CHURN_FEATURES_MAX_AGE_DAYS refuses older.")),
    },
)

BatchResponse = create_model(
    "BatchResponse",
    predictions=(list[Prediction], ...),  # type: ignore[valid-type]
    **{MODEL_VERSION: (int, ...), MODEL_NAME: (str, ...)},
)


def _stripped(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


#: An id to look up: stripped as the feature store strips the ids it ingests (a CRM's padded
#: " 7590-VHVEG" was never found), then held to the limits (last: it runs first).
CustomerId = Annotated[Id, Field(description=ID_DESCRIPTION), BeforeValidator(_stripped)]


class ByIdRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"customer_ids": ["7590-VHVEG"]}]})

    customer_ids: list[CustomerId] = Field(min_length=1, description="1 to CHURN_MAX_BATCH_SIZE customer ids.")


class UnknownId(BaseModel):
    customer_id: str
    message: str


ByIdResponse = create_model(
    "ByIdResponse",
    predictions=(list[Prediction], Field(description="The known customers', in request order.")),  # type: ignore[valid-type]
    errors=(list[UnknownId], Field(description="The ids the online store does not hold, holds without a value "
                                   "of a feature or with one the schema refuses, or holds a snapshot older than "
                                   "CHURN_FEATURES_MAX_AGE_DAYS.")),
    **{MODEL_VERSION: (int, ...), MODEL_NAME: (str, ...)},
)


class Problem(BaseModel):
    """Every error body: what went wrong, in words, and where."""

    detail: str | list[dict[str, Any]]
    message: str


def _fast_field(feature: Feature) -> tuple[str, Any]:
    if feature.allowed is not None:
        return feature.name, Literal[feature.allowed]  # type: ignore[valid-type]
    kind = int if feature.kind == "integer" else float  # msgspec refuses NaN, Infinity and 1e999 itself
    if feature.minimum is None and feature.maximum is None:
        return feature.name, kind
    return feature.name, Annotated[kind, msgspec.Meta(ge=feature.minimum, le=feature.maximum)]


class Record(Protocol):
    """A validated customer as the prediction routes pass it on: a dict, or a decoded struct
    that reads like one."""

    def __getitem__(self, name: str, /) -> Any: ...

    def get(self, name: str, default: Any = None, /) -> Any: ...


def _read_like_a_dict(names: frozenset[str]) -> dict[str, Any]:
    """``record[name]`` and ``record.get(name)`` for a decoded customer, so code that reads
    customers needs no dict per customer (the scorer reads the attributes directly)."""

    def __getitem__(self: Any, name: str) -> Any:
        if name not in names:
            raise KeyError(name)
        return getattr(self, name)

    def get(self: Any, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in names else default

    def __contains__(self: Any, name: object) -> bool:
        return name in names

    # No iteration: dict(c), list(c) or {**c} would otherwise try c[0], c[1]... and fail obscurely;
    # msgspec.to_builtins(c) gives the dict.
    return {"__getitem__": __getitem__, "get": get, "__contains__": __contains__, "__iter__": None}


def _fast_decoders(id_pattern: str | None) -> dict[type[BaseModel], msgspec.json.Decoder]:
    """msgspec decoders for ``Customer`` and ``BatchRequest`` bodies, ids held to ``id_pattern``."""
    fields = [
        *(_fast_field(f) for f in FEATURES),
        (ID_COLUMN, Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH, pattern=id_pattern)] | None,
         None),
    ]
    customer = msgspec.defstruct(
        "FastCustomer",
        fields,
        namespace=_read_like_a_dict(frozenset(name for name, *_ in fields)),
        forbid_unknown_fields=True,
        gc=False,  # strings and numbers only: no cycles, so the collector need not track 1000 per batch
    )
    batch = msgspec.defstruct(
        "FastBatch",
        [("customers", Annotated[list[customer], msgspec.Meta(min_length=1)])],  # type: ignore[valid-type]
        forbid_unknown_fields=True,
    )
    return {Customer: msgspec.json.Decoder(customer), BatchRequest: msgspec.json.Decoder(batch)}


# JSON holds a C0 control character in a string only as an escape (a raw one is malformed),
# and the others ids refuse raw by their UTF-8 lead bytes (DEL 7F, C1 C2 80..9F, U+2028/9
# E2 80 A8/9), so a body with none of these bytes needs no check of its ids: the pattern
# (Python's ``re``, once per id) costs ~0.3 ms per 1000 ids, the four one-byte searches ~20 us
# per 500 KB (a two-byte search, b"\xe2\x80", took 450 us). ``\Z``, not ``$``, which also
# matches before a final newline.
_FAST_DECODERS = _fast_decoders(None)
_ESCAPED_DECODERS = _fast_decoders(rf"\A[^{ID_CONTROL_CHARACTERS}]*\Z")
_MAYBE_CONTROL = (b"\\", b"\x7f", b"\xc2", b"\xe2")


#: One stored customer's features, held to the schema's rules as a request's are.
_STORED_CUSTOMER = msgspec.defstruct("StoredCustomer", [_fast_field(f) for f in FEATURES], gc=False)


def schema_problem(features: Mapping[str, Any]) -> str | None:
    """What the schema refuses in a customer's stored features (a value an earlier release
    took: a category since dropped), as msgspec says it; None when /predict would take them.
    About 1 us a customer."""
    try:
        msgspec.convert(features, _STORED_CUSTOMER)
    except msgspec.ValidationError as exc:
        return str(exc)
    return None


_ID = operator.attrgetter(ID_COLUMN)
_DICT_ID = operator.methodcaller("get", ID_COLUMN)


def customer_ids(customers: Sequence[Record]) -> list[str | None]:
    """Each customer's id, None for one sent without: a loop in C whether the customers are
    decoded structs or mappings, told apart as the scorer does (a Python ``get`` per customer
    would cost more than scoring)."""
    return list(map(_DICT_ID if by_key(customers) else _ID, customers))


class TooManyCustomers(ValueError):
    """A batch over the limit, counted before it is validated."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


class UnknownFields(ValueError):
    """More unknown fields than a 422 lists: said without validating the rest of the body."""

    def __init__(self, errors: list[dict[str, Any]], total: int) -> None:
        super().__init__(total)
        self.errors, self.total = errors, total

    def as_422(self) -> CountedValidationError:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in self.errors]
        return CountedValidationError(errors, self.total, "unknown fields only: the others were not checked")


_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_CUSTOMER_FIELDS = frozenset(Customer.model_fields)
_LIST = msgspec.json.Decoder(list[msgspec.Raw])


async def parsed(request: Request) -> Any:
    """The body FastAPI parsed and will validate (``request.json()``, cached), for counting
    its items and unknown fields before pydantic checks each one (a million ids: seconds of
    the event loop); None when it is empty, not JSON or nested past the parser (FastAPI says
    so). Not msgspec: it refused a UTF-8 BOM or a UTF-16 body, which then went uncounted."""
    try:
        return await request.json()
    except (ValueError, RecursionError):
        return None


def listed_in(body: Any, field: str) -> int:
    """How many items a parsed body's top-level list ``field`` holds (0 if it is not that shape)."""
    items = body.get(field) if isinstance(body, dict) else None
    return len(items) if isinstance(items, list) else 0


def _top_and_customers(body: bytes, model: type[BaseModel]) -> tuple[Any, list[Any]] | None:
    """The body's top object and its customers (msgspec ``Raw`` items, or parsed ones), or
    None when it is no JSON object (pydantic names the problem)."""
    try:
        top = _OBJECT.decode(body)
        return top, _LIST.decode(top["customers"]) if model is BatchRequest and "customers" in top else []
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):  # msgspec skips deep nesting by recursion
        pass
    # NaN and Infinity, which msgspec refuses and pydantic reads: uncounted, a 90 KB body of
    # 30,000 ``{}`` and one NaN had pydantic validate every item (seconds of the event loop,
    # half a gigabyte for a list of errors), and a NaN let any batch past the limit.
    try:
        top = json.loads(body)
    except (ValueError, RecursionError):
        return None
    customers = top.get("customers") if isinstance(top, dict) and model is BatchRequest else []
    return top, customers if isinstance(customers, list) else []


def _refuse_costly(body: bytes, model: type[BaseModel], max_customers: int | None) -> None:
    """Refuse, before pydantic reads it, a body whose validation would cost more than any
    request: pydantic checks every customer before the batch limit, and names every unknown
    field (250,000 in a 4 MB body: seconds of the event loop and a 22 MB answer). Bodies
    that are not the expected shape are left to pydantic, which names the problem."""
    if (shape := _top_and_customers(body, model)) is None:
        return
    top, customers = shape
    if max_customers is not None and len(customers) > max_customers:
        raise TooManyCustomers(len(customers))
    objects = [((), top, frozenset({"customers"}) if model is BatchRequest else _CUSTOMER_FIELDS)]
    for i, raw in enumerate(customers):
        try:
            objects.append((("customers", i), _OBJECT.decode(raw) if isinstance(raw, msgspec.Raw) else raw,
                            _CUSTOMER_FIELDS))  # fmt: skip
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
            continue
    refuse_unknown(objects)


def refuse_unknown(objects: Iterable[tuple[tuple[str | int, ...], Any, frozenset[str]]]) -> None:
    """``UnknownFields`` when the objects (where, the object, its known fields) hold more
    unknown fields than a 422 lists: pydantic would name each one, its errors built in full
    on the event loop (350,000 in a 4 MB body: ten seconds). Non-objects are pydantic's to name."""
    listed: list[dict[str, Any]] = []
    total = 0
    for where, fields, known in objects:
        if not isinstance(fields, Mapping):
            continue
        unknown = [key for key in fields if key not in known]
        total += len(unknown)
        listed += [{"type": "extra_forbidden", "loc": (*where, key), "msg": "Extra inputs are not permitted"}
                   for key in unknown[: MAX_ERRORS_LISTED - len(listed)]]  # fmt: skip
    if total > MAX_ERRORS_LISTED:
        raise UnknownFields(listed, total)


def customers_from_json(body: bytes, model: type[BaseModel], max_customers: int | None = None) -> list[Record]:
    """The customers in a request body (``Customer`` or ``BatchRequest``), validated: msgspec
    structs that read like dicts (``c["tenure"]``, ``c.get("customer_id")``), or dicts.

    Structs, because turning 1000 of them into dicts took a sixth of a batch request's CPU;
    the scorer, the inference log and the explanations read either. Raises pydantic's
    ``ValidationError`` naming every problem; ``TooManyCustomers`` past ``max_customers`` and
    ``UnknownFields`` past ``MAX_ERRORS_LISTED`` of them, before that. A body only pydantic's
    lax mode accepts (a number sent as a string, say) is accepted, through pydantic, and
    comes back as dicts.
    """
    decoders = _ESCAPED_DECODERS if any(b in body for b in _MAYBE_CONTROL) else _FAST_DECODERS
    try:
        decoded = decoders[model].decode(body)
    # msgspec reads bad UTF-8 in a string as UnicodeDecodeError, and skips an unknown field's
    # value by recursion (RecursionError past ~1000 levels); pydantic names either problem.
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        _refuse_costly(body, model, max_customers)
        parsed = model.model_validate_json(body)
        customers = parsed.customers if isinstance(parsed, BatchRequest) else [parsed]
        return [dict(c.__dict__) for c in customers]
    return decoded.customers if model is BatchRequest else [decoded]


#: At most this many outcomes per request (a CRM sends them in pages).
MAX_OUTCOMES = 10_000


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: Annotated[str | None, UTF8] = None
    churned: Annotated[bool | int | str | None, UTF8] = Field(None, description="Yes/No, 1/0 or true/false.")
    observed_at: Annotated[str | None, UTF8] = Field(
        None, description="ISO-8601; a time without a zone is UTC; default now."
    )


class OutcomesRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"outcomes": [
            {"customer_id": "7590-VHVEG", "churned": "Yes", "observed_at": "2026-11-01T00:00:00Z"}]}]},
    )  # fmt: skip

    outcomes: list[Outcome] = Field(min_length=1, description=f"1 to {MAX_OUTCOMES:,} outcomes.")
