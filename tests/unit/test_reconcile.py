"""When is a Production alias that differs from the last recorded event an outside change?"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from churn_platform import promotion, registry
from churn_platform.cli import main
from churn_platform.errors import NotFoundError
from churn_platform.promotion import AUDIT_PREFIX, RACE_WINDOW_NS, Event
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train


@pytest.fixture()
def client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not a registry another test configured
    client.create_registered_model("m")
    (tmp_path / "MLmodel").write_text("flavors:\n  sklearn: {}\n")  # what a promotion reads of a version
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path))
    return client


def record(client: MlflowClient, ns: int, from_version: int | None, to_version: int) -> None:
    event = Event(f"{AUDIT_PREFIX}{ns:020d}-abcd", "2026-01-01T00:00:00.000+00:00", "promote",
                  from_version, to_version, "tester", "", "cli")  # fmt: skip
    promotion._write(client, "m", event)


def then_interrupted(step: Callable[..., None]) -> Callable[..., None]:
    """``step`` done, then Ctrl-C: as a request the server took before the press."""

    def run(*args: object) -> None:
        step(*args)
        raise KeyboardInterrupt

    return run


def externals(events: list[Event]) -> list[Event]:
    return [e for e in events if e.action == "external"]


def test_a_promotion_between_its_record_and_its_move_is_not_an_outside_change(client):
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns(), 1, 2)  # recorded just now; the alias has not moved yet
    assert externals(promotion.reconcile(client, "m")) == []


def test_a_revert_to_the_previous_version_outside_our_commands_is_recorded(client):
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    record(client, time.time_ns() - RACE_WINDOW_NS - 1, 1, 2)
    # v2 was promoted by us long enough ago; Production on v1 now is someone's rollback in the UI
    found = externals(promotion.reconcile(client, "m"))
    assert [(e.from_version, e.to_version) for e in found] == [(2, 1)]


def test_versions_never_credits_a_ui_rollback_to_whoever_last_promoted_that_version(client):
    """It read the trail without reconciling: v1 back in Production by someone in the UI
    was listed as promoted by the tester who had promoted v1 before."""
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    record(client, time.time_ns() - RACE_WINDOW_NS - 1, 1, 2)
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    production = next(v for v in promotion.versions(client, "m") if v.version == 1)
    assert (production.promoted_by, production.promoted_via) == ("unknown (outside churn-platform)", "external")


def test_a_hand_written_tag_under_the_audit_prefix_is_not_an_event(client):
    """promote and rollback crashed on it (exit 70), and history listed it as a promotion."""
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    client.set_registered_model_tag("m", f"{AUDIT_PREFIX}note", json.dumps({"at": "2026-01-01", "action": "promote",
                                                                             "to": 2}))  # fmt: skip
    client.set_registered_model_tag("m", f"{AUDIT_PREFIX}{1:020d}-abcd", json.dumps({"at": "2026-01-01",
                                                                                      "action": "promote", "to": "x"}))
    # JSON nested past the parser (exit 70 for every command), and a key far past any clock (every
    # later key had 21 digits, and no later event was read again).
    client.set_registered_model_tag("m", f"{AUDIT_PREFIX}{5:020d}-deep", "[" * 3000 + "]" * 3000)
    client.set_registered_model_tag("m", f"{AUDIT_PREFIX}{10**20 - 1}-note", json.dumps({
        "at": "2026-01-01", "action": "promote", "to": 1}))  # fmt: skip
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "2")  # moved in the UI
    assert [(e.action, e.to_version) for e in promotion.history(client, "m")] == [("external", 2), ("promote", 1)]
    assert promotion.rollback(client, "m", actor="me").to_version == 1
    assert [e.action for e in promotion.history(client, "m")] == ["rollback", "external", "promote"]


def test_a_promotion_stopped_by_ctrl_c_before_its_move_leaves_no_event(client, monkeypatch):
    """The event stayed: the trail showed a promotion that never happened, and `rollback`
    then moved Production to the version it named."""
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(promotion, "_move", interrupted)
    with pytest.raises(KeyboardInterrupt):
        promotion.promote(client, "m", 2, actor="me", force=True)
    assert [(e.action, e.to_version) for e in promotion.history(client, "m")] == [("promote", 1)]


def test_a_promotion_stopped_by_ctrl_c_while_its_event_is_written_leaves_no_event(client, monkeypatch):
    """The server may store a tag whose request was interrupted in flight."""
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    monkeypatch.setattr(promotion, "_write", then_interrupted(promotion._write))
    with pytest.raises(KeyboardInterrupt):
        promotion.promote(client, "m", 2, actor="me", force=True)
    monkeypatch.undo()
    assert [(e.action, e.to_version) for e in promotion.history(client, "m")] == [("promote", 1)]


def test_a_ctrl_c_after_the_alias_moved_says_so_and_marks_the_move_done(client, monkeypatch):
    """Told only "interrupted; nothing more was done", the operator ran `rollback` again and
    went a second step back: the move was made, its event left pending."""
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    monkeypatch.setattr(registry, "move_alias", then_interrupted(registry.move_alias))
    with pytest.raises(KeyboardInterrupt, match="interrupted, but Production had moved to v2: that move is done"):
        promotion.promote(client, "m", 2, actor="me", force=True)
    done = promotion.recorded_events(client, "m")  # pending ones left out
    assert [(e.action, e.to_version) for e in done] == [("promote", 1), ("promote", 2)]


def test_a_ctrl_c_after_the_move_whose_event_could_not_be_marked_done_says_it_is_pending(client, monkeypatch):
    from mlflow.exceptions import MlflowException

    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    write, writes = promotion._write, []

    def second_write_fails(*args: object) -> None:
        writes.append(args)
        if len(writes) > 1:  # the "done" mark, after the move
            raise MlflowException("API request failed: Connection refused")
        write(*args)

    monkeypatch.setattr(registry, "move_alias", then_interrupted(registry.move_alias))
    monkeypatch.setattr(promotion, "_write", second_write_fails)
    with pytest.raises(KeyboardInterrupt, match=r"moved to v2: that move is done \(its event is still pending"):
        promotion.promote(client, "m", 2, actor="me", force=True)
    monkeypatch.undo()
    assert [(e.action, e.to_version) for e in promotion.reconcile(client, "m")] == [("promote", 1), ("promote", 2)]


@pytest.mark.parametrize(("presses", "words"), [
    (1, "interrupted, but Production had moved to v2: that move is done, nothing after it"),
    (2, "interrupted, but Production had moved to v2: that move is done (its event is still pending: run "
        "`churn-platform status` within the hour"),
])  # fmt: skip
def test_ctrl_c_while_a_made_move_is_marked_done_says_the_move_is_made(client, monkeypatch, presses, words):
    """The last write (the event marked done) ran outside the guard: a Ctrl-C there said
    "interrupted; nothing more was done" with Production moved, and a retried rollback went a
    second step back."""
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    write = promotion._write

    def pressed_while_marked(client_, name, event):
        if not event.pending:  # the "done" mark, after the move
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)
        write(client_, name, event)

    monkeypatch.setattr(promotion, "_write", pressed_while_marked)
    with pytest.raises(KeyboardInterrupt, match=re.escape(words)):
        promotion.promote(client, "m", 2, actor="me", force=True)
    monkeypatch.undo()
    assert int(client.get_model_version_by_alias("m", registry.PRODUCTION_ALIAS).version) == 2
    assert [(e.action, e.to_version) for e in promotion.reconcile(client, "m")] == [("promote", 1), ("promote", 2)]


def test_a_ctrl_c_while_a_rollback_takes_challenger_off_says_the_rollback_is_made(client, monkeypatch):
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 3 * RACE_WINDOW_NS, None, 1)
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, 1, 2)
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "2")
    client.set_registered_model_alias("m", registry.CHALLENGER_ALIAS, "2")  # a promoted Challenger keeps it

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(MlflowClient, "delete_registered_model_alias", interrupted)
    with pytest.raises(KeyboardInterrupt, match=r"Production had moved to v1: that move is done; Challenger may still"):
        promotion.rollback(client, "m", actor="me")
    monkeypatch.undo()
    assert int(client.get_model_version_by_alias("m", registry.PRODUCTION_ALIAS).version) == 1


def test_rolling_back_to_the_version_whose_alias_was_removed_says_to_promote_it(client):
    """It read "v2 did not hold Production before v2 (no longer in Production)"."""
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 3 * RACE_WINDOW_NS, None, 1)
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, 1, 2)
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "2")
    client.delete_registered_model_alias("m", registry.PRODUCTION_ALIAS)
    with pytest.raises(NotFoundError, match=r"v2 is the version that last held Production \(v2 \(no longer in "
                                            r"Production\)\): nothing to roll back to; `promote --version 2`"):
        promotion.rollback(client, "m", actor="me", to=2)
    assert promotion.rollback(client, "m", actor="me", to=1).to_version == 1


def test_a_done_mark_whose_reply_was_lost_is_written_again(client, monkeypatch, caplog):
    """One failed write left the move pending: past the hour, `history` named it a change made
    outside churn-platform, its actor and reason lost."""
    from mlflow.exceptions import MlflowException

    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    write, failed = promotion._write, []

    def first_done_mark_fails(client_, name, event):
        if not event.pending and not failed:
            failed.append(event)
            raise MlflowException("API request failed: Read timed out")
        write(client_, name, event)

    monkeypatch.setattr(promotion, "_write", first_done_mark_fails)
    promotion.promote(client, "m", 2, actor="alice", reason="Q3 model", force=True)
    monkeypatch.undo()
    assert failed and "could not be marked done" not in caplog.text
    done = promotion.recorded_events(client, "m")  # pending ones left out
    assert [(e.action, e.to_version, e.actor) for e in done][-1] == ("promote", 2, "alice")


@pytest.mark.parametrize(("presses", "words"), [
    (1, "interrupted, but Production had moved to v2: that move is done, nothing after it"),
    (2, "interrupted before it was known whether Production moved: check `churn-platform status`"),
])  # fmt: skip
def test_ctrl_c_while_a_lost_reply_is_checked(client, monkeypatch, presses, words):
    """One press while the registry is asked whether a move whose reply was lost landed: the
    command went on (a rollback to its Challenger step) as if nobody had asked it to stop.
    A second one stopped it without a word of whether Production had moved."""
    from mlflow.exceptions import MlflowException

    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    move, current, lost = registry.move_alias, promotion._current, []

    def reply_lost(*args: object) -> None:
        move(*args)
        lost.append(True)
        raise MlflowException("API request failed: Connection reset by peer")

    def pressed_while_asked(*args: object) -> int | None:
        for _ in range(presses if lost else 0):  # once the move is made: the check after it
            signal.raise_signal(signal.SIGINT)
        return current(*args)

    monkeypatch.setattr(registry, "move_alias", reply_lost)
    monkeypatch.setattr(promotion, "_current", pressed_while_asked)
    with pytest.raises(KeyboardInterrupt, match=re.escape(words)):
        promotion.promote(client, "m", 2, actor="me", force=True)
    assert int(client.get_model_version_by_alias("m", registry.PRODUCTION_ALIAS).version) == 2


def test_one_more_ctrl_c_while_a_move_is_checked_is_told_to_wait_and_the_next_one_stops(caplog):
    with promotion._interrupts_held():
        signal.raise_signal(signal.SIGINT)  # noted
        assert "Ctrl-C again to stop at once" in caplog.text
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # the usual handler is back
        signal.raise_signal(signal.SIGINT)


def test_a_command_that_stalled_while_adopting_a_ui_promotion_does_not_undo_a_later_one(client, monkeypatch):
    """`status` read the UI's `production` on v2, stalled (a registry retrying), and meanwhile
    another command adopted it and promoted v1 again: the stalled one then set Production
    back on v2, which no event named."""
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    client.set_registered_model_alias("m", "production", "2")  # a promotion in the UI
    read, stalled = registry.version_by_alias, []

    def stalls_once(c, name, alias):
        found = read(c, name, alias)
        if alias == "production" and not stalled:
            stalled.append(alias)  # meanwhile, another command adopts v2 and promotes v1 again
            promotion.promote(client, "m", 1, actor="other", force=True)
        return found

    monkeypatch.setattr(registry, "version_by_alias", stalls_once)
    registry.adopt_ui_aliases(client, "m")
    monkeypatch.undo()
    assert int(client.get_model_version_by_alias("m", registry.PRODUCTION_ALIAS).version) == 1
    trail = [(e.action, e.to_version) for e in promotion.reconcile(client, "m")]
    assert trail[-2:] == [("external", 2), ("promote", 1)]  # the UI's move, then the other command's


def test_a_move_that_failed_with_the_registry_gone_is_no_move_even_when_its_event_stays(client, monkeypatch):
    """The registry went away between the event and the move, so the event could not be
    withdrawn: once the race window passed it read as v2 undone in the UI, and `rollback`
    moved Production to v2, which never served."""
    from mlflow.exceptions import MlflowException

    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 3 * RACE_WINDOW_NS, None, 1)

    def gone(*args: object) -> None:
        raise MlflowException("Connection refused", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(promotion, "_move", gone)
    monkeypatch.setattr(client, "delete_registered_model_tag", gone)
    event = Event(f"{AUDIT_PREFIX}{time.time_ns() - RACE_WINDOW_NS - 1:020d}-abcd", "t", "promote", 1, 2, "me", "",
                  "cli")  # fmt: skip
    with pytest.raises(MlflowException):
        promotion._record_then_move(client, "m", event)  # noqa: SLF001
    monkeypatch.undo()
    assert event.key in client.get_registered_model("m").tags  # stayed, pending
    assert [(e.action, e.to_version) for e in promotion.history(client, "m")] == [("promote", 1)]
    with pytest.raises(NotFoundError, match="no earlier Production version"):
        promotion.rollback(client, "m", actor="me")


def test_a_move_made_whose_event_was_not_marked_done_counts_once_the_alias_shows_it(client, monkeypatch):
    """Stopped (SIGKILL) or cut off from the registry after the move: the next command records it as ours."""
    from mlflow.exceptions import MlflowException

    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 3 * RACE_WINDOW_NS, None, 1)
    write, writes = promotion._write, []

    def second_fails(*args: object) -> None:
        writes.append(args)
        if len(writes) >= 2:  # the done mark, each of its tries
            raise MlflowException("Connection refused", error_code="TEMPORARILY_UNAVAILABLE")
        write(*args)

    monkeypatch.setattr(promotion, "_write", second_fails)
    result = promotion.promote(client, "m", 2, actor="me", force=True)
    monkeypatch.undo()
    assert result.changed and int(registry.production_version(client, "m").version) == 2
    assert json.loads(client.get_registered_model("m").tags[writes[0][2].key])["pending"] is True
    assert [(e.action, e.to_version, e.actor) for e in promotion.history(client, "m")] == [
        ("promote", 2, "me"), ("promote", 1, "tester")]  # fmt: skip
    assert "pending" not in json.loads(client.get_registered_model("m").tags[writes[0][2].key])
    assert promotion.rollback(client, "m", actor="me").to_version == 1


def test_a_move_still_under_way_past_the_race_window_is_not_an_outside_change(client):
    """A slow registry (10 s a request, retried) kept a promotion between its event and its
    move longer than the race window: readers recorded an outside change, then another."""
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 4 * RACE_WINDOW_NS, None, 1)
    pending = Event(f"{AUDIT_PREFIX}{time.time_ns() - 2 * RACE_WINDOW_NS:020d}-abcd", "t", "promote", 1, 2, "me", "",
                    "cli", pending=True)  # fmt: skip
    promotion._write(client, "m", pending)
    assert externals(promotion.reconcile(client, "m")) == []
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "2")  # the move lands
    assert [(e.action, e.to_version) for e in promotion.history(client, "m")] == [("promote", 2), ("promote", 1)]


def test_two_promotions_whose_moves_landed_in_the_other_order_are_no_outside_change(client):
    """A's event (v2) before B's (v3), B moved and said done, then A's move landed and A was
    stopped before it said done: A was dropped for its key and v3 -> v2 recorded as a UI change."""
    client.create_model_version("m", source="s")  # v3
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "2")
    record(client, time.time_ns() - 3 * RACE_WINDOW_NS, None, 1)
    now = time.time_ns() - RACE_WINDOW_NS - 1
    promotion._write(client, "m", Event(f"{AUDIT_PREFIX}{now:020d}-aaaa", "t", "promote", 1, 2, "a", "", "cli",
                                        pending=True))  # fmt: skip
    promotion._write(client, "m", Event(f"{AUDIT_PREFIX}{now + 10**9:020d}-bbbb", "t", "promote", 1, 3, "b", "",
                                        "cli"))  # fmt: skip
    assert [(e.action, e.to_version) for e in promotion.history(client, "m")] == [
        ("promote", 3), ("promote", 2), ("promote", 1)]  # fmt: skip
    assert promotion.rollback(client, "m", actor="me").to_version == 1


def test_a_ui_move_back_after_two_quick_promotions_is_recorded(client):
    """Two moves of ours seconds apart (1, then 1 -> 2) read as two promotions that raced, for
    good: the UI's move back to v1 an hour later was never recorded, `status` credited it to
    whoever promoted v1, and a rollout it ended ran again when Production came back."""
    an_hour_ago = time.time_ns() - 3600 * 10**9
    record(client, an_hour_ago, None, 1)
    record(client, an_hour_ago + 3 * 10**9, 1, 2)
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")  # in the UI, now
    latest = promotion.history(client, "m")[0]
    assert (latest.action, latest.from_version, latest.to_version) == ("external", 2, 1)


def test_a_failed_promotions_event_is_not_revived_by_a_ui_move_to_its_version_much_later(client):
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 3 * promotion.PENDING_FOR_NS, None, 1)
    promotion._write(client, "m", Event(f"{AUDIT_PREFIX}{time.time_ns() - 2 * promotion.PENDING_FOR_NS:020d}-abcd",
                                        "t", "promote", 1, 2, "alice", "", "cli", pending=True))  # fmt: skip
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "2")  # in the UI, hours later
    latest = promotion.history(client, "m")[0]
    assert (latest.action, latest.to_version, latest.actor) == ("external", 2, "unknown (outside churn-platform)")


def test_a_rollout_event_is_recorded_after_an_outside_move_it_follows(client):
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "2")  # moved in the UI
    promotion.write(client, "m", promotion.next_event(client, "m", "rollout-stop", None, None, actor="me", reason=""))
    assert [e.action for e in promotion.history(client, "m")] == ["rollout-stop", "external", "promote"]


def test_a_sigterm_between_the_record_and_the_move_waits_for_the_move(client, tmp_path):
    """A Job's deadline ended the process between the two: an event naming a move that
    never happened."""
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    script = textwrap.dedent(f"""
        import os, signal
        from mlflow import MlflowClient
        from churn_platform import promotion
        real = promotion._move
        def move(*args):
            os.kill(os.getpid(), signal.SIGTERM)  # the deadline, just after the event is written
            real(*args)
        promotion._move = move
        uri = {client.tracking_uri!r}
        promotion.promote(MlflowClient(uri, uri), "m", 2, actor="me", force=True)
        print("not killed")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGTERM, done.stdout + done.stderr
    assert int(registry.production_version(client, "m").version) == 2
    assert [(e.action, e.to_version) for e in promotion.history(client, "m")] == [("promote", 2), ("promote", 1)]


