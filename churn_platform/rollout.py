"""Rollout state of a registered model: serve the Challenger beside Production, in shadow or
as a canary, decided in the registry so every API replica follows the same state.

The state is one registered-model tag (``contract.ROLLOUT_TAG``, JSON); each change is an
audit event beside the promotions, so ``churn-platform history`` tells the whole story.
``promote`` moves Production through the same gate and audit trail as ``churn-platform
promote``, then ends the rollout.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from mlflow import MlflowClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from churn_platform import promotion, registry
from churn_platform.contract import CANARY_PERCENT, CHALLENGER_ALIAS, ROLLOUT_ACTIONS, ROLLOUT_TAG
from churn_platform.errors import NotFoundError

log = logging.getLogger(__name__)

Mode = Literal["off", "shadow", "canary"]


class RolloutState(BaseModel):
    """What serves beside Production, and who decided it, when and why."""

    model_config = ConfigDict(frozen=True)

    mode: Mode = "off"
    #: Share of customers (by a stable hash of their id) the Challenger answers in canary mode.
    percent: int | None = Field(None, ge=CANARY_PERCENT[0], le=CANARY_PERCENT[1])
    challenger_version: int | None = Field(None, ge=1)
    production_version: int | None = Field(None, ge=1)
    started_by: str | None = None
    started_at: str | None = None
    reason: str = ""
    #: Production moves in the audit trail when it started: one more means it has ended. A count,
    #: not a time: the events' times come from the clocks of whoever ran each command.
    moves_at_start: int | None = Field(None, ge=0)
    #: The audit event that announced this state: a newer rollout event in the trail means a
    #: change raced this one's save and lost its state to it (the last tag written wins).
    event: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> RolloutState:
        """A tag edited by hand (or by another tool) is read as off rather than served as it
        says: a canary of 500 % sends every customer to the Challenger."""
        if self.mode != "off" and (self.challenger_version is None or self.production_version is None):
            raise ValueError(f"a {self.mode} names its challenger_version and production_version")
        if self.mode != "off" and self.challenger_version == self.production_version:
            raise ValueError("challenger_version is production_version: a version compared with itself")
        if (self.mode == "canary") != (self.percent is not None):
            raise ValueError("percent goes with a canary, and only with one")
        # `rollout status` compares since then, with aware times: a bad or naive one was a traceback
        if self.started_at is not None and datetime.fromisoformat(self.started_at).tzinfo is None:
            raise ValueError("started_at names no time zone")  # fromisoformat's ValueError too: pydantic's
        return self


class RolloutError(NotFoundError):
    """A rollout change that cannot be made as asked (exit 2); nothing was changed."""


def current(client: MlflowClient, name: str, production: int | None = None) -> RolloutState:
    """The rollout in effect: ``off`` when none was started, or once Production has moved.

    A rollout compares its Challenger with the Production it was started beside. Once
    Production moves (promote, rollback, the MLflow UI) the rollout has ended, whether or
    not its tag was cleared: otherwise a rollback to that version would bring the Challenger
    back. ``production``, the version serving now, also catches a move made in the UI that
    no command has recorded yet.
    """
    return _in_effect(registry.get_model(client, name).tags, production)


def _read(tags: dict[str, str]) -> tuple[RolloutState, bool]:
    """The stored rollout (off when none), and whether its tag could be read: one edited by
    hand is ignored (off), saying why."""
    raw = tags.get(ROLLOUT_TAG)
    if not raw:
        return RolloutState(), True
    try:
        return RolloutState.model_validate_json(raw), True
    except ValidationError:
        return RolloutState(reason=f"unreadable {ROLLOUT_TAG} tag ignored: {raw[:100]!r}"), False


def _in_effect(tags: dict[str, str], production: int | None) -> RolloutState:
    state, _ = _read(tags)
    events = promotion.events_in(tags)
    if state.event is not None and (raced := _newer_change(events, state.event)) is not None:
        # Two changes at once: a stop saved over by the start it raced kept the Challenger serving.
        return RolloutState(reason=f"the saved rollout state is older than the trail's last rollout change "
                                   f"({raced.action} by {raced.actor} at {raced.at}): two changes raced; "
                                   "run the one you want again")  # fmt: skip
    if state.mode == "off":
        return state
    rollout = f"the {state.mode} of v{state.challenger_version} beside v{state.production_version}"
    if state.moves_at_start is None:  # a rollout started by an earlier release
        moved = _first_move_after(events, state.started_at)
    else:
        moves = [e for e in events if e.action in promotion.MOVES]
        moved = moves[state.moves_at_start] if len(moves) > state.moves_at_start else None
    if moved is not None:
        return RolloutState(reason=f"{rollout} ended when Production moved: {moved.action} "
                                   f"v{moved.from_version or '-'} -> v{moved.to_version or '-'} at {moved.at} "
                                   f"by {moved.actor}")  # fmt: skip
    if production is not None and production != state.production_version:
        return RolloutState(reason=f"{rollout} ended when Production moved to v{production}")
    return state


def _newer_change(events: list[promotion.Event], key: str) -> promotion.Event | None:
    """The trail's last rollout event, when it is newer than the one ``key`` names."""
    last = next((e for e in reversed(events) if e.action in ROLLOUT_ACTIONS), None)
    return last if last is not None and last.key > key else None


