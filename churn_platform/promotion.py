"""Promote, roll back and inspect the ``Production`` alias, with an audit trail in the registry.

Every change of ``Production`` made through these functions is recorded as an event in a
tag of its own on the registered model (``churn_platform.audit.<ns>-<random>``). Unique
keys mean racing writers never overwrite each other's records, and any machine that can
read the registry sees the same history; nothing is kept on the client.

A change made elsewhere (the MLflow UI, the REST API) leaves no event. It is detected
when the alias no longer matches the latest recorded event, and recorded as an
``external`` event with a key derived from that latest event, so that detecting it twice
writes the same tag instead of a second record.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict

from churn_platform import gate, registry
from churn_platform.contract import (
    AUDIT_TAG_PREFIX,
    CHALLENGER_ALIAS,
    GATE_METRIC,
    HEADLINE_METRICS,
    PRODUCTION_ALIAS,
    TAG_DATA_DIGEST,
    TAG_ROC_AUC,
    VALIDATION_ROWS,
)
from churn_platform.errors import GateRefused, NotFoundError, SettingsError
from churn_platform.gate import GateVerdict

log = logging.getLogger(__name__)

AUDIT_PREFIX = AUDIT_TAG_PREFIX
#: Events that move the Production alias; the audit trail also holds rollout events, which
#: ``history`` shows but the alias bookkeeping (reconcile, rollback path) must ignore.
MOVES = frozenset({"promote", "rollback", "external"})
#: Events this close to the latest one count as one race, not an outside change.
RACE_WINDOW_NS = 10 * 1_000_000_000
#: How long a pending move may wait for its alias, by the machines' clocks (keys are their
#: times): far beyond the registry's timeouts and retries at their defaults (about a minute
#: for a promotion's requests), short of a UI move to the same version long after a failed one.
PENDING_FOR_NS = 3600 * 1_000_000_000


@dataclass(frozen=True)
class Event:
    """One move of the ``Production`` alias."""

    key: str
    at: str
    action: str  # promote | rollback | external
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    via: str  # cli | external
    #: Written before the alias moves, rewritten without it after: until then it counts only
    #: once the alias is on its version (a move that failed and could not withdraw its event
    #: was taken for a move undone in the UI, and `rollback` went to a version never served).
    pending: bool = False

    @property
    def ns(self) -> int:
        return int(self.key[len(AUDIT_PREFIX) :].split("-", 1)[0])

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("key")
        out["from"] = out.pop("from_version")
        out["to"] = out.pop("to_version")
        if not out["pending"]:  # written only while true: a done event reads as an earlier release's did
            out.pop("pending")
        return out


def _now_key(events: list[Event]) -> tuple[str, str]:
    """A new event's key, after every recorded one, and its time by this machine's clock.

    Keys order the trail, and each command's clock made them: one run from a laptop two
    minutes slow sorted before the events it followed, so the alias looked moved from outside
    and a rollback then walked back to the version just rolled back from. The key is never
    earlier than the latest event's; ``at`` still says what this clock said.
    """
    clock = time.time_ns()
    ns = max(clock, max((e.ns for e in events), default=0) + 1)
    at = datetime.fromtimestamp(clock / 1e9, tz=UTC).isoformat(timespec="milliseconds")
    return f"{AUDIT_PREFIX}{ns:020d}-{secrets.token_hex(4)}", at


def default_actor() -> str:
    given = os.environ.get("CHURN_ACTOR") or _os_user()
    try:  # a byte in another locale's encoding arrives as a lone surrogate, which no registry stores
        given.encode("utf-8")
    except UnicodeEncodeError:
        raise SettingsError("CHURN_ACTOR: is not valid UTF-8 text (typed in another encoding?)") from None
    # One line without control characters, as --actor: `history` prints it as it is.
    user = " ".join("".join(c for c in given if c.isprintable() or c.isspace()).split())[:200]
    return f"{user}@{socket.gethostname()}"


def _os_user() -> str:
    """The login name; a container run as a UID with no passwd entry (OpenShift's random UIDs)
    has none, and getpass raised KeyError there: a traceback for every promote without --actor."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


#: An event's key: its time in nanoseconds (ordering the trail), then a random or derived suffix.
_EVENT_KEY = re.compile(rf"{re.escape(AUDIT_PREFIX)}\d{{20}}-[0-9a-z]+")


def _version_or_none(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise TypeError(f"not a version: {value!r}")


#: A key this far past now is no machine's clock but a hand-made tag: taken for the latest event,
#: it would key every later one past the 20 digits keys have, and those were never read again.
_KEY_AHEAD_NS = 365 * 86400 * 1_000_000_000


def _parse(key: str, value: str) -> Event | None:
    if not _EVENT_KEY.fullmatch(key):
        return None  # a tag someone wrote by hand under the prefix: promote and rollback crashed on it
    if int(key[len(AUDIT_PREFIX) :].split("-", 1)[0]) > time.time_ns() + _KEY_AHEAD_NS:
        return None
    try:
        raw = json.loads(value)
        return Event(
            key=key,
            at=str(raw["at"]),
            action=str(raw["action"]),
            from_version=_version_or_none(raw.get("from")),
            to_version=_version_or_none(raw.get("to")),
            actor=str(raw.get("actor", "unknown")),
            reason=str(raw.get("reason", "")),
            via=str(raw.get("via", "unknown")),
            pending=raw.get("pending") is True,
        )
    except (ValueError, KeyError, TypeError, RecursionError):  # JSON nested past the parser: exit 70 everywhere
        return None  # a foreign or damaged tag is not an event; it is never rewritten


def events_in(tags: Mapping[str, str], *, pending: bool = False) -> list[Event]:
    """The events among a registered model's tags, oldest first; moves still pending (their
    command has not moved the alias, may never) only when asked: ``reconcile`` settles them."""
    events = [_parse(k, v) for k, v in tags.items() if k.startswith(AUDIT_PREFIX)]
    return sorted((e for e in events if e is not None and (pending or not e.pending)), key=lambda e: e.key)


def recorded_events(client: MlflowClient, name: str, *, pending: bool = False) -> list[Event]:
    """Recorded events, oldest first (pending moves only when asked, as ``events_in``)."""
    return events_in(registry.get_model(client, name).tags, pending=pending)


def _current(client: MlflowClient, name: str) -> int | None:
    """The version the API serves: the UI's ``production`` first, until it is adopted."""
    version = registry.production_version(client, name)
    return int(version.version) if version else None


def _read_only(exc: MlflowException, what: str) -> bool:
    """Whether ``exc`` is the registry refusing a user who may read but not edit the model:
    a read-only on-call user still gets ``status`` and ``history``, with this said once."""
    if exc.error_code != "PERMISSION_DENIED":
        return False
    log.warning("not %s: this user may read the model but not edit it (MLflow permission EDIT); "
                "showing the registry as it is", what)  # fmt: skip
    return True


def next_event(
    client: MlflowClient,
    name: str,
    action: str,
    from_version: int | None,
    to_version: int | None,
    *,
    actor: str | None,
    reason: str,
) -> Event:
    """An audit event that does not move Production (a rollout change), keyed after every
    recorded one but not written: the caller saves what it announces first, then ``write``s it."""
    if action in MOVES:
        raise ValueError(f"{action!r} moves Production: use promote or rollback")
    # Reconciled first: a move made outside is recorded before this event, so every command
    # that notices it keys it after the same event.
    key, at = _now_key(reconcile(client, name))
    return Event(key, at, action, from_version, to_version, actor or default_actor(), reason, "cli")


def write(client: MlflowClient, name: str, event: Event) -> None:
    """Add ``event`` to the trail ``history`` shows."""
    _write(client, name, event)


def current_production(client: MlflowClient, name: str) -> int | None:
    """The version holding Production (after adopting a UI promotion)."""
    reconcile(client, name)
    return _current(client, name)


def _write(client: MlflowClient, name: str, event: Event) -> None:
    # Not ASCII-escaped: a reason in Cyrillic would take six characters a letter of the 5000 the
    # registry's tag column holds on PostgreSQL and MySQL.
    client.set_registered_model_tag(name, event.key, json.dumps(event.to_json(), sort_keys=True, ensure_ascii=False))


def reconcile(client: MlflowClient, name: str) -> list[Event]:
    """Events, with an ``external`` one recorded if the alias moved outside our commands.

    The alias is read before the events. Our commands record before they move, so every
    move this read can see was recorded before the events are read; in the other order a
    command moving the alias between the two reads would look like an outside change.
    """
    try:
        registry.adopt_ui_aliases(client, name)
    except MlflowException as exc:
        if not _read_only(exc, "giving the UI's aliases their canonical spelling"):
            raise
    current = _current(client, name)
    recorded = _settled(client, name, recorded_events(client, name, pending=True), current)
    events = [e for e in recorded if e.action in MOVES]
    if not events:
        if current is None:
            return recorded
    else:
        last = events[-1]
        if current == last.to_version:
            return recorded
        # Only our own commands race. An external event is keyed just after the event before
        # it, not by the time it was noticed: counting it here would hide a change undone in
        # the UI (v1 -> v2 -> v1) for good.
        if last.via == "cli":
            recent = [e for e in events if e.via == "cli" and e.ns >= last.ns - RACE_WINDOW_NS]
            # Racers read the same Production (as ``production_stack`` has it): two moves one after
            # the other (1, then 1 -> 5) are no race, and a UI move back to 1 hours later was
            # never recorded, a rollout it ended running again when Production came back.
            raced = {e.to_version for e in recent if e.from_version == last.from_version}
            if current is not None and current in raced:
                return recorded  # two of our own promotions raced; both are recorded
            if time.time_ns() - last.ns < RACE_WINDOW_NS and current in {e.from_version for e in recent}:
                return recorded  # a command has just recorded its event and is about to move the alias
    # After the latest event of any kind: a rollout command reconciles before it records, so a
    # move noticed now came after its event (keyed after the last move, `history` listed it
    # before a rollout-start that named the version it had replaced).
    last_ns, last_key = (recorded[-1].ns, recorded[-1].key) if recorded else (0, "initial")
    # Deterministic key: just after the last recorded event, named after it and the alias (by a
    # hash, so a long run of UI changes never outgrows MLflow's 250-character tag keys).
    digest = hashlib.sha256(f"{last_key}:{current or 0}".encode()).hexdigest()[:12]
    key = f"{AUDIT_PREFIX}{last_ns + 1:020d}-ext{digest}"
    event = Event(
        key=key,
        at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        action="external",
        from_version=events[-1].to_version if events else None,
        to_version=current,
        actor="unknown (outside churn-platform)",
        reason=("Production alias changed outside churn-platform (MLflow UI or API); the time is when it was noticed"),
        via="external",
    )
    try:
        _write(client, name, event)
    except MlflowException as exc:
        # Another command noticing the same change wrote this key a moment ago (its insert
        # won the race for the key); the change is recorded either way.
        if key not in registry.get_model(client, name).tags and not _read_only(exc, "recording the outside change"):
            raise
    return sorted([*recorded, event], key=lambda e: e.key)


def landed_move(recorded: list[Event], current: int | None) -> Event | None:
    """The pending move whose alias landed on ``current``, by ``_settled``'s rule; None if none."""
    last_done = max((e.ns for e in recorded if not e.pending and e.action in MOVES), default=0)
    since = max(last_done - RACE_WINDOW_NS, time.time_ns() - PENDING_FOR_NS)
    landed = [e for e in recorded if e.pending and e.ns > since and e.to_version == current]
    return landed[-1] if current is not None and landed else None


def _settled(client: MlflowClient, name: str, recorded: list[Event], current: int | None) -> list[Event]:
    """``recorded`` without pending moves, but for the latest one that names the version the
    alias is on, recorded after the last done move (or racing it, within ``RACE_WINDOW_NS``:
    two promotions whose moves landed in the other order than their events) and within
    ``PENDING_FOR_NS`` of now: its command moved the alias and was stopped (or lost the
    registry) before it said so; it is rewritten as done. Any other pending move is a command
    still under way, or one that failed and could not withdraw its event: not a move, and past
    ``PENDING_FOR_NS`` never one (a UI move to its version days later is not its doing)."""
    done = [e for e in recorded if not e.pending]
    if (move := landed_move(recorded, current)) is None:
        return done
    event = replace(move, pending=False)
    try:
        _write(client, name, event)
    except MlflowException as exc:
        if not _read_only(exc, "recording a move its command made"):
            raise
    return sorted([*done, event], key=lambda e: e.key)


def production_stack(events: list[Event], current: int | None) -> list[int]:
    """Versions that held Production, oldest first, ending with ``current``.

    This is the path rollbacks walk back along: a rollback pops back to its target, and so
    does a move made outside (the UI) to a version already on the path: taken for a step
    forward, a UI rollback from v4 to v2 had `rollback` serve v4 again. A time without
    Production (its alias removed, its version deleted) is a gap in the path, not its end:
    clearing it there lost every version before from ``rollback``. Two promotions that raced
    (each saw the same version in Production: every command reconciles, then records what it
    saw) are two branches from that version, and the path is the one whose version the alias
    rests on: on one line, `rollback` from the winner went to the loser, which never served.
    """
    stack: list[int] = []
    paths: dict[int, list[int]] = {}  # each version's path when it last became the top
    for event in (e for e in events if e.action in MOVES):
        if event.action == "rollback" or (event.action == "external" and event.to_version in stack):
            while stack and stack[-1] != event.to_version:
                stack.pop()
            if not stack and event.to_version is not None:
                stack.append(event.to_version)
        elif event.to_version is None:
            continue
        else:
            if event.via == "cli" and stack and event.from_version != stack[-1] and event.from_version in paths:
                stack = list(paths[event.from_version])  # it raced the moves after the version it saw
            if not stack or stack[-1] != event.to_version:
                stack.append(event.to_version)
        if stack:
            paths[stack[-1]] = list(stack)
    # After a race the alias may rest on an earlier event's version, or on a branch a later
    # racing event left: its path is the one it had when it last took Production.
    return list(paths[current]) if current in paths else stack


def _gate(
    client: MlflowClient, name: str, candidate: ModelVersion, current: int | None, tolerance: float
) -> GateVerdict:
    """Like for like when training scored today's Production on the candidate's validation
    rows: after a concept change every model scores lower on recent rows, so a retrained
    version that beat Production there was refused against Production's own older figure.
    Otherwise each version's own validation figure. Never synthetic over real."""
    production = registry.get_version(client, name, current) if current is not None else None
    if production is not None and current is not None:
        refused = gate.synthetic_over_real(candidate.tags, production.tags, current, tolerance=tolerance,
                                           compared_on="the versions' training data")  # fmt: skip
        if refused:
            return refused
    own = _metrics(client, candidate, gate=True)
    rows = own.get(VALIDATION_ROWS)
    if current is not None and rows is not None and (few := gate.too_few(
        int(rows), None, current, tolerance=tolerance, compared_on=f"v{candidate.version}'s validation rows"
    )):  # fmt: skip
        return few  # a figure from 20 rows "beat" Production's from a thousand (recorded ones too: an older release's)
    figures = gate.recorded_figures(candidate.tags)  # edited by hand: the figures each version recorded decide
    if figures is not None and current is not None and figures.production_version == current:
        return gate.compare(figures.candidate, figures.production, production_version=current, tolerance=tolerance,
                            compared_on=f"{figures.compared_on} (both scored when v{candidate.version} was trained)")
    return gate.compare(
        own.get(GATE_METRIC),
        _metrics(client, production, gate=True).get(GATE_METRIC) if production else None,
        production_version=current,
        tolerance=tolerance,
        compared_on="each version's own validation rows (recorded at training)",
    )


def _metrics(client: MlflowClient, version: ModelVersion, *, gate: bool = False) -> dict[str, float]:
    """The version's headline figures. For the ``gate``, only a run that is gone reads as no
    figure: a registry away (or a run this user may not read) passed "not checked" unseen."""
    try:
        run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    except MlflowException as exc:
        if gate and not registry.is_missing(exc):
            raise
        run_metrics = {}  # `status` shows what it can (a user without READ on the runs' experiment)
    wanted = (*HEADLINE_METRICS, VALIDATION_ROWS) if gate else HEADLINE_METRICS  # the gate: on how many rows
    metrics = {k: run_metrics[k] for k in wanted if k in run_metrics}
    if GATE_METRIC not in metrics and TAG_ROC_AUC in version.tags:
        try:
            metrics[GATE_METRIC] = float(version.tags[TAG_ROC_AUC])
        except ValueError:  # a tag typed by hand ("0.91 (holdout)"): no figure, as if untagged
            log.warning("v%s: its %s tag %r is not a number; ignored", version.version, TAG_ROC_AUC,
                        version.tags[TAG_ROC_AUC][:50])  # fmt: skip
    return metrics


class VersionInfo(BaseModel):
    """One registered version as the CLI shows it."""

    model_config = ConfigDict(frozen=True)

    version: int
    run_id: str | None
    status: str
    aliases: list[str]
    metrics: dict[str, float]
    data_digest: str | None
    created_at: str
    #: Set for the Production version: the audit event that put it there.
    promoted_at: str | None = None
    promoted_by: str | None = None
    promoted_via: str | None = None


class Status(BaseModel):
    """What holds Production and Challenger."""

    model_config = ConfigDict(frozen=True)

    model: str
    production: VersionInfo | None
    challenger: VersionInfo | None


class PromotionResult(BaseModel):
    """What a promote or rollback did. ``from``/``to`` are the JSON names of the versions."""

    model_config = ConfigDict(frozen=True)

    changed: bool
    from_version: int | None
    to_version: int
    message: str
    gate: GateVerdict | None = None
    event: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", by_alias=True)
        out["from"] = out.pop("from_version")
        out["to"] = out.pop("to_version")
        return out


def describe(client: MlflowClient, version: ModelVersion, aliases: list[str]) -> VersionInfo:
    return VersionInfo(
        version=int(version.version),
        run_id=version.run_id,
        status=version.status,
        aliases=aliases,
        metrics=_metrics(client, version),
        data_digest=version.tags.get(TAG_DATA_DIGEST),
        created_at=datetime.fromtimestamp(version.creation_timestamp / 1000, tz=UTC).isoformat(timespec="seconds"),
    )


def _aliases_by_version(client: MlflowClient, name: str) -> dict[int, list[str]]:
    # search_model_versions returns empty aliases on SQL backends: read them from the model.
    out: dict[int, list[str]] = {}
    for alias, version in registry.get_model(client, name).aliases.items():
        out.setdefault(int(version), []).append(alias)
    return out


def status(client: MlflowClient, name: str) -> Status:
    events = reconcile(client, name)
    aliases = _aliases_by_version(client, name)
    found: dict[str, VersionInfo | None] = {}
    for alias in (PRODUCTION_ALIAS, CHALLENGER_ALIAS):
        version = registry.aliased(client, name, alias)  # a read-only user's reconcile adopts nothing
        if version is None:
            found[alias] = None
            continue
        info = describe(client, version, aliases.get(int(version.version), []))
        found[alias] = _with_promotion(info, events) if alias == PRODUCTION_ALIAS else info
    return Status(model=name, production=found[PRODUCTION_ALIAS], challenger=found[CHALLENGER_ALIAS])


def _with_promotion(info: VersionInfo, events: list[Event]) -> VersionInfo:
    """``info`` with who put its version in Production, and when and how (the latest such move)."""
    moves = (e for e in reversed(events) if e.action in MOVES)
    promoted = next((e for e in moves if e.to_version == info.version), None)
    if promoted is None:
        return info
    return info.model_copy(update={"promoted_at": promoted.at, "promoted_by": promoted.actor,
                                   "promoted_via": promoted.via})  # fmt: skip


def versions(client: MlflowClient, name: str) -> list[VersionInfo]:
    """Every version, newest first; the Production one with its promotion (as ``status``)."""
    events = reconcile(client, name)  # a move in the UI since our last one is nobody's we know
    aliases = _aliases_by_version(client, name)
    found = client.search_model_versions(f"name = {registry.quoted(name)}")
    ordered = sorted(found, key=lambda v: int(v.version), reverse=True)
    described = (describe(client, v, aliases.get(int(v.version), [])) for v in ordered)
    return [_with_promotion(v, events) if PRODUCTION_ALIAS in v.aliases else v for v in described]


def history(client: MlflowClient, name: str, limit: int | None = None) -> list[Event]:
    """Events, newest first."""
    events = list(reversed(reconcile(client, name)))
    return events[:limit] if limit else events


def ready_version(client: MlflowClient, name: str, version: int) -> ModelVersion:
    """``version`` of ``name`` if it exists, is READY and would load (``loading.check_servable``):
    promoting one whose artifacts were gone, or whose threshold tag was edited to text, exited
    0, and only the replicas' failed loads and an alert said so."""
    from churn_platform import loading  # sklearn and the scorer come with it: only when an alias moves

    registry.get_model(client, name)
    found = registry.get_version(client, name, version)
    if found.status != "READY":
        raise NotFoundError(f"{name} version {version} is {found.status}, not READY; it cannot serve")
    try:
        loading.check_servable(client, found)
    except (loading.ModelUnloadable, loading.VerificationFailed) as exc:  # as if deleted: callers add the way out
        raise NotFoundError(f"{exc}; it cannot serve") from exc
    return found


def _move(client: MlflowClient, name: str, version: int) -> None:
    for attempt in range(3):  # a first alias insert can race another writer's; then it is an update
        try:
            registry.move_alias(client, name, PRODUCTION_ALIAS, version)
            return
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):  # no retry mends it (it was exit 70)
                raise NotFoundError(f"{name} version {version} was deleted (or the model) while it was being "
                                    f"moved to {PRODUCTION_ALIAS}; nothing changed") from None  # fmt: skip
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def _record_then_move(client: MlflowClient, name: str, event: Event) -> None:
    """Write the event first, pending, then move the alias, then mark the event done.

    In this order a racing command can never see the alias on a version that no event
    names, which it would otherwise take for a change made outside churn-platform. If the
    move fails or is interrupted (Ctrl-C), the event is withdrawn unless the alias moved
    after all (then it is marked done, and an interrupt says the move is made): a promotion
    that never happened stayed in the trail, and ``rollback`` then moved Production to the
    version it named. Should the withdrawal fail too (the registry gone), the event stays
    pending, which is no move (``_settled``). A SIGTERM (a Job's deadline) waits for the
    pair to finish: a default SIGTERM would end the process between the two.
    """
    with sigterm_deferred():
        try:
            _write(client, name, replace(event, pending=True))  # interrupted in flight, it may be stored
            _move(client, name, event.to_version)
        except BaseException as exc:
            moved = recorded = known = False
            interrupted = isinstance(exc, KeyboardInterrupt)
            # One more Ctrl-C is told to wait: this tells whether the move landed. The next stops.
            with _interrupts_held() as presses:
                try:
                    with contextlib.suppress(Exception):  # unreachable now: the original error says so
                        moved = _current(client, name) == event.to_version
                        known = True
                        if not moved:  # left pending if this fails too, and pending it is no move
                            client.delete_registered_model_tag(name, event.key)
                    interrupted = interrupted or bool(presses)
                    if moved and interrupted:  # marked done here: "nothing more was done" had a retry go further
                        with contextlib.suppress(Exception):
                            _write(client, name, event)
                            recorded = True
                except KeyboardInterrupt:  # the press after the one told to wait
                    if not known:
                        raise KeyboardInterrupt("interrupted before it was known whether Production moved: check "
                                                "`churn-platform status` before running this again") from None
                    if not moved:
                        raise
                    interrupted = True
            if not moved or not (interrupted or isinstance(exc, Exception)):  # a SystemExit goes on as it was
                raise
            if interrupted:
                pending = "" if recorded else _STILL_PENDING
                raise KeyboardInterrupt(f"interrupted, but Production had moved to v{event.to_version}: that move "
                                        f"is done{pending}, nothing after it") from None  # fmt: skip
            # The reply was lost, not the move: reported as a failure, a retried rollback went a second step back.
            log.warning("the registry answered %s, but Production is on v%s: done", type(exc).__name__,
                        event.to_version)  # fmt: skip
        # The move is made: a Ctrl-C from here said "nothing more was done", and a retried
        # rollback marked this one done, then went a second step back.
        with _interrupts_held(f"marking the move to v{event.to_version} done before stopping") as presses:
            try:
                for attempt in range(3):  # idempotent: one lost reply must not leave it pending
                    try:
                        _write(client, name, event)  # done
                        break
                    except Exception:
                        if attempt == 2:
                            raise
                        time.sleep(0.2 * (attempt + 1))
            except KeyboardInterrupt:  # the press after the one told to wait
                raise KeyboardInterrupt(f"interrupted, but Production had moved to v{event.to_version}: that move "
                                        f"is done{_STILL_PENDING}, nothing after it") from None  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the move is made; a command within the hour records it
                # Past the hour a pending move is no longer credited (a UI move to its version days
                # later is not its doing): it would read as a change made outside churn-platform.
                log.warning("Production is on v%s, but its event could not be marked done (%s)%s",
                            event.to_version, type(exc).__name__, _STILL_PENDING)  # fmt: skip
            if presses:
                raise KeyboardInterrupt(f"interrupted, but Production had moved to v{event.to_version}: that move "
                                        "is done, nothing after it")  # fmt: skip


#: What a move whose event is still pending asks of its user.
_STILL_PENDING = (" (its event is still pending: run `churn-platform status` within the hour to record it under "
                  "this command's actor and reason; later it reads as a change made outside churn-platform)")


@contextlib.contextmanager
def _interrupts_held(doing: str = "checking whether Production moved before stopping") -> Iterator[list[int]]:
    """One more Ctrl-C in the block says what is being finished (``doing``) instead of stopping
    it (the presses are yielded); the next one stops at once (a registry that hangs must not
    hold the terminal)."""
    presses: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield presses
        return

    def pressed(signum: int, frame: object) -> None:
        presses.append(signum)
        if len(presses) > 1:
            raise KeyboardInterrupt
        log.warning("%s; Ctrl-C again to stop at once", doing)

    previous = signal.signal(signal.SIGINT, pressed)
    try:
        yield presses
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


@contextlib.contextmanager
def sigterm_deferred() -> Iterator[None]:
    """A SIGTERM met in the block ends the process once the block is done (a Python handler
    notes it: blocking the signal would not do, numpy's native threads would take it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
        if received:
            signal.raise_signal(signal.SIGTERM)  # as it would have been handled: by default, exit 143


def promote(
    client: MlflowClient,
    name: str,
    version: int,
    *,
    reason: str = "",
    actor: str | None = None,
    force: bool = False,
    tolerance: float = 0.005,
) -> PromotionResult:
    """Move Production to ``version`` unless the gate refuses (``_gate``: the training gate's
    like-for-like figures while their Production holds, else each version's own figure)."""
    candidate = ready_version(client, name, version)
    events = reconcile(client, name)
    current = _current(client, name)
    if current == version:
        return PromotionResult(changed=False, from_version=current, to_version=version,
                               message=f"v{version} is already in Production")  # fmt: skip
    verdict = _gate(client, name, candidate, current, tolerance)
    if not verdict.passed and not force:
        advice = "" if "--force" in verdict.reason else "; use --force to promote anyway"  # said once, not twice
        raise GateRefused(f"refused: v{version} {verdict.reason}{advice}")
    key, at = _now_key(events)
    forced = " [forced past gate]" if not verdict.passed else ""
    event = Event(key, at, "promote", current, version, actor or default_actor(), (reason + forced).strip(), "cli")
    _record_then_move(client, name, event)
    return PromotionResult(changed=True, from_version=current, to_version=version, gate=verdict,
                           event=event.to_json(), message=f"Production: v{current or '-'} -> v{version}")  # fmt: skip


def _promote_advice(client: MlflowClient, name: str, version: int, does: str) -> str:
    """`promote --version N` as the way out, unless N was deleted since (the advice named it)."""
    try:
        registry.get_version(client, name, version)
    except NotFoundError:
        return f"v{version} has been deleted since"
    return f"`promote --version {version}` {does}"


def rollback(
    client: MlflowClient,
    name: str,
    *,
    to: int | None = None,
    reason: str = "",
    actor: str | None = None,
) -> PromotionResult:
    """Move Production back to the version that held it before the current one."""
    registry.get_model(client, name)
    events = reconcile(client, name)
    current = _current(client, name)
    latest, path = current, events
    if current is None:
        # The alias went with its version (a bad version deleted): back along the path it ended,
        # whether its removal is recorded yet or not.
        moves = [e for e in events if e.action in MOVES]
        last = moves[-1] if moves else None
        if last is not None and last.to_version is None and last.from_version is not None:
            latest, path = last.from_version, [e for e in events if e.key < last.key]
        elif last is not None and last.to_version is not None:
            latest = last.to_version
        else:
            raise NotFoundError(f"no version of {name!r} holds {PRODUCTION_ALIAS}; nothing to roll back")
    if to is not None and to == current:  # a rollback event would also end a rollout nothing moved
        return PromotionResult(changed=False, from_version=current, to_version=to,
                               message=f"v{to} is already in Production")  # fmt: skip
    stack = production_stack(path, latest)
    earlier = stack[:-1] if stack and stack[-1] == latest else stack
    was = f"v{latest}" if current is not None else f"v{latest} (no longer in Production)"
    if to is None:
        if not earlier:
            raise NotFoundError(
                f"no earlier Production version of {name!r} to roll back to ({was} is the first "
                "in the audit trail); nothing changed"
            )
        target = earlier[-1]
    else:
        if to == latest:  # "v2 did not hold Production before v2" when its alias had been removed
            raise NotFoundError(f"v{to} is the version that last held Production ({was}): nothing to roll back "
                                f"to; {_promote_advice(client, name, to, 'puts it back')} "
                                f"(earlier: {earlier or 'none'})")  # fmt: skip
        if to not in earlier:
            if any(e.to_version == to for e in path if e.action in MOVES):  # rolled back from, say
                raise NotFoundError(
                    f"v{to} is not on the way back from {was} (earlier on it: {earlier or 'none'}): a version "
                    f"rolled back from, or whose promotion lost a race, leaves it; "
                    f"{_promote_advice(client, name, to, 'moves Production to it')}"
                )
            raise NotFoundError(
                f"v{to} did not hold Production before {was} (earlier: {earlier or 'none'}); "
                "use promote to move Production to a version that never held it"
            )
        target = to
    try:
        ready_version(client, name, target)
    except NotFoundError as exc:  # deleted since (a bad version's usual fate): say which, and the way out
        others = [v for v in earlier if v != target]
        raise NotFoundError(f"cannot roll back to v{target}, which held Production before {was}: {exc}; "
                            f"roll back to another with --to (earlier: {others or 'none'})") from None  # fmt: skip
    key, at = _now_key(events)
    event = Event(key, at, "rollback", current, target, actor or default_actor(), reason, "cli")
    _record_then_move(client, name, event)
    message = f"Production rolled back: v{current or '-'} -> v{target}"
    if current is not None:
        try:
            message += _withdraw_challenger(client, name, current)
        except KeyboardInterrupt:  # "nothing more was done" had a retry roll back a second step
            raise KeyboardInterrupt(f"interrupted, but Production had moved to v{target}: that move is done; "
                                    f"{CHALLENGER_ALIAS} may still be on v{current} (see `status`)") from None
    return PromotionResult(changed=True, from_version=current, to_version=target, event=event.to_json(),
                           message=message)  # fmt: skip


def _withdraw_challenger(client: MlflowClient, name: str, version: int) -> str:
    """Take ``Challenger`` off the version just rolled back from (a promoted Challenger keeps
    the alias): left there, the next `rollout start` served it again by default, and its gate
    figures, measured against the Production now back, passed `rollout promote`. What was done,
    for the rollback's message: the rollback itself has happened, whatever this says."""
    for alias in (CHALLENGER_ALIAS, CHALLENGER_ALIAS.lower()):
        try:
            held = registry.version_by_alias(client, name, alias)
        except Exception as exc:  # noqa: BLE001 - the registry went away: exit 3 here made a retry roll back again
            log.warning("could not check whether %s is on v%s: %s", CHALLENGER_ALIAS, version, exc)
            return (f"; whether {CHALLENGER_ALIAS} is still on v{version} could not be checked ({type(exc).__name__}): "
                    "see `status`, and delete the alias if it is")
        if held is None or int(held.version) != version:
            continue
        try:
            client.delete_registered_model_alias(name, alias)
        except MlflowException as exc:  # EDIT may move aliases but not delete them; or the registry went away
            log.warning("Challenger left on v%s: %s", version, exc.message[:200])
            return (f"; {CHALLENGER_ALIAS} left on v{version} ({exc.error_code}): ask a user with MANAGE on the "
                    "model to delete it")
        return f"; {CHALLENGER_ALIAS} removed from v{version}"
    return ""