def test_an_outside_move_noticed_after_a_rollout_event_is_listed_after_it(client):
    """It was keyed after the last move, so `history` listed a rollout-start that named the
    replaced version as the newest event."""
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    promotion.write(client, "m", promotion.next_event(client, "m", "rollout-start", 1, 2, actor="me", reason="shadow"))
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "2")  # moved in the UI
    actions = [e.action for e in promotion.history(client, "m")]
    assert actions == ["external", "rollout-start", "promote"]


def test_a_version_deleted_between_the_record_and_the_move_is_not_found_and_leaves_no_event(client):
    client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, "1")
    record(client, time.time_ns() - 2 * RACE_WINDOW_NS, None, 1)
    client.delete_model_version("m", "2")  # after promote checked it, before the move
    event = Event(f"{AUDIT_PREFIX}{time.time_ns():020d}-abcd", "t", "promote", 1, 2, "me", "", "cli")
    with pytest.raises(NotFoundError, match=r"m version 2 was deleted \(or the model\) while it was being moved"):
        promotion._record_then_move(client, "m", event)  # noqa: SLF001
    assert [(e.action, e.to_version) for e in promotion.history(client, "m")] == [("promote", 1)]


def test_a_long_run_of_ui_changes_keeps_every_event_and_short_keys(client):
    """Each external key is named after the one before it; it must not grow with the run
    (MLflow refuses tag keys over 250 characters, which would stop every command)."""
    record(client, time.time_ns(), None, 1)
    for version in ["2", "1"] * 6:
        client.set_registered_model_alias("m", registry.PRODUCTION_ALIAS, version)
        promotion.reconcile(client, "m")
    found = externals(promotion.recorded_events(client, "m"))
    assert [e.to_version for e in found] == [2, 1] * 6
    assert len({len(e.key) for e in found}) == 1 and len(found[0].key) < 80


