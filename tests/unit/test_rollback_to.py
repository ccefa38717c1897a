"""`rollback --to N` and `promote` on the embedded registry: back along the audit trail,
never off it, and never past a check that could not be made."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from churn_platform.cli import main
from churn_platform.settings import get_settings
from tests.unit.conftest import trained_versions

#: The model of the registries copied from ``templates``.
NAME = "churn-rollback"


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return trained_versions(tmp_path_factory.mktemp("rollback-registry"), NAME, 4)


@pytest.fixture
def versions(embedded: str, templates: dict[int, Path]) -> Callable[[int], str]:
    """Give this test a registry holding v1 to vN, as if it had trained them: the model's name."""

    def copied(n: int) -> str:
        shutil.copy(templates[n], embedded.removeprefix("sqlite:///"))
        return NAME

    return copied


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_rollback_to_an_earlier_production_version(versions):
    model_name = versions(4)
    for version in ("1", "2", "3"):
        assert cli("promote", "--model-name", model_name, "--version", version, "--force").exit_code == 0
    refused = cli("rollback", "--model-name", model_name, "--to", "4")
    assert refused.exit_code == 2 and "v4 did not hold Production before v3" in refused.output
    done = cli("rollback", "--model-name", model_name, "--to", "1", "--reason", "back to basics")
    assert done.exit_code == 0 and "v3 -> v1" in done.output
    again = cli("rollback", "--model-name", model_name, "--to", "1")  # already there: no event, nothing moves
    assert again.exit_code == 0 and "v1 is already in Production" in again.output
    history = json.loads(cli("history", "--model-name", model_name, "--json").output)["events"]
    assert [(e["action"], e["from"], e["to"]) for e in history][0] == ("rollback", 3, 1)
    status = json.loads(cli("status", "--model-name", model_name, "--json").output)
    assert status["production"]["version"] == 1
    assert cli("rollback", "--model-name", model_name).exit_code == 2  # nothing before v1 any more


def test_a_rollback_takes_challenger_off_the_version_it_leaves(versions):
    """A promoted Challenger keeps its alias: after the rollback `rollout start` served it again."""
    from mlflow import MlflowClient

    model_name = versions(3)
    client = MlflowClient()
    assert cli("promote", "--model-name", model_name, "--version", "1").exit_code == 0
    client.set_registered_model_alias(model_name, "Challenger", "2")
    assert cli("promote", "--model-name", model_name, "--version", "2", "--force").exit_code == 0
    done = cli("rollback", "--model-name", model_name)
    assert done.exit_code == 0 and "v2 -> v1; Challenger removed from v2" in done.output, done.output
    assert json.loads(cli("status", "--model-name", model_name, "--json").output)["challenger"] is None
    # A Challenger on another version is someone's next candidate: it stays.
    assert cli("promote", "--model-name", model_name, "--version", "2", "--force").exit_code == 0
    client.set_registered_model_alias(model_name, "Challenger", "3")
    assert "Challenger removed" not in cli("rollback", "--model-name", model_name).output
    assert int(client.get_model_version_by_alias(model_name, "Challenger").version) == 3


def as_json(result) -> dict:
    """The JSON block of a command's stdout (MLflow may print a run link around it)."""
    out = result.stdout
    start = 0 if out.startswith("{") else out.index("\n{") + 1
    return json.loads(out[start : out.rindex("}") + 1])


def test_json_results_keep_their_shape(embedded, model_name):
    """Scripts read these keys: the typed results must serialise to the same JSON as before."""
    for seed in (1, 2):
        # 600: 150 validation rows, enough for the gate to compare figures (100 and 20 of a class)
        trained = as_json(cli("train", "--n-rows", "600", "--seed", str(seed), "--model-name", model_name, "--json"))
    assert set(trained) == {"run_id", "model_name", "version", "metrics", "gate", "challenger"}
    assert {"passed", "reason", "production_version", "production_roc_auc", "candidate_roc_auc"} <= set(trained["gate"])
    first = json.loads(cli("promote", "--model-name", model_name, "--version", "1", "--json").output)
    assert (first["changed"], first["from"], first["to"]) == (True, None, 1)
    assert first["gate"]["checked"] is False and first["event"]["action"] == "promote"
    second = json.loads(cli("promote", "--model-name", model_name, "--version", "2", "--force", "--json").output)
    gate = second["gate"]
    assert gate["checked"] is True and gate["production_version"] == 1
    assert {"candidate_roc_auc", "production_roc_auc", "tolerance", "passed"} <= set(gate)
    back = json.loads(cli("rollback", "--model-name", model_name, "--json").output)
    assert (back["from"], back["to"], back["event"]["action"]) == (2, 1, "rollback")
    events = json.loads(cli("history", "--model-name", model_name, "--json").output)["events"]
    assert [(e["action"], e["from"], e["to"]) for e in events] == [
        ("rollback", 2, 1),
        ("promote", 1, 2),
        ("promote", None, 1),
    ]
    versions = json.loads(cli("versions", "--model-name", model_name, "--json").output)["versions"]
    assert [v["version"] for v in versions] == [2, 1] and versions[1]["aliases"] == ["Production"]