def _first_move_after(events: list[promotion.Event], started_at: str | None) -> promotion.Event | None:
    try:
        start = datetime.fromisoformat(started_at or "")
    except ValueError:
        return None
    for event in events:
        if event.action not in promotion.MOVES:
            continue
        try:
            if datetime.fromisoformat(event.at) > start:
                return event
        except (ValueError, TypeError):  # a time edited by hand: unreadable, or without a zone
            continue
    return None


def _save_then_record(
    client: MlflowClient, name: str, action: str, from_version: int | None, to_version: int | None,
    state: RolloutState, *, actor: str | None, reason: str,
) -> RolloutState:  # fmt: skip
    """The state, naming the audit event that announces it, then that event; the state is
    returned. In this order an event is never in the trail before its state: the other way,
    a replica polling between the two writes (or after an event whose reply was lost, the
    command exiting 3) saw a state older than the trail's last change, took it for two
    changes racing and served no rollout, reloading the Challenger at its next poll. A state
    whose event could not be written is in effect, only missing from ``history``: said, not
    undone. A SIGTERM (`retrain --rollout` at its Job's deadline) waits for the pair, as a
    promotion's does."""
    with promotion.sigterm_deferred():
        event = promotion.next_event(client, name, action, from_version, to_version, actor=actor, reason=reason)
        saved = state.model_copy(update={"event": event.key})
        value = json.dumps(saved.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)  # as promotion._write
        client.set_registered_model_tag(name, ROLLOUT_TAG, value)
        try:
            promotion.write(client, name, event)
        except BaseException:
            log.warning("the rollout change (%s) is saved and replicas follow it, but its event could not be added to "
                        "`history`", action)  # fmt: skip
            raise
    return saved


