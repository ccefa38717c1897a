"""Rollout state in the registry (embedded registry, real MLflow): start, status, stop, promote,
bad input refused with the registry unchanged, and the audit trail around Production intact."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from churn_platform.cli import main
from churn_platform.contract import ROLLOUT_TAG
from tests.unit.conftest import trained_versions


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def out(result) -> dict:
    return json.loads(result.stdout)


def registry_refuses_the_rollout_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry goes away just as the rollout state is written (its audit event got through)."""
    from mlflow.exceptions import MlflowException

    real = MlflowClient.set_registered_model_tag

    def refuses(self, model, key, value):
        if key == ROLLOUT_TAG:
            raise MlflowException("API request failed: Connection refused")
        return real(self, model, key, value)

    monkeypatch.setattr(MlflowClient, "set_registered_model_tag", refuses)


#: The model every test here rolls out: each has its own copy of the registry.
NAME = "churn-rollout"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_versions(tmp_path_factory.mktemp("rollout-registry"), NAME, 3)[3]


@pytest.fixture
def three_versions(embedded, trained):
    """v1 in Production, v2 and v3 registered; v3 holds Challenger: in this test's own registry."""
    shutil.copy(trained, embedded.removeprefix("sqlite:///"))
    assert cli("promote", "--model-name", NAME, "--version", "1").exit_code == 0
    MlflowClient().set_registered_model_alias(NAME, "Challenger", "3")
    return NAME


def test_a_canary_is_recorded_in_the_registry_and_the_audit_trail(three_versions, tmp_path):
    name = three_versions
    assert out(cli("rollout", "status", "--model-name", name, "--json"))["mode"] == "off"
    started = cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "20",
                  "--reason", "try v3", "--actor", "ana", "--json")  # fmt: skip
    assert started.exit_code == 0, started.output
    state = out(cli("rollout", "status", "--model-name", name, "--json"))
    assert (state["mode"], state["percent"], state["challenger_version"], state["production_version"]) == (
        "canary", 20, 3, 1)  # fmt: skip
    assert state["started_by"] == "ana" and state["reason"] == "try v3"
    assert json.loads(MlflowClient().get_registered_model(name).tags[ROLLOUT_TAG])["mode"] == "canary"
    text = cli("rollout", "status", "--model-name", name).output
    assert "canary: Challenger v3 20% of customers beside Production v1" in text
    # Nothing logged since it started: said, not a table header over no rows.
    import sqlalchemy as sa

    from churn_platform.inference_log import upgrade

    upgrade(sa.create_engine(f"sqlite:///{tmp_path}/log.db"))
    text = cli("rollout", "status", "--model-name", name, "--inference-log-url", f"sqlite:///{tmp_path}/log.db").output
    assert "no comparison yet: no rows logged since the rollout started" in text and "risk low/med/high" not in text
    # The log down (an incident): the state still shows, and the exit code says the log failed.
    dead = cli("rollout", "status", "--model-name", name, "--inference-log-url", "postgresql://u@127.0.0.1:1/x")
    assert dead.exit_code == 3 and "canary: Challenger v3 20% of customers beside Production v1" in dead.output
    assert "no comparison: cannot read the inference log at postgresql://u@127.0.0.1:1/x" in dead.output
    dead = cli("rollout", "status", "--model-name", name, "--inference-log-url", "postgresql://u@127.0.0.1:1/x",
               "--json")  # fmt: skip
    assert dead.exit_code == 3 and out(dead)["mode"] == "canary" and "cannot read" in out(dead)["comparison"]["note"]
    assert out(dead)["exit_code"] == 3 and out(dead)["error"].startswith("cannot read the inference log")
    events = out(cli("history", "--model-name", name, "--json"))["events"]
    assert (events[0]["action"], events[0]["from"], events[0]["to"]) == ("rollout-start", 1, 3)
    assert "canary 20%: try v3" in events[0]["reason"]
    assert cli("rollout", "stop", "--model-name", name).exit_code == 0
    assert out(cli("rollout", "status", "--model-name", name, "--json"))["mode"] == "off"
    assert out(cli("history", "--model-name", name, "--json"))["events"][0]["action"] == "rollout-stop"
    # Rollout events never look like moves of Production: status and rollback still see v1 alone.
    status = out(cli("status", "--model-name", name, "--json"))
    assert status["production"]["version"] == 1 and status["production"]["promoted_via"] == "cli"
    assert cli("rollback", "--model-name", name).exit_code == 2  # nothing before v1


