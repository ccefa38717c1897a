"""Traces: spans for a request (continuing the caller's trace), its decode, score, log append
and encode, and for model loads, read back from the SDK's in-memory exporter; the trace id
in the JSON log lines; nothing at all without the OTEL variables; and the OTLP exporter
really sending to the endpoint the standard variable names."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from churn_platform import data, tracing
from serving.app import create_app
from tests.services import http_server
from tests.unit.test_api import make_settings, wait_ready

TRACE_ID, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    assert tracing.setup("churn-api", exporter=exporter)
    yield exporter
    tracing.shutdown()


def test_a_request_continues_the_callers_trace_through_decode_score_log_and_encode(
    spans, json_lines, registry_uri, tmp_path, telco_csv
):  # fmt: skip
    customers = data.to_records(data.load(telco_csv).drop(columns=["churn"]).head(3))
    with TestClient(create_app(make_settings(registry_uri, tmp_path, access_log=True))) as client:
        wait_ready(client)
        loads = [s for s in spans.get_finished_spans() if s.name in ("registry.resolve", "model.load")]
        assert {s.name for s in loads} == {"registry.resolve", "model.load"}
        assert next(s for s in loads if s.name == "model.load").attributes["churn.model_version"] == 1
        # One trace, not one a step. It ends when the load returns, a moment after /ready says 200.
        deadline = time.monotonic() + 10
        while not (reloads := [s for s in spans.get_finished_spans() if s.name == "model.reload"]):
            assert time.monotonic() < deadline, "no model.reload span"
            time.sleep(0.02)
        reload = reloads[0]
        assert all(s.parent is not None and s.parent.span_id == reload.context.span_id for s in loads)
        spans.clear()
        response = client.post("/predict", json={"customers": customers},
                               headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})  # fmt: skip
    assert response.status_code == 200
    finished = spans.get_finished_spans()
    server = next(s for s in finished if s.name == "POST /predict")
    assert format(server.context.trace_id, "032x") == TRACE_ID and format(server.parent.span_id, "016x") == PARENT
    assert server.attributes["http.response.status_code"] == 200 and server.attributes["http.route"] == "/predict"
    assert server.attributes["churn.request_id"] == response.headers["x-request-id"]
    children = {s.name: s for s in finished if s.parent is not None and s.parent.span_id == server.context.span_id}
    assert set(children) >= {"decode", "score", "inference_log.append", "encode"}
    assert children["score"].attributes["churn.rows"] == 3 and children["score"].attributes["churn.arm"] == "production"
    assert children["decode"].start_time < children["score"].start_time < children["encode"].start_time
    access = [line for line in json_lines() if line.get("request_id") == response.headers["x-request-id"]]
    assert access and access[0]["trace_id"] == TRACE_ID


def test_without_the_otel_variables_nothing_is_traced(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.setup() is False and not tracing.enabled()
    with tracing.span("score") as span:
        assert span is None  # no span object at all: the request path pays nothing
    assert tracing.trace_id() is None


def test_the_standard_variables_that_turn_traces_off_or_ask_for_grpc_are_honoured(monkeypatch):
    """OTEL_SDK_DISABLED and OTEL_TRACES_EXPORTER=none were ignored, and with the gRPC protocol
    every batch went to a gRPC-only port and was lost: `serve` says so and does not start."""
    from click.testing import CliRunner

    from churn_platform.cli import main

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4317")
    for variable, value in (("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")):
        with monkeypatch.context() as env:
            env.setenv(variable, value)
            assert tracing.setup() is False and not tracing.enabled()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    result = CliRunner().invoke(main, ["serve", "--host", "192.0.2.1"])  # an address no one can listen on
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: this API sends traces over OTLP/HTTP" in result.output
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")  # for traces, beside gRPC for the rest
    tracing.check()


def test_a_propagator_that_is_not_installed_stops_serve_with_its_name(monkeypatch):
    """FastAPI imports OpenTelemetry's propagators, which raise on one not installed: with
    OTEL_PROPAGATORS=b3 set cluster-wide, traces off, the API died loading the app (exit 70, "a
    bug") and crash-looped."""
    from click.testing import CliRunner

    from churn_platform.cli import main
    from churn_platform.errors import SettingsError

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_PROPAGATORS", "tracecontext, b3")
    result = CliRunner().invoke(main, ["serve", "--host", "192.0.2.1"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "OTEL_PROPAGATORS=tracecontext, b3: no propagator 'b3' is installed" in result.output
    monkeypatch.setenv("OTEL_PROPAGATORS", "tracecontext,")  # an empty entry: OpenTelemetry refuses it too
    with pytest.raises(SettingsError, match="no propagator '' is installed"):
        tracing.check()
    for accepted in ("tracecontext,baggage", "none", "none,b3"):  # as OpenTelemetry reads it: nothing after none
        monkeypatch.setenv("OTEL_PROPAGATORS", accepted)
        tracing.check()


def test_the_otlp_exporter_sends_to_the_standard_endpoint(monkeypatch):
    received: list[tuple[str, str, int]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], len(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Collector) as url:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "churn-api-test")
        assert tracing.setup()
        with tracing.span("score", {"churn.rows": 1}):
            pass
        tracing.shutdown()  # flushes the batch
    assert received and received[0][0] == "/v1/traces" and received[0][1] == "application/x-protobuf"
    assert received[0][2] > 0


def test_a_failed_request_is_an_error_span_and_an_unsampled_trace_is_never_named_in_the_log(
    spans, json_lines, registry_uri, tmp_path, telco_csv, monkeypatch
):  # fmt: skip
    from serving.predictor import Predictor

    customer = data.to_records(data.load(telco_csv).drop(columns=["churn"]).head(1))[0]
    with TestClient(create_app(make_settings(registry_uri, tmp_path, access_log=True))) as client:
        wait_ready(client)
        # The caller did not sample its trace (flags 00): nothing is exported, so no line names it.
        unsampled = client.post("/predict/single", json=customer, headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-00"})
        assert unsampled.status_code == 200
        spans.clear()

        def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        monkeypatch.setattr(Predictor, "predict", broken)  # a fault injected: no route fails on purpose
        response = client.post("/predict/single", json=customer, headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    assert response.status_code == 500
    server = next(s for s in spans.get_finished_spans() if s.name == "POST /predict/single")
    assert server.status.status_code.name == "ERROR"
    assert [e.attributes["exception.type"] for e in server.events] == ["RuntimeError"]
    def lines_of(answer):
        return [line for line in json_lines() if line.get("request_id") == answer.headers["x-request-id"]]

    assert lines_of(unsampled) and all("trace_id" not in line for line in lines_of(unsampled))
    assert any(line.get("trace_id") == TRACE_ID for line in lines_of(response))


def test_a_readiness_probe_answered_503_is_no_error_span(spans, registry_uri, tmp_path):
    """A pod loading its model answers every probe 503, as asked: each one an error trace
    buried the real errors."""
    with TestClient(create_app(make_settings(registry_uri, tmp_path, model_name="nobody"))) as client:
        assert client.get("/ready").status_code == 503
    probe = next(s for s in spans.get_finished_spans() if s.name == "GET /ready")
    assert probe.status.status_code.name == "UNSET"