def start(
    client: MlflowClient,
    name: str,
    *,
    mode: Literal["shadow", "canary"],
    percent: int | None = None,
    version: int | None = None,
    reason: str = "",
    actor: str | None = None,
) -> RolloutState:
    """Start (or change) a rollout; every check runs before anything is written."""
    low, high = CANARY_PERCENT
    if mode == "canary" and percent is None:
        raise RolloutError(f"a canary needs --percent: the share of customers ({low}-{high}) the Challenger answers")
    if mode == "canary" and not low <= percent <= high:
        raise RolloutError(f"--percent must be between {low} and {high} for a canary, got {percent}")
    if mode == "shadow" and percent is not None:
        raise RolloutError("--percent applies to canary only: in shadow every customer is scored by both models")
    production = promotion.current_production(client, name)
    if production is None:
        raise RolloutError(f"no version of {name!r} holds Production: there is nothing to roll out beside")
    tags = registry.get_model(client, name).tags  # one read for the running rollout and the trail's moves
    running = _in_effect(tags, production)
    kept = version is None and running.mode != "off"
    if kept:
        # Changing the share or the mode of a running rollout keeps its Challenger, even when
        # training has since moved the alias to a version nothing has shadowed yet.
        version = running.challenger_version
    if version is None:
        challenger = registry.aliased(client, name, CHALLENGER_ALIAS)  # as status reads it
        if challenger is None:
            raise RolloutError(
                f"no version of {name!r} holds {CHALLENGER_ALIAS} (training sets it when a version passes the gate); "
                "name one with --version"
            )
        version = int(challenger.version)
    try:
        promotion.ready_version(client, name, version)
    except NotFoundError as exc:
        if not kept:
            raise
        raise NotFoundError(f"{exc}: it is the running {running.mode}'s Challenger; end that rollout "
                            "(`rollout stop`), or name a version with --version") from None  # fmt: skip
    if version == production:
        raise RolloutError(f"v{version} already holds Production: a rollout needs another version")
    actor = actor or promotion.default_actor()
    # A new share of the same canary goes on comparing since it started; anything else starts afresh.
    same = running.mode == mode and running.challenger_version == version
    events = promotion.events_in(tags, pending=True)
    moves = sum(e.action in promotion.MOVES and not e.pending for e in events)
    # A promotion whose alias moved after Production was read, its event not yet marked done:
    # counted once done, it would end this rollout on arrival. It is the move to the
    # Production read here, so it comes before the rollout; an old failed one is none.
    moves += promotion.landed_move(events, production) is not None
    state = RolloutState(
        mode=mode, percent=percent, challenger_version=version, production_version=production,
        started_by=running.started_by if same else actor,
        started_at=running.started_at if same else datetime.now(UTC).isoformat(timespec="milliseconds"),
        # The starter's reason with the starter: a new share's own is in the trail, under who gave it.
        reason=running.reason if same else reason,
        moves_at_start=running.moves_at_start if same and running.moves_at_start is not None else moves,
    )  # fmt: skip
    what = f"{mode} {percent}%" if mode == "canary" else mode
    return _save_then_record(client, name, "rollout-start", production, version, state, actor=actor,
                             reason=f"{what}: {reason}" if reason else what)  # fmt: skip


def stop(client: MlflowClient, name: str, *, reason: str = "", actor: str | None = None) -> RolloutState:
    """End the rollout: all traffic back to Production alone.

    A rollout that already ended when Production moved has its tag cleared too, and so has a
    tag no one can read (replicas ignore it; ``start`` would overwrite it).
    """
    tags = registry.get_model(client, name).tags
    stored, readable = _read(tags)
    if not readable:  # edited by hand, say
        _save_then_record(client, name, "rollout-stop", None, None, RolloutState(), actor=actor,
                          reason=reason or stored.reason)  # fmt: skip
        return RolloutState(reason=f"cleared: {stored.reason}")
    if stored.mode == "off":
        why = f" ({stored.reason})" if stored.reason else ""
        raise RolloutError(f"no rollout of {name!r} is running{why}; nothing changed")
    in_effect = _in_effect(tags, None)
    _end(client, name, stored, reason or (in_effect.reason if in_effect.mode == "off" else f"{stored.mode} stopped"),
         actor)  # fmt: skip
    if in_effect.mode == "off":  # printed as a plain "off", as if this stop had ended it
        return RolloutState(reason=f"already ended, its tag now cleared: {in_effect.reason}")
    return RolloutState()


def _end(client: MlflowClient, name: str, state: RolloutState, reason: str, actor: str | None) -> None:
    _save_then_record(client, name, "rollout-stop", state.production_version, state.challenger_version,
                      RolloutState(), actor=actor, reason=reason)  # fmt: skip


def promote(
    client: MlflowClient,
    name: str,
    *,
    reason: str = "",
    actor: str | None = None,
    force: bool = False,
    tolerance: float = 0.005,
) -> promotion.PromotionResult:
    """Move Production to the rollout's Challenger (the promote gate and audit trail), then stop."""
    state = current(client, name, promotion.current_production(client, name))
    if state.mode == "off" or state.challenger_version is None:
        why = f" ({state.reason})" if state.reason else ""
        raise RolloutError(f"no rollout of {name!r} is running{why}: start one, or use `churn-platform promote`")
    result = promotion.promote(client, name, state.challenger_version, reason=reason or f"after {state.mode}",
                               actor=actor, force=force, tolerance=tolerance)  # fmt: skip
    try:
        _end(client, name, state, f"promoted v{state.challenger_version}", actor)
    except Exception as exc:  # noqa: BLE001 - the move ended the rollout; exit 3 had a retry say "none running"
        log.warning("rollout-stop not recorded (%s); the rollout ended with the move all the same", exc)
        return result.model_copy(update={"message": result.message + "; the rollout ended with the move (its "
                                         "rollout-stop event could not be recorded)"})  # fmt: skip
    return result