def test_a_new_share_keeps_the_running_challenger_when_training_moved_the_alias(three_versions):
    name = three_versions
    first = cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "10", "--actor", "ana",
                "--reason", "try v3")  # fmt: skip
    assert first.exit_code == 0, first.output
    started_at = out(cli("rollout", "status", "--model-name", name, "--json"))["started_at"]
    MlflowClient().set_registered_model_alias(name, "Challenger", "2")  # a later run passed the gate
    raised = cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "50", "--actor", "bo",
                 "--reason", "no errors in a day")  # fmt: skip
    assert raised.exit_code == 0, raised.output
    state = out(cli("rollout", "status", "--model-name", name, "--json"))
    assert (state["challenger_version"], state["percent"]) == (3, 50)  # v2 was never shadowed: not served
    assert (state["started_at"], state["started_by"]) == (started_at, "ana")  # the comparison goes on
    assert state["reason"] == "try v3"  # ana's, not bo's reason shown as hers (bo's is in the trail)
    events = out(cli("history", "--model-name", name, "--json"))["events"]
    assert (events[0]["actor"], events[0]["reason"]) == ("bo", "canary 50%: no errors in a day")
    # The running canary's Challenger deleted in the UI (a bad version's usual fate): the share
    # cannot change, and the message says which version that is and the ways out.
    MlflowClient().delete_model_version(name, "3")
    gone = cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "20")
    assert gone.exit_code == 2 and "has no version 3: it is the running canary's Challenger; end that rollout " \
        "(`rollout stop`), or name a version with --version" in gone.output, gone.output
    switched = cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "10", "--version", "2")
    assert switched.exit_code == 0, switched.output
    state = out(cli("rollout", "status", "--model-name", name, "--json"))
    assert state["challenger_version"] == 2 and state["started_at"] > started_at
    assert cli("rollout", "stop", "--model-name", name).exit_code == 0


