"""The fast request decoder (msgspec) and the contract (pydantic) agree on every body.

For any body, ``customers_from_json`` must accept exactly what the pydantic models accept
and return exactly their values (same types, same float bits); otherwise the fast path
could let in a customer the API's documented schema refuses, or score a different number.
"""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from churn_platform.contract import MODEL_TYPES
from churn_platform.data import generate, to_records
from churn_platform.schema import FEATURES, ID_COLUMN
from serving.schemas import BatchRequest, Customer, customer_ids, customers_from_json

VALID = to_records(generate(50, seed=11).drop(columns=["churn"]))
NAMES = [f.name for f in FEATURES] + [ID_COLUMN]
CATEGORIES = sorted({str(v) for f in FEATURES if f.allowed for v in f.allowed})

odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, 1.7976931348623157e308, -0.0, 0.0, 5e-324, 1.0, 0.5]),
    st.sampled_from(CATEGORIES + ["", "yes", "70.5", " 5", "1e3", "NaN", "inf", "0", "1", "a\x00b", "7590\n", "\x1f",
                     "a\x7fb", "\x85", "a\u2028", "¢"]),
    st.text(max_size=140),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)


@st.composite
def customers(draw: st.DrawFn) -> dict:
    customer = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "set", "delete", "extra"]))
        name = draw(st.sampled_from(NAMES))
        if action == "set":
            customer[name] = draw(odd_values)
        elif action == "delete":
            customer.pop(name, None)
        else:
            customer[draw(st.text(min_size=1, max_size=8))] = draw(odd_values)
    return customer


@st.composite
def bodies(draw: st.DrawFn) -> tuple[type, bytes]:
    ascii_only = draw(st.booleans())  # else raw UTF-8: DEL, C1 and U+2028 need no escape in JSON
    if draw(st.booleans()):
        return Customer, json.dumps(draw(customers()), ensure_ascii=ascii_only).encode()
    body: dict = {"customers": draw(st.lists(customers(), min_size=0, max_size=3))}
    if draw(st.integers(0, 9)) == 0:
        body["extra"] = 1
    return BatchRequest, json.dumps(body, ensure_ascii=ascii_only).encode()  # NaN, Infinity: JSON5-style tokens


def typed(records: list) -> list[list[tuple[str, str]]]:
    """Values with their types and exact float bits (repr), so 70 != 70.0 (structs as their fields)."""
    return [sorted((k, repr(v)) for k, v in msgspec.to_builtins(r).items()) for r in records]


def pydantic_records(model: type, body: bytes) -> list[dict]:
    parsed = model.model_validate_json(body)
    customers_ = parsed.customers if model is BatchRequest else [parsed]
    return [dict(c.__dict__) for c in customers_]


@settings(max_examples=600, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies())
def test_fast_decoder_accepts_exactly_what_the_contract_accepts(case):
    model, body = case
    try:
        expected = pydantic_records(model, body)
    except ValidationError:
        with pytest.raises(ValidationError):
            customers_from_json(body, model)
        return
    assert typed(customers_from_json(body, model)) == typed(expected)


@pytest.mark.parametrize(
    "change",
    [
        {"monthly_charges": 70},  # an integer where a float is expected
        {"total_charges": 0},
        {"customer_id": None},
        {"customer_id": "x" * 128},
        {"customer_id": "Ünïcode 7590 ¢—"},  # non-ASCII is stored as sent (whatever bytes it shares with a control)
        {"tenure": 0},
    ],
)
def test_well_formed_edge_values_take_the_same_values(change):
    body = json.dumps({"customers": [{**VALID[0], **change}]}).encode()
    assert typed(customers_from_json(body, BatchRequest)) == typed(pydantic_records(BatchRequest, body))


@pytest.mark.parametrize(
    "field, raw",
    [
        ("monthly_charges", "1e999"),  # parses to inf
        ("monthly_charges", "-1e999"),
        ("total_charges", "NaN"),
        ("total_charges", "Infinity"),
        ("tenure", "-1"),
        ("tenure", "1.5"),
        ("tenure", "true"),
        ("contract", '"Weekly"'),
        ("customer_id", json.dumps("x" * 129)),
        ("customer_id", json.dumps("a\x00b")),  # PostgreSQL cannot store a NUL
        ("customer_id", json.dumps("7590-VHVEG\n")),  # "$" in a pattern would let this one through
        ("customer_id", json.dumps("a\tb")),
        ("customer_id", '""'),  # a prediction no outcome can ever be joined to
        ("monthly_charges", "true"),  # pydantic's lax float read it as 1.0
        ("senior_citizen", "true"),  # and its Literal[0, 1] as 1
        ("senior_citizen", "1.0"),  # and this too (msgspec refused it: the fast path and the contract differed)
        ("monthly_charges", '"5_000"'),  # and this as 5000.0
        ("total_charges", '" 5"'),
        ("total_charges", '"0x10"'),
    ],
)
def test_refusals_name_the_field(field, raw):
    body = json.dumps({**VALID[0], field: "PLACEHOLDER"}).replace('"PLACEHOLDER"', raw).encode()
    with pytest.raises(ValidationError) as refused:
        customers_from_json(body, Customer)
    assert field in str(refused.value)


