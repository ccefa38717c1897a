"""The rollback path derived from audit events (pure logic)."""

from __future__ import annotations

from dataclasses import replace

from churn_platform.promotion import AUDIT_PREFIX, Event, production_stack


def _events(*moves: tuple[str, int | None, int | None]) -> list[Event]:
    return [
        Event(f"{AUDIT_PREFIX}{i:020d}-x", "t", action, frm, to, "me", "", "cli")
        for i, (action, frm, to) in enumerate(moves, start=1)
    ]


def test_promotions_stack_and_rollbacks_pop():
    events = _events(("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3))
    assert production_stack(events, 3) == [1, 2, 3]
    events += _events(("rollback", 3, 2))
    events[-1] = replace(events[-1], key=f"{AUDIT_PREFIX}{99:020d}-y")
    assert production_stack(events, 2) == [1, 2]


def test_an_outside_change_is_a_step_rollback_can_undo():
    events = _events(("promote", None, 1), ("external", 1, 4))
    assert production_stack(events, 4) == [1, 4]


def test_an_outside_move_back_to_a_version_on_the_path_is_a_rollback_to_it():
    """A rollback in the UI (v4 back to v2) was a step forward: `rollback` then served v4 again."""
    events = _events(("promote", None, 1), ("promote", 1, 2), ("promote", 2, 4), ("external", 4, 2))
    assert production_stack(events, 2) == [1, 2]
    # Moving on from there: a new version is a step, and rollback comes back to 2, then 1.
    assert production_stack([*events, *_events(("promote", 2, 5))], 5) == [1, 2, 5]


def test_a_time_without_production_is_a_gap_in_the_path_not_its_end():
    """Removing the alias cleared the path: once it was back, `rollback` said the version
    in Production was the first in the audit trail."""
    events = _events(("promote", None, 1), ("promote", 1, 2), ("external", 2, None))
    assert production_stack(events, None) == [1, 2]
    assert production_stack([*events, *_events(("external", None, 2))], 2) == [1, 2]
    assert production_stack([*events, *_events(("promote", None, 3))], 3) == [1, 2, 3]


def test_after_a_race_the_path_ends_at_the_alias():
    events = _events(("promote", None, 1), ("promote", 1, 2), ("promote", 1, 3))
    assert production_stack(events, 2) == [1, 2]
    # The alias on the later event's version: the earlier one lost, and never served as far as
    # either command knew (`rollback` went to it, not back to 1, the version both replaced).
    assert production_stack(events, 3) == [1, 3]
    assert production_stack([*events, *_events(("promote", 3, 4))], 4) == [1, 3, 4]
    # The next promotion goes on from the winner, whichever it was: not from the loser's branch.
    assert production_stack([*events, *_events(("promote", 2, 4))], 4) == [1, 2, 4]
    # A race won by a version that held Production before keeps the path it had: rollback
    # from 2 goes to 3, which both racers replaced (cut at 2's first place, the path was [1, 2]).
    won_by_earlier = _events(("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3), ("promote", 3, 2),
                             ("promote", 3, 4))  # fmt: skip
    assert production_stack(won_by_earlier, 2) == [1, 2, 3, 2]
    assert production_stack(won_by_earlier, 4) == [1, 2, 3, 4]
    back_to_1 = _events(("promote", None, 1), ("promote", 1, 2), ("promote", 2, 1), ("promote", 2, 3))
    assert production_stack(back_to_1, 1) == [1, 2, 1]
    # A version promoted again later is no race: 1 -> 2 -> 1 -> 3 keeps its path.
    again = _events(("promote", None, 1), ("promote", 1, 2), ("promote", 2, 1), ("promote", 1, 3))
    assert production_stack(again, 3) == [1, 2, 1, 3]