def test_rollout_promote_moves_production_through_the_gate_then_ends_the_rollout(three_versions):
    name = three_versions
    assert cli("rollout", "start", "--model-name", name, "--mode", "shadow", "--version", "2").exit_code == 0
    promoted = cli("rollout", "promote", "--model-name", name, "--force", "--json")
    assert promoted.exit_code == 0, promoted.output
    result = out(promoted)
    assert (result["from"], result["to"]) == (1, 2) and "gate" in result
    assert out(cli("status", "--model-name", name, "--json"))["production"]["version"] == 2
    assert out(cli("rollout", "status", "--model-name", name, "--json"))["mode"] == "off"
    actions = [e["action"] for e in out(cli("history", "--model-name", name, "--json"))["events"]]
    assert actions[:3] == ["rollout-stop", "promote", "rollout-start"]
    assert cli("rollback", "--model-name", name).exit_code == 0  # back to v1 along the trail
    assert out(cli("status", "--model-name", name, "--json"))["production"]["version"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "canary", "--percent", "0"], "between 1 and 99"),
        (["--mode", "canary", "--percent", "100"], "between 1 and 99"),
        (["--mode", "canary"], "a canary needs --percent"),
        (["--mode", "shadow", "--percent", "10"], "canary only"),
        (["--mode", "shadow", "--version", "1"], "v1 already holds Production"),
        (["--mode", "shadow", "--version", "9"], "has no version 9"),
        (["--mode", "blue-green"], "Invalid value for '--mode'"),
    ],
)
def test_bad_input_is_exit_2_and_changes_nothing(three_versions, args, message):
    name = three_versions
    before = MlflowClient().get_registered_model(name).tags
    result = cli("rollout", "start", "--model-name", name, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert MlflowClient().get_registered_model(name).tags == before


def test_without_a_challenger_or_a_rollout_the_commands_say_what_is_missing(three_versions):
    name = three_versions
    MlflowClient().delete_registered_model_alias(name, "Challenger")
    result = cli("rollout", "start", "--model-name", name, "--mode", "shadow")
    assert result.exit_code == 2 and "no version of" in result.output and "Challenger" in result.output
    for command in ("stop", "promote"):
        result = cli("rollout", command, "--model-name", name)
        assert result.exit_code == 2 and "no rollout" in result.output


def test_a_rollout_ends_when_production_moves_and_a_rollback_does_not_revive_it(three_versions):
    name = three_versions
    assert cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "20").exit_code == 0
    assert cli("promote", "--model-name", name, "--version", "3", "--force", "--actor", "bob").exit_code == 0
    assert cli("rollback", "--model-name", name).exit_code == 0  # Production is v1 again, as when it started
    state = out(cli("rollout", "status", "--model-name", name, "--json"))
    assert state["mode"] == "off" and state["challenger_version"] is None
    assert "canary of v3 beside v1 ended when Production moved: promote v1 -> v3" in state["reason"]
    assert "by bob" in cli("rollout", "status", "--model-name", name).output
    result = cli("rollout", "promote", "--model-name", name)
    assert result.exit_code == 2 and "no rollout" in result.output and "ended when Production moved" in result.output
    # stop clears the tag that still says canary, and says why in the trail.
    assert json.loads(MlflowClient().get_registered_model(name).tags[ROLLOUT_TAG])["mode"] == "canary"
    cleared = cli("rollout", "stop", "--model-name", name)
    assert cleared.exit_code == 0 and "already ended, its tag now cleared: the canary of v3" in cleared.output
    assert json.loads(MlflowClient().get_registered_model(name).tags[ROLLOUT_TAG])["mode"] == "off"
    event = out(cli("history", "--model-name", name, "--json"))["events"][0]
    assert event["action"] == "rollout-stop" and "ended when Production moved" in event["reason"]
    assert cli("rollout", "stop", "--model-name", name).exit_code == 2  # now nothing is left to stop
    # A tag no one can read (edited by hand): replicas ignore it, and stop, the documented clean-up, clears it.
    # Nor is a canary of 500 % (every customer to the Challenger) or without its versions served as it says,
    # nor Production beside itself (each request scored twice).
    for hand_made in ('{"mode": "canary", "percent": 500, "challenger_version": 3, "production_version": 1}',
                      '{"mode": "shadow", "challenger_version": 3}', '{"mode": "shadow", "percent": 20, '
                      '"challenger_version": 3, "production_version": 1}', "{canary",
                      '{"mode": "shadow", "challenger_version": 1, "production_version": 1}'):  # fmt: skip
        MlflowClient().set_registered_model_tag(name, ROLLOUT_TAG, hand_made)
        state = out(cli("rollout", "status", "--model-name", name, "--json"))
        assert state["mode"] == "off" and "unreadable" in state["reason"], (hand_made, state)
    cleared = cli("rollout", "stop", "--model-name", name)
    assert cleared.exit_code == 0 and "unreadable" in cleared.output, cleared.output
    assert json.loads(MlflowClient().get_registered_model(name).tags[ROLLOUT_TAG])["mode"] == "off"
    event = out(cli("history", "--model-name", name, "--json"))["events"][0]
    assert event["action"] == "rollout-stop" and "unreadable" in event["reason"]
    assert cli("rollout", "stop", "--model-name", name).exit_code == 2
    MlflowClient().set_registered_model_tag(name, ROLLOUT_TAG, '{"mode": "off", "reason": "set by hand"}')
    assert cli("rollout", "stop", "--model-name", name).exit_code == 2  # readable, and off: nothing to clear


def test_a_rollout_ends_when_production_is_moved_in_the_ui(three_versions):
    name = three_versions
    assert cli("rollout", "start", "--model-name", name, "--mode", "shadow").exit_code == 0
    MlflowClient().set_registered_model_alias(name, "Production", "2")  # what the MLflow UI does
    state = out(cli("rollout", "status", "--model-name", name, "--json"))
    assert state["mode"] == "off" and "ended when Production moved: external v1 -> v2" in state["reason"]