def test_a_number_in_a_plain_string_is_still_read_as_that_number():
    body = json.dumps({**VALID[0], "monthly_charges": "70.5", "total_charges": "1e3"}).encode()
    [customer] = customers_from_json(body, Customer)
    assert (customer["monthly_charges"], customer["total_charges"]) == (70.5, 1000.0)


@pytest.mark.parametrize("raw", [b"\x00", b"\n", b"\x1f"])
def test_a_raw_control_character_in_a_string_is_malformed_json(raw):
    """Why only bodies holding a backslash have their ids checked one by one."""
    body = json.dumps(VALID[0]).encode().replace(b'"customer_id": "', b'"customer_id": "' + raw, 1)
    assert b"\\" not in body
    with pytest.raises(ValidationError, match="Invalid JSON"):
        customers_from_json(body, Customer)


def test_a_body_that_is_not_utf8_is_refused_as_invalid_json():
    body = json.dumps(VALID[0]).encode().replace(b'"customer_id": "', b'"customer_id": "\xff', 1)
    with pytest.raises(ValidationError, match="Invalid JSON"):
        customers_from_json(body, Customer)


def test_unknown_fields_are_refused_by_name():
    with pytest.raises(ValidationError, match="surprise"):
        customers_from_json(json.dumps({**VALID[0], "surprise": 1}).encode(), Customer)


@pytest.fixture(scope="module")
def fitted(telco_csv):
    """The Telco frame and a pipeline of each model type fitted on it (once for the module)."""
    from churn_platform import data, model

    frame = data.load(telco_csv)
    return frame, {
        t: model.build_pipeline(t, max_iter=50).fit(model.features(frame), frame.churn) for t in MODEL_TYPES
    }


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("rows", [1, 1000])
def test_decoded_customers_score_and_explain_as_their_dicts_do(fitted, model_type, rows):
    """The API scores the decoded structs, batch scoring dicts: the same customers must get the
    same bits either way (trees can flip on a last bit), with and without explanations, by
    the fast scorer and by sklearn."""
    from churn_platform.explanation import Explainer, top
    from churn_platform.scorer import FastScorer, SklearnScorer

    frame, pipelines = fitted
    pipeline = pipelines[model_type]
    scorer = FastScorer(pipeline)
    records = to_records(frame.drop(columns=["churn"]).sample(rows, random_state=3))
    decoded = customers_from_json(json.dumps({"customers": records}).encode(), BatchRequest)
    assert not isinstance(decoded[0], dict)  # the fast path, not pydantic's
    dicts = [msgspec.to_builtins(c) for c in decoded]
    assert np.array_equal(scorer.score(decoded), scorer.score(dicts))
    fallback = SklearnScorer(pipeline)  # what a pipeline the fast scorer does not know is served by
    assert np.array_equal(fallback.score(decoded), fallback.score(dicts))
    explainer = Explainer(scorer, frame)
    by_struct, by_dict = explainer.explain(decoded), explainer.explain(dicts)
    assert np.array_equal(by_struct.probabilities, by_dict.probabilities)
    assert top(by_struct, decoded, 3) == top(by_dict, dicts, 3)


def test_decoded_customers_read_like_dicts():
    (customer,) = customers_from_json(json.dumps(VALID[0]).encode(), Customer)
    assert customer["tenure"] == VALID[0]["tenure"] and customer.get("customer_id") == VALID[0].get("customer_id")
    assert customer.get("surprise") is None and customer.get("surprise", 7) == 7
    with pytest.raises(KeyError, match="surprise"):
        customer["surprise"]
    with pytest.raises(KeyError):
        customer["__class__"]  # attributes that are not fields are not values
    assert "tenure" in customer and "surprise" not in customer
    with pytest.raises(TypeError):  # not a mapping to copy: msgspec.to_builtins gives the dict
        dict(customer)
    assert msgspec.to_builtins(customer)["tenure"] == VALID[0]["tenure"]


def test_customer_ids_read_structs_and_dicts_alike():
    body = json.dumps({"customers": [{**VALID[0], "customer_id": "a"}, {**VALID[1], "customer_id": None}]})
    decoded = customers_from_json(body.encode(), BatchRequest)
    assert customer_ids(decoded) == customer_ids([msgspec.to_builtins(c) for c in decoded]) == ["a", None]
    assert customer_ids([{"tenure": 1}]) == [None] and customer_ids([]) == []