class ArmFigures(BaseModel):
    """One arm of a rollout, from the inference log over the rollout's window."""

    model_config = ConfigDict(frozen=True)

    arm: str
    model_version: int
    #: Requests this arm scored (all of them in shadow; in a canary, those with a customer sent to it).
    requests: int
    rows: int
    mean_score: float | None
    #: Wasserstein distance of this arm's scores from Production's, divided by the standard
    #: deviation of Production's (the monitor's prediction-drift statistic); None for Production.
    score_distance: float | None
    #: Shadow only: share of customers on whom both models decide will_churn alike.
    agreement: float | None
    risk_bands: dict[str, float]
    #: Time the model took to score this arm's part of a request, over its requests (ms).
    p50_scoring_ms: float | None
    p99_scoring_ms: float | None
    #: Outcomes observed since the rollout started that judge this arm's predictions (the
    #: performance job's join rule), and the realized ROC AUC on them (None: one class or none).
    labelled_rows: int = 0
    realized_roc_auc: float | None = None


class Comparison(BaseModel):
    model_config = ConfigDict(frozen=True)

    since: str | None
    arms: list[ArmFigures]
    #: Why there are no figures (no log yet, database unreachable; the state still stands),
    #: or a caveat on those shown (a version deleted since, compared at the default threshold).
    note: str | None = None


#: Resolution of the score histogram the figures are computed on: the Wasserstein distance
#: and the mean are within 1e-4 of the exact ones, and a month-long rollout reads 10,001 rows per arm.
_SCORE_BINS = 10_000
#: Resolution of the per-request scoring times (ms) the percentiles are read from.
_MS_BINS = 100