def test_a_move_from_a_machine_whose_clock_runs_slow_still_ends_the_rollout(three_versions):
    """The end was found by comparing event times with the start time, each from the clock of
    whoever ran the command: a promote and rollback from a laptop a minute slow read as
    before the start, and the canary came back on every replica."""
    import time
    from datetime import UTC, datetime

    from churn_platform import promotion, rollout

    name = three_versions
    client = MlflowClient()
    assert cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "20").exit_code == 0
    for action, old, new in (("promote", 1, 3), ("rollback", 3, 1)):
        ns = time.time_ns() - 60 * 10**9  # a minute behind
        key = f"{promotion.AUDIT_PREFIX}{ns:020d}-slowslow"
        at = datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")
        promotion._write(client, name, promotion.Event(key, at, action, old, new, "laptop", "", "cli"))
        client.set_registered_model_alias(name, "Production", str(new))
    state = rollout.current(client, name, 1)
    assert state.mode == "off" and "ended when Production moved" in state.reason


@pytest.mark.parametrize("started_at", ["yesterday", "2026-11-01T00:00:00"])  # the second: no zone
def test_a_hand_edited_start_time_is_an_unreadable_tag_not_a_traceback(three_versions, started_at):
    name = three_versions
    hand_made = {"mode": "shadow", "challenger_version": 3, "production_version": 1, "started_at": started_at}
    MlflowClient().set_registered_model_tag(name, ROLLOUT_TAG, json.dumps(hand_made))
    for command in ("status", "stop"):  # an earlier release's state (no moves_at_start) is read by time
        result = cli("rollout", command, "--model-name", name)
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "unreadable churn_platform.rollout tag ignored" in result.output


def test_a_rollout_state_the_registry_did_not_save_leaves_no_event(three_versions, monkeypatch):
    """`history` showed a rollout that never started when the event was written first and kept."""
    name = three_versions
    registry_refuses_the_rollout_tag(monkeypatch)
    result = cli("rollout", "start", "--model-name", name, "--mode", "shadow")
    assert result.exit_code == 3, result.output
    monkeypatch.undo()
    events = out(cli("history", "--model-name", name, "--json"))["events"]
    assert [e["action"] for e in events] == ["promote"]
    assert out(cli("rollout", "status", "--model-name", name, "--json"))["mode"] == "off"


def test_a_replica_polling_between_a_rollout_change_and_its_event_follows_the_change(three_versions, monkeypatch,
                                                                                      caplog):
    """The event was written before the state: a replica polling between the two (or after an
    event whose reply was lost, the command exiting 3) read a state older than the trail's last
    change, served no rollout as if two changes had raced, and reloaded the Challenger next poll."""
    from churn_platform import promotion, rollout

    name, client = three_versions, MlflowClient()
    assert cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "10").exit_code == 0
    seen = []
    real = promotion.write

    def poll_then_write(*args):
        seen.append(rollout.current(client, name, 1))  # a replica's poll between the two writes
        real(*args)
        raise MlflowException("API request failed: Read timed out")  # written, its reply lost

    monkeypatch.setattr(promotion, "write", poll_then_write)
    result = cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "20")
    monkeypatch.undo()
    assert result.exit_code == 3, result.output
    assert "is saved and replicas follow it" in caplog.text, caplog.text
    assert [(s.mode, s.percent) for s in seen] == [("canary", 20)], seen
    state = rollout.current(client, name, 1)
    assert (state.mode, state.percent, state.reason) == ("canary", 20, ""), state
    actions = [e["action"] for e in out(cli("history", "--model-name", name, "--json"))["events"]]
    assert actions.count("rollout-start") == 2, actions


def test_a_rollout_change_whose_event_is_refused_stands_and_says_so(three_versions, monkeypatch, caplog):
    from churn_platform import promotion

    name = three_versions

    def refused(*args):
        raise MlflowException("API request failed: Connection refused")

    monkeypatch.setattr(promotion, "write", refused)
    result = cli("rollout", "start", "--model-name", name, "--mode", "shadow")
    monkeypatch.undo()
    assert result.exit_code == 3 and "is saved and replicas follow it" in caplog.text, result.output
    assert out(cli("rollout", "status", "--model-name", name, "--json"))["mode"] == "shadow"
    assert [e["action"] for e in out(cli("history", "--model-name", name, "--json"))["events"]] == ["promote"]