def test_a_reason_in_any_script_fits_the_registrys_tag_column(versions):
    """MLflow's registered-model tag column holds 5000 characters on PostgreSQL and MySQL; JSON's
    ASCII escapes made 1000 Cyrillic letters 6000 and the promote a traceback there (SQLite
    does not check, so it passed here)."""
    from mlflow import MlflowClient

    model_name = versions(1)
    reason = ("откат после инцидента " * 90).strip()  # 1979 characters
    assert cli("promote", "--model-name", model_name, "--version", "1", "--reason", reason).exit_code == 0
    uri = get_settings().tracking_uri
    tags = MlflowClient(uri, uri).get_registered_model(model_name).tags
    events = [value for key, value in tags.items() if reason[:20] in value]
    assert len(events) == 1 and len(events[0]) <= 5000
    history = json.loads(cli("history", "--model-name", model_name, "--json").output)["events"]
    assert history[0]["reason"] == reason
    quoted = cli("rollback", "--model-name", model_name, "--reason", '"' * 1500)
    assert quoted.exit_code == 2 and "'--reason': at most 2000 characters as stored" in quoted.output


def test_a_command_from_a_slow_clock_still_follows_the_events_before_it(versions, monkeypatch):
    """Keys order the audit trail, and each command's clock made them: a rollback run two minutes
    behind sorted first, the alias looked moved from outside, and the next rollback walked back
    to the version just rolled back from."""
    import time

    model_name = versions(3)
    for version in ("1", "3", "2"):
        assert cli("promote", "--model-name", model_name, "--version", version, "--force").exit_code == 0
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 120 * 10**9)
    assert "v2 -> v3" in cli("rollback", "--model-name", model_name).output  # v2 was bad
    monkeypatch.setattr(time, "time_ns", real)
    history = json.loads(cli("history", "--model-name", model_name, "--json").output)["events"]
    assert [(e["action"], e["from"], e["to"]) for e in history] == [
        ("rollback", 2, 3), ("promote", 3, 2), ("promote", 1, 3), ("promote", None, 1)]  # no outside change
    again = cli("rollback", "--model-name", model_name)
    assert again.exit_code == 0 and "v3 -> v1" in again.output  # onwards, never back to v2


def test_rollback_to_a_version_rolled_back_from_says_why_it_is_off_the_way_back(versions):
    """It said "v3 did not hold Production before v2 ... a version that never held it"."""
    from mlflow import MlflowClient

    model_name = versions(3)
    for version in ("1", "2", "3"):
        assert cli("promote", "--model-name", model_name, "--version", version, "--force").exit_code == 0
    assert cli("rollback", "--model-name", model_name).exit_code == 0  # v3 -> v2
    refused = cli("rollback", "--model-name", model_name, "--to", "3")
    assert refused.exit_code == 2 and "v3 is not on the way back from v2" in refused.output
    assert "a version rolled back from" in refused.output and "never held" not in refused.output
    assert "`promote --version 3` moves Production to it" in refused.output
    MlflowClient().delete_model_version(model_name, "3")  # its advice was to promote a version gone
    gone = cli("rollback", "--model-name", model_name, "--to", "3")
    assert gone.exit_code == 2 and "v3 has been deleted since" in gone.output and "promote" not in gone.output


def test_rollback_after_the_production_version_was_deleted_goes_to_the_one_before(versions, monkeypatch):
    """Deleting a bad version takes its alias with it; rollback then said there was nothing to
    roll back, and --to 1 the same, though the trail knew v1 served before it."""
    from mlflow import MlflowClient

    from churn_platform import promotion

    # The deletion is noticed as an outside change, as it is once the promote is 10 s old.
    monkeypatch.setattr(promotion, "RACE_WINDOW_NS", 0)
    model_name = versions(3)
    for version in ("1", "3"):
        assert cli("promote", "--model-name", model_name, "--version", version, "--force").exit_code == 0
    MlflowClient().delete_model_version(model_name, "3")
    refused = cli("rollback", "--model-name", model_name, "--to", "2")
    assert refused.exit_code == 2 and "v2 did not hold Production before v3 (no longer in Production)" in refused.output
    gone = cli("rollback", "--model-name", model_name, "--to", "3")  # it said `promote --version 3` puts it back
    assert gone.exit_code == 2 and "last held Production" in gone.output, gone.output
    assert "v3 has been deleted since" in gone.output and "promote --version 3" not in gone.output
    done = cli("rollback", "--model-name", model_name)
    assert done.exit_code == 0 and "Production rolled back: v- -> v1" in done.output, done.output
    status = json.loads(cli("status", "--model-name", model_name, "--json").output)
    assert status["production"]["version"] == 1
    history = json.loads(cli("history", "--model-name", model_name, "--json").output)["events"]
    assert [(e["action"], e["from"], e["to"]) for e in history][:2] == [("rollback", None, 1), ("external", 3, None)]


