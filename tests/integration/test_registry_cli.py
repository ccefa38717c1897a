"""The registry CLI against the real PostgreSQL + S3 mlflow server."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import data, promotion
from churn_platform.cli import main
from churn_platform.promotion import AUDIT_PREFIX
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train
from tests.conftest import mlflow_uris_restored
from tests.services import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained_three(stack, tmp_path_factory) -> str:
    """v1 and v2 are real models; v3 learned from shuffled labels, so its roc_auc is ~0.5.
    Trained once for the module: training was most of each test's time."""
    name = f"churn-source-{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("noise")
    with pytest.MonkeyPatch.context() as patch, mlflow_uris_restored():
        for key, value in stack.env.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        settings = get_settings()
        train(TrainConfig(n_rows=800, seed=1, model_name=name), settings)
        train(TrainConfig(n_rows=800, seed=2, model_name=name), settings)
        noise = data.generate(800, seed=3)
        noise["churn"] = noise["churn"].sample(frac=1, random_state=0).to_numpy()
        noise.to_csv(folder / "noise.csv", index=False)
        train(TrainConfig(data=str(folder / "noise.csv"), model_name=name), settings)
    get_settings.cache_clear()
    return name


@pytest.fixture
def three_versions(stack_env, model_name, trained_three) -> str:
    """A model of this test's own whose v1 to v3 are copies of the module's (the same runs and
    metrics, no alias, no audit event): what each test promotes, moves and deletes is its own."""
    client = MlflowClient(stack_env.tracking_uri, stack_env.tracking_uri)
    for version in (1, 2, 3):
        client.copy_model_version(f"models:/{trained_three}/{version}", model_name)
    return model_name


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def status_json(name: str) -> dict:
    result = cli("status", "--model-name", name, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def history_json(name: str) -> list[dict]:
    result = cli("history", "--model-name", name, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["events"]


def test_promote_rollback_and_history(three_versions):
    name = three_versions
    assert status_json(name)["production"] is None
    assert (
        cli("promote", "--model-name", name, "--version", "1", "--actor", "alice", "--reason", "first").exit_code == 0
    )
    assert cli("promote", "--model-name", name, "--version", "2", "--actor", "bob").exit_code == 0
    status = status_json(name)
    assert status["model"] == name
    assert status["production"]["version"] == 2
    assert status["production"]["promoted_by"] == "bob"
    assert status["production"]["run_id"] and status["production"]["metrics"]["roc_auc"] > 0.7
    # `versions` says the same of the Production version (it was null there, and in the demo's summary).
    listed = {v["version"]: v for v in json.loads(cli("versions", "--model-name", name, "--json").output)["versions"]}
    assert (listed[2]["promoted_by"], listed[2]["promoted_via"]) == ("bob", status["production"]["promoted_via"])
    assert listed[1]["promoted_by"] is None  # no longer in Production

    result = cli("rollback", "--model-name", name, "--reason", "bad latency")
    assert result.exit_code == 0 and "v2 -> v1" in result.output
    assert status_json(name)["production"]["version"] == 1

    before = history_json(name)
    result = cli("rollback", "--model-name", name)
    assert result.exit_code == 2
    assert "no earlier Production version" in result.output and "nothing changed" in result.output
    assert status_json(name)["production"]["version"] == 1
    assert history_json(name) == before

    events = history_json(name)
    assert [(e["action"], e["from"], e["to"]) for e in events] == [
        ("rollback", 2, 1), ("promote", 1, 2), ("promote", None, 1),
    ]  # fmt: skip
    assert events[0]["reason"] == "bad latency" and events[2]["actor"] == "alice"
    assert all(e["via"] == "cli" for e in events)
    assert len(history_json_limit(name, 1)) == 1

    versions = json.loads(cli("versions", "--model-name", name, "--json").output)["versions"]
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert "Production" in versions[2]["aliases"]


def history_json_limit(name: str, limit: int) -> list[dict]:
    return json.loads(cli("history", "--model-name", name, "--json", "--limit", str(limit)).output)["events"]


def test_gate_refuses_a_worse_version_unless_forced(three_versions):
    name = three_versions
    assert cli("promote", "--model-name", name, "--version", "2").exit_code == 0
    refused = cli("promote", "--model-name", name, "--version", "3")
    assert refused.exit_code == 1
    assert "refused: v3 roc_auc" in refused.output and "--force" in refused.output
    assert status_json(name)["production"]["version"] == 2
    forced = cli("promote", "--model-name", name, "--version", "3", "--force", "--reason", "demo")
    assert forced.exit_code == 0
    assert "gate: refused, forced past it: roc_auc" in forced.output  # not only in --json and history
    assert status_json(name)["production"]["version"] == 3
    assert "forced past gate" in history_json(name)[0]["reason"]


def test_missing_version_and_model_are_exit_2(three_versions):
    result = cli("promote", "--model-name", three_versions, "--version", "42")
    assert result.exit_code == 2 and "has no version 42" in result.output
    # A rollback target deleted since (a bad version's usual fate): which, and the way out.
    for version in ("1", "2", "3"):
        assert cli("promote", "--model-name", three_versions, "--version", version, "--force").exit_code == 0
    MlflowClient().delete_model_version(three_versions, "2")
    result = cli("rollback", "--model-name", three_versions)
    assert result.exit_code == 2 and "cannot roll back to v2, which held Production before v3" in result.output
    assert "roll back to another with --to (earlier: [1])" in result.output
    assert cli("rollback", "--model-name", three_versions, "--to", "1").exit_code == 0
    result = cli("status", "--model-name", "no-such-model")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_alias_set_through_the_rest_api_is_honoured(three_versions, stack_env):
    name = three_versions
    assert cli("promote", "--model-name", name, "--version", "1").exit_code == 0
    # What the MLflow UI does when a user adds the alias on a version's page.
    response = httpx.post(
        f"{stack_env.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": name, "alias": "Production", "version": "2"},
    )
    assert response.status_code == 200, response.text
    assert status_json(name)["production"]["version"] == 2
    events = history_json(name)
    assert (events[0]["action"], events[0]["from"], events[0]["to"], events[0]["via"]) == (
        "external",
        1,
        2,
        "external",
    )
    assert len(history_json(name)) == 2  # noticing it again records nothing new
    result = cli("rollback", "--model-name", name)
    assert result.exit_code == 0 and "v2 -> v1" in result.output
    assert status_json(name)["production"]["version"] == 1


def test_racing_promotions_keep_every_audit_event(three_versions, stack_env):
    name = three_versions
    base = [sys.executable, "-m", "churn_platform.cli", "promote", "--model-name", name, "--force"]
    for _ in range(3):
        assert cli("promote", "--model-name", name, "--version", "1", "--force").exit_code == 0
        procs = [
            subprocess.Popen([*base, "--version", v, "--actor", f"racer{v}"], env=stack_env.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for v in ("2", "3")
        ]  # fmt: skip
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
    final = status_json(name)["production"]["version"]
    assert final in (2, 3)
    tags = MlflowClient(stack_env.tracking_uri, stack_env.tracking_uri).get_registered_model(name).tags
    raw = [json.loads(v) for k, v in tags.items() if k.startswith(AUDIT_PREFIX)]
    promotions = [e for e in raw if e["action"] == "promote"]
    assert sorted(e["actor"] for e in promotions if e["actor"].startswith("racer")) == [
        "racer2", "racer2", "racer2", "racer3", "racer3", "racer3",
    ]  # fmt: skip
    assert all({"at", "from", "to", "actor", "via", "reason"} <= set(e) for e in raw)
    assert not [e for e in raw if e["action"] == "external"]  # a race is not an outside change


def test_a_promotion_landing_while_another_command_reads_is_not_an_outside_change(
    three_versions, stack_env, monkeypatch
):
    """The racing test's rare failure, made certain: a promotion lands just after the events are read.

    When the alias was read after the events, that move looked like an outside change.
    """
    name = three_versions
    assert cli("promote", "--model-name", name, "--version", "1").exit_code == 0
    client = MlflowClient(stack_env.tracking_uri, stack_env.tracking_uri)
    real_recorded_events = promotion.recorded_events
    landed = []

    def recorded_then_another_promotes(client_, name_, **kwargs):
        events = real_recorded_events(client_, name_, **kwargs)
        if not landed:
            landed.append(True)
            promotion.promote(client, name, 2, actor="racer", force=True)
        return events

    monkeypatch.setattr(promotion, "recorded_events", recorded_then_another_promotes)
    promotion.reconcile(client, name)
    monkeypatch.undo()
    assert landed
    assert status_json(name)["production"]["version"] == 2
    assert [(e["action"], e["from"], e["to"]) for e in history_json(name)] == [("promote", 1, 2), ("promote", None, 1)]


def test_commands_noticing_the_same_ui_change_at_once_record_it_once_and_all_succeed(three_versions, stack_env):
    name = three_versions
    assert cli("promote", "--model-name", name, "--version", "1").exit_code == 0
    client = MlflowClient(stack_env.tracking_uri, stack_env.tracking_uri)
    # Changes made in the UI, each noticed by eight commands at once; the last two undo the first.
    for version in ("2", "1", "2"):
        client.set_registered_model_alias(name, "Production", version)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            seen = list(pool.map(lambda _: promotion.current_production(client, name), range(8)))
        assert seen == [int(version)] * 8
    external = [(e["from"], e["to"]) for e in history_json(name) if e["action"] == "external"]
    assert external == [(1, 2), (2, 1), (1, 2)]
    assert status_json(name)["production"]["promoted_via"] == "external"


def test_unreachable_registry_is_exit_3_within_30s(stack_env, cli_in_process):
    dead = f"http://127.0.0.1:{free_port()}"
    for command in (["status"], ["versions"], ["history"], ["promote", "--version", "1"], ["rollback"]):
        started = time.perf_counter()
        done = cli_in_process(stack_env.env, *command, "--tracking-uri", dead)
        assert done.returncode == 3, (command, done.stderr)
        assert "unreachable" in done.stderr and "Traceback" not in done.stderr
        assert time.perf_counter() - started < 30