def compare(
    url: str,
    name: str,
    state: RolloutState,
    *,
    thresholds: dict[int, float],
    band_edges: tuple[float, float],
    horizon_days: int = 90,
    maturity_days: int = 0,
) -> Comparison:
    """Per-arm figures of the running rollout, from rows logged since it started.

    Computed in the database (a score histogram, per-request times, the shadow's pairs): a
    rollout held for weeks covers hundreds of millions of rows, and this command's memory
    grows with none of them. ``thresholds`` maps a version to its decision threshold (for
    the shadow agreement).
    """
    import numpy as np
    import pandas as pd
    import sqlalchemy as sa
    from scipy.stats import wasserstein_distance

    from churn_platform.contract import (
        ARM,
        ARM_SEPARATOR,
        INFERENCE_LOG_TABLE,
        MODEL_NAME,
        MODEL_VERSION,
        PROBABILITY,
        REQUEST_ID,
        RISK_BANDS,
        ROW_INDEX,
        SCORED_AT,
        SCORING_MS,
    )
    from churn_platform.inference_log import is_missing_table, make_engine, missing_file, read_failure, sqlite_time

    since = datetime.fromisoformat(state.started_at) if state.started_at else None
    sqlite = url.startswith("sqlite")
    params: dict[str, object] = {"name": name, "production": state.production_version,
                                 "challenger": state.challenger_version, "mode": state.mode}  # fmt: skip
    if since is not None:
        params["since"] = sqlite_time(since) if sqlite else since

    def rows_of(t: str, arms: str) -> str:
        """The rows of table ``t`` in the rollout's window and ``arms`` (a NaN score, which
        PostgreSQL stores and sorts above 1, is no score)."""
        window = f" AND {t}.{SCORED_AT} >= :since" if since is not None else ""
        return f"{t}.{MODEL_NAME} = :name{window} AND {t}.{PROBABILITY} BETWEEN 0 AND 1 AND ({arms})"

    def production_arm(t: str) -> str:
        return f"{t}.{ARM} = 'production' AND {t}.{MODEL_VERSION} = :production"

    def challenger_arm(t: str) -> str:
        return f"{t}.{ARM} = :mode AND {t}.{MODEL_VERSION} = :challenger"

    # This rollout's arms only: a replica that has not polled yet logs the rollout before it
    # (another Challenger, or shadow rows after a switch to canary) for up to a poll interval.
    where = rows_of("t", f"({production_arm('t')}) OR ({challenger_arm('t')})")
    # Bins counted down on both databases (PostgreSQL's CAST rounds where SQLite's truncates).
    floor = "CAST({} AS INTEGER)" if sqlite else "FLOOR({})"
    # Band i holds scores at or above edge i-1 and below edge i, as the API bands them.
    band = "CASE " + " ".join(f"WHEN t.{PROBABILITY} >= :edge{i} THEN {i + 1}"
                              for i in reversed(range(len(band_edges)))) + " ELSE 0 END"  # fmt: skip
    params |= {f"edge{i}": edge for i, edge in enumerate(band_edges)} | {"bins": _SCORE_BINS, "ms_bins": _MS_BINS}
    histogram_sql = (f"SELECT t.{ARM} AS arm, t.{MODEL_VERSION} AS version,"
                     f" {floor.format(f't.{PROBABILITY} * :bins')} AS score_bin, {band} AS band, COUNT(*) AS n,"
                     f" SUM(t.{PROBABILITY}) AS total FROM {INFERENCE_LOG_TABLE} t WHERE {where}"
                     f" GROUP BY t.{ARM}, t.{MODEL_VERSION}, score_bin, band")  # fmt: skip
    # One time per request (each of its rows carries it; NULL from an earlier release), then
    # a histogram of them: its counts add up to the arm's requests.
    requests_sql = (f"SELECT arm, {floor.format('ms * :ms_bins')} AS ms_bin, COUNT(*) AS n FROM"
                    f" (SELECT t.{ARM} AS arm, MIN(t.{SCORING_MS}) AS ms FROM {INFERENCE_LOG_TABLE} t"
                    f"  WHERE {where} GROUP BY t.{ARM}, t.{REQUEST_ID}) per_request"
                    f" GROUP BY arm, ms_bin")  # fmt: skip
    # A shadow row's request id is Production's with a suffix: the pair decides alike, or not.
    suffix = f"{ARM_SEPARATOR}shadow"
    pairs_sql = (f"SELECT COUNT(*) AS n, SUM(CASE WHEN (s.{PROBABILITY} >= :mine) = (p.{PROBABILITY} >= :theirs)"
                 f" THEN 1 ELSE 0 END) AS alike FROM {INFERENCE_LOG_TABLE} s JOIN {INFERENCE_LOG_TABLE} p"
                 f" ON p.{REQUEST_ID} = SUBSTR(s.{REQUEST_ID}, 1, LENGTH(s.{REQUEST_ID}) - :suffix_length)"
                 f" AND p.{ROW_INDEX} = s.{ROW_INDEX}"
                 f" WHERE {rows_of('s', challenger_arm('s'))} AND {rows_of('p', production_arm('p'))}")  # fmt: skip
    if missing_file(url):  # nothing logged yet, or a mistyped path: said, and never made
        return Comparison(since=state.started_at, arms=[],
                          note="no inference log yet (no such file: is CHURN_INFERENCE_LOG_URL the API's?)")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            histogram = pd.read_sql(sa.text(histogram_sql), conn, params=params)
            requests = pd.read_sql(sa.text(requests_sql), conn, params=params)
            pairs = None
            if state.mode == "shadow":
                pairs = conn.execute(sa.text(pairs_sql), params | {
                    "suffix_length": len(suffix), "mine": thresholds.get(state.challenger_version or 0, 0.5),
                    "theirs": thresholds.get(state.production_version or 0, 0.5),
                }).one()  # fmt: skip
    except sa.exc.SQLAlchemyError as exc:
        if is_missing_table(exc):
            return Comparison(since=state.started_at, arms=[], note="no inference log yet")
        raise read_failure(exc, engine.url.render_as_string(hide_password=True)) from None
    finally:
        engine.dispose()

    def scores_of(arm: str) -> tuple[np.ndarray, np.ndarray]:
        rows = histogram[histogram["arm"] == arm].groupby("score_bin")["n"].sum()
        return rows.index.to_numpy(dtype=float) / _SCORE_BINS, rows.to_numpy(dtype=float)

    production, production_counts = scores_of("production")
    arms = []
    for (arm, version), rows in histogram.groupby(["arm", "version"], sort=False):
        count = int(rows["n"].sum())
        values, counts = scores_of(str(arm))
        distance = agreement = None
        if arm != "production" and production_counts.sum() > 1:
            mean = np.average(production, weights=production_counts)
            spread = float(np.sqrt(np.average((production - mean) ** 2, weights=production_counts))) or 1.0
            distance = float(wasserstein_distance(values, production, counts, production_counts)) / spread
        if arm == "shadow" and pairs is not None and pairs.n:
            agreement = float(pairs.alike) / pairs.n
        by_band = rows.groupby("band")["n"].sum()
        shares = {label: float(by_band.get(i, 0)) / count for i, label in enumerate(RISK_BANDS)}
        per_request = requests[requests["arm"] == arm]
        times = per_request.dropna(subset=["ms_bin"]).sort_values("ms_bin")
        p50 = p99 = None
        if len(times):  # the smallest time at or above the share of requests
            reached = np.cumsum(times["n"].to_numpy(dtype=float)) / times["n"].sum()
            at = np.searchsorted(reached, [0.5, 0.99])
            p50, p99 = (times["ms_bin"].to_numpy(dtype=float)[at] / _MS_BINS).tolist()
        arms.append(ArmFigures(arm=str(arm), model_version=int(version), requests=int(per_request["n"].sum()),
                               rows=count, mean_score=float(rows["total"].sum()) / count, score_distance=distance,
                               agreement=agreement, risk_bands=shares, p50_scoring_ms=p50,
                               p99_scoring_ms=p99))  # fmt: skip
    arms = [a.model_copy(update=_realized(url, name, a, since, horizon_days, maturity_days)) for a in arms]
    order = {"production": 0, "canary": 1, "shadow": 2}
    return Comparison(since=state.started_at, arms=sorted(arms, key=lambda a: order.get(a.arm, 3)))