def test_a_rollback_whose_reply_was_lost_is_done_once_and_never_retried_a_step_further(
    versions, monkeypatch
):
    """The alias moved, then the registry's answer (or the Challenger check after it) failed:
    exit 3 "unreachable" had the operator run rollback again, which went a second step back."""
    from mlflow.exceptions import MlflowException

    from churn_platform import registry

    model_name = versions(3)
    for version in ("1", "2", "3"):
        assert cli("promote", "--model-name", model_name, "--version", version, "--force").exit_code == 0
    real_move = registry.move_alias

    def reply_lost(*args, **kwargs):
        real_move(*args, **kwargs)
        raise MlflowException("API request failed: Connection reset by peer")

    monkeypatch.setattr(registry, "move_alias", reply_lost)
    done = cli("rollback", "--model-name", model_name)
    assert done.exit_code == 0 and "v3 -> v2" in done.output, done.output
    real_lookup, moved = registry.version_by_alias, []

    def move(*args, **kwargs):
        real_move(*args, **kwargs)
        moved.append(args)

    def gone_after_the_move(client, name, alias):
        if moved:  # the Challenger check after the move
            raise MlflowException("API request failed: Connection refused")
        return real_lookup(client, name, alias)

    monkeypatch.setattr(registry, "move_alias", move)
    monkeypatch.setattr(registry, "version_by_alias", gone_after_the_move)
    done = cli("rollback", "--model-name", model_name)
    assert done.exit_code == 0 and "v2 -> v1" in done.output and "could not be checked" in done.output, done.output
    monkeypatch.undo()
    history = json.loads(cli("history", "--model-name", model_name, "--json").output)["events"]
    assert [(e["action"], e["from"], e["to"]) for e in history][:2] == [("rollback", 2, 1), ("rollback", 3, 2)]
    assert json.loads(cli("status", "--model-name", model_name, "--json").output)["production"]["version"] == 1


def test_a_gate_whose_figures_could_not_be_read_promotes_nothing(versions, monkeypatch):
    """A registry blip while reading the runs' metrics read as "no figure": the gate passed
    "not checked" and promoted a version it never compared (Production registered by hand,
    without the roc_auc tag)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model_name = versions(2)
    assert cli("promote", "--model-name", model_name, "--version", "1").exit_code == 0
    MlflowClient().delete_model_version_tag(model_name, "1", "roc_auc")

    def blip(self, run_id):
        raise MlflowException("API request failed: Connection refused")

    monkeypatch.setattr(MlflowClient, "get_run", blip)
    refused = cli("promote", "--model-name", model_name, "--version", "2")
    assert refused.exit_code == 3 and "unreachable" in refused.output, refused.output
    monkeypatch.undo()
    status = json.loads(cli("status", "--model-name", model_name, "--json").output)
    assert status["production"]["version"] == 1


def test_a_version_that_cannot_load_is_refused_before_any_alias_moves(versions, tmp_path):
    """Promoting a version whose artifacts were gone, or whose threshold tag was edited to text
    in the UI, exited 0; then every replica's load failed and only an alert said so."""
    from mlflow import MlflowClient

    model_name = versions(2)
    client = MlflowClient()
    for version in ("1", "2"):
        assert cli("promote", "--model-name", model_name, "--version", version, "--force").exit_code == 0
    client.set_model_version_tag(model_name, "1", "decision_threshold", "abc")
    (tmp_path / "cleaned-up").mkdir()
    client.create_model_version(model_name, source=str(tmp_path / "cleaned-up"))  # v3: its folder emptied
    for args, message in (
        (("promote", "--version", "1", "--force"), "v1's tag decision_threshold='abc' is not between 0 and 1"),
        (("promote", "--version", "3", "--force"), f"{model_name} v3: its model artifacts cannot be read"),
        (("rollout", "start", "--mode", "shadow", "--version", "3"), f"{model_name} v3: its model artifacts"),
        # The emergency command says why, and the way out.
        (("rollback",), "cannot roll back to v1, which held Production before v2: v1's tag decision_threshold='abc'"),
        (("rollback",), "it cannot serve; roll back to another with --to (earlier: none)"),
    ):
        result = cli(*args, "--model-name", model_name)
        assert (result.exit_code, message in result.output) == (2, True), (args, result.output)
    status = json.loads(cli("status", "--model-name", model_name, "--json").output)
    assert status["production"]["version"] == 2
    events = json.loads(cli("history", "--model-name", model_name, "--json").output)["events"]
    assert [(e["action"], e["to"]) for e in events] == [("promote", 2), ("promote", 1)]