def test_a_hand_edited_negative_move_count_is_an_unreadable_tag_not_a_traceback(three_versions):
    name = three_versions
    hand_made = {"mode": "shadow", "challenger_version": 3, "production_version": 1, "moves_at_start": -1,
                 "started_at": "2026-11-01T00:00:00+00:00"}  # fmt: skip
    MlflowClient().set_registered_model_tag(name, ROLLOUT_TAG, json.dumps(hand_made))
    result = cli("rollout", "status", "--model-name", name)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "unreadable churn_platform.rollout tag ignored" in result.output


def test_rollout_promote_that_cannot_record_its_stop_still_succeeds(three_versions, monkeypatch):
    """Production moved, then the rollout-stop could not be written: exit 3 had a retry answer
    "no rollout running" (exit 2) for a promotion that was done."""
    name = three_versions
    assert cli("rollout", "start", "--model-name", name, "--mode", "shadow", "--version", "2").exit_code == 0
    registry_refuses_the_rollout_tag(monkeypatch)
    promoted = cli("rollout", "promote", "--model-name", name, "--force")
    monkeypatch.undo()
    assert promoted.exit_code == 0, promoted.output
    assert "the rollout ended with the move" in promoted.output
    assert out(cli("status", "--model-name", name, "--json"))["production"]["version"] == 2
    assert out(cli("rollout", "status", "--model-name", name, "--json"))["mode"] == "off"


def test_rollout_status_shows_the_state_when_a_version_tag_is_bad(three_versions):
    """A hand-typed decision threshold on the Challenger (exit 2) lost the state that still stands."""
    name = three_versions
    assert cli("rollout", "start", "--model-name", name, "--mode", "shadow").exit_code == 0
    MlflowClient().set_model_version_tag(name, "3", "decision_threshold", "high")
    shown = cli("rollout", "status", "--model-name", name)
    assert shown.exit_code == 2, shown.output
    assert "shadow: Challenger v3" in shown.output and "Traceback" not in shown.output