def _realized(
    url: str, name: str, arm: ArmFigures, since: datetime | None, horizon_days: int, maturity_days: int
) -> dict[str, Any]:
    """Realized ROC AUC of one arm: outcomes observed since the rollout started, joined to
    the arm's predictions by the performance job's rule. No outcomes yet: nothing to add."""
    import pandas as pd
    import sqlalchemy as sa

    from churn_platform import outcomes
    from churn_platform.contract import ARM, CHURNED, PROBABILITY, SCORED_AT
    from churn_platform.inference_log import make_engine, missing_file
    from churn_platform.performance_metrics import realized

    start = since or datetime(1970, 1, 1, tzinfo=UTC)
    if missing_file(url):  # nothing logged there, and nothing to make
        return {}
    engine = make_engine(url)
    try:
        if not sa.inspect(engine).has_table(outcomes.OUTCOMES_TABLE):
            return {}
        params = {"name": name, "version": arm.model_version, "horizon_days": horizon_days,
                  **outcomes.window_params(engine.dialect.name, start, datetime.now(UTC))}  # fmt: skip
        with engine.connect() as conn:
            sql = outcomes.matched_sql(engine.dialect.name, maturity_days=maturity_days)
            matched = pd.read_sql(sa.text(sql), conn, params=params)
    except sa.exc.SQLAlchemyError:
        return {}
    finally:
        engine.dispose()
    scored = pd.to_datetime(matched[SCORED_AT], utc=True, format="ISO8601")
    mine = matched[(matched[ARM] == arm.arm) & (scored >= pd.Timestamp(start))]
    figures = realized(mine[CHURNED].astype(bool).to_numpy(), mine[PROBABILITY].astype(float).to_numpy(), 0.5)
    return {"labelled_rows": figures.rows, "realized_roc_auc": figures.roc_auc}