def test_a_challenger_trained_after_a_ui_promotion_keeps_its_alias(embedded, model_name):
    """The UI saves v2's aliases lower-case when it promotes v2 (`Challenger` becomes `challenger`);
    v3, trained afterwards, must stay the Challenger once a command adopts the UI's spelling."""
    config = TrainConfig(n_rows=600, model_name=model_name, seed=1)  # 150 validation rows: enough for a verdict
    v1 = train(config, get_settings())
    client = MlflowClient()
    client.create_model_version(model_name, source=client.get_model_version(model_name, "1").source)  # v2
    client.set_registered_model_alias(model_name, "Production", "1")
    client.set_registered_model_alias(model_name, "Challenger", "2")
    for alias in ("production", "challenger"):  # what saving `Production` on v2 in the UI leaves
        client.set_registered_model_alias(model_name, alias, "2")
    client.delete_registered_model_alias(model_name, "Challenger")
    v3 = train(config, get_settings())  # the same data as v2's model: it passes the gate against it
    assert (v1.version, v3.version) == (1, 3) and v3.gate.passed
    result = CliRunner().invoke(main, ["status", "--model-name", model_name, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout[result.stdout.index("{") :])
    assert (shown["production"]["version"], shown["challenger"]["version"]) == (2, 3)
    assert dict(client.get_registered_model(model_name).aliases) == {"Production": 2, "Challenger": 3}