def test_a_sigterm_between_a_rollout_state_and_its_event_waits_for_the_event(three_versions):
    """`retrain --rollout` at its Job's deadline: a rollout-start that took effect, missing from the trail."""
    import signal
    import subprocess
    import sys
    import textwrap

    name = three_versions
    script = textwrap.dedent(f"""
        import os, signal
        from mlflow import MlflowClient
        from churn_platform import promotion, rollout
        real = MlflowClient.set_registered_model_tag
        def save(self, name, key, value):
            real(self, name, key, value)
            if key == "churn_platform.rollout":
                os.kill(os.getpid(), signal.SIGTERM)  # the deadline, just after the state is saved
        MlflowClient.set_registered_model_tag = save
        rollout.start(MlflowClient(), {name!r}, mode="shadow", actor="me")
        print("not killed")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGTERM, done.stdout + done.stderr
    assert out(cli("rollout", "status", "--model-name", name, "--json"))["mode"] == "shadow"
    assert out(cli("history", "--model-name", name, "--json"))["events"][0]["action"] == "rollout-start"


def test_a_rollout_started_while_a_promotion_lands_runs_beside_the_new_production(three_versions, monkeypatch):
    """`retrain --rollout` while someone promotes: the promotion's alias moved after `start` read
    Production, its event not yet marked done; counted once done, it ended the new canary on
    arrival (exit 0, and replicas served Production alone)."""
    from dataclasses import replace

    from churn_platform import promotion, registry, rollout

    name, client = three_versions, MlflowClient()
    key, at = promotion._now_key(promotion.reconcile(client, name))  # noqa: SLF001
    event = promotion.Event(key, at, "promote", 1, 2, "alice", "in flight", "cli")
    promotion._write(client, name, replace(event, pending=True))  # noqa: SLF001 - the promotion's first step
    real = promotion.reconcile

    def then_the_alias_moves(*args):
        settled = real(*args)
        registry.move_alias(client, name, "Production", 2)  # its second, just after `start` read Production
        monkeypatch.setattr(promotion, "reconcile", real)
        return settled

    monkeypatch.setattr(promotion, "reconcile", then_the_alias_moves)
    state = rollout.start(client, name, mode="canary", percent=20, version=3, actor="bob", reason="ship it :")
    assert (state.mode, state.production_version) == ("canary", 2)
    promotion._write(client, name, event)  # noqa: SLF001 - its third: marked done
    assert rollout.current(client, name, 2).mode == "canary"
    # The reason as given ("ship it :" lost its colon in the trail).
    assert promotion.recorded_events(client, name)[-1].reason == "canary 20%: ship it :"


def test_rollout_status_still_shows_the_figures_when_the_challenger_was_deleted(three_versions, tmp_path, setenv):
    """Deleted mid-canary (worse, say): its threshold is gone with it, and status showed no
    figures at all, where the log still held the evidence of why."""
    import sqlalchemy as sa

    from churn_platform import data
    from churn_platform.inference_log import COLUMNS, sqlite_time, upgrade
    from churn_platform.schema import FEATURE_NAMES

    name = three_versions
    url = f"sqlite:///{tmp_path}/log.db"
    setenv(CHURN_INFERENCE_LOG_URL=url)
    assert cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "50").exit_code == 0
    customers = data.generate(200, seed=3)
    at = sqlite_time(datetime.now(UTC) + timedelta(seconds=1))
    rows = [(f"r{i}", 0, at, name, 3 if i % 2 else 1, "canary" if i % 2 else "production", 0.5, c.customer_id,
             *(getattr(c, f) for f in FEATURE_NAMES), 0.3 + 0.001 * i)
            for i, c in enumerate(customers.itertuples(index=False))]  # fmt: skip
    engine = sa.create_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO inference_log ({', '.join(COLUMNS)}) VALUES "
                             f"({', '.join('?' * len(COLUMNS))})", rows)  # fmt: skip
    engine.dispose()
    MlflowClient().delete_model_version(name, "3")
    result = cli("rollout", "status", "--model-name", name, "--json")
    assert result.exit_code == 2, result.output
    comparison = out(result)["comparison"]
    assert sorted(a["rows"] for a in comparison["arms"]) == [100, 100], comparison
    assert "has no version 3" in comparison["note"] and "CHURN_DECISION_THRESHOLD" in comparison["note"]
    text = cli("rollout", "status", "--model-name", name)
    assert text.exit_code == 2 and "no comparison" not in text.output, text.output
    assert " canary " in text.output and "note: " in text.output and "has no version 3" in text.output


def test_a_stop_that_raced_a_start_still_stops_the_challenger(three_versions):
    """Each change keys its event, saves the state naming it, then writes the event: a start
    whose save landed after a stop it raced kept the Challenger serving, while `history` ended
    on the stop (exit 0 both)."""
    from churn_platform import promotion, rollout

    name, client = three_versions, MlflowClient()
    assert cli("rollout", "start", "--model-name", name, "--mode", "canary", "--percent", "10").exit_code == 0
    running = rollout.current(client, name, 1)
    started = promotion.next_event(client, name, "rollout-start", 1, 3, actor="alice", reason="canary 50%")  # A's
    assert rollout.stop(client, name, actor="bob").mode == "off"  # B's stop, whole, meanwhile
    stale = running.model_copy(update={"percent": 50, "event": started.key})
    client.set_registered_model_tag(name, ROLLOUT_TAG, stale.model_dump_json())  # A's state, saved last
    promotion.write(client, name, started)  # then A's event
    state = rollout.current(client, name, 1)
    assert state.mode == "off", state  # what replicas serve: Production alone, as the last change said
    assert state.reason.startswith("the saved rollout state is older than the trail's last rollout change "
                                   "(rollout-stop by bob at "), state.reason  # fmt: skip
    # A state an earlier release saved names no event: read as before.
    assert rollout.current(client, name, 1).mode == "off"
    client.set_registered_model_tag(name, ROLLOUT_TAG, stale.model_copy(update={"event": None}).model_dump_json())
    assert rollout.current(client, name, 1).mode == "canary"
