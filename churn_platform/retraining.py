"""Retraining: production data and outcomes become the next Challenger, on a trigger.

The training set is what the API scored joined to what the customers then did (the
outcomes' one join rule, any version's latest prediction: the features as scored),
optionally with a base dataset. A held-out slice of the *recent* labelled customers (none
of them in the training part) validates the candidate and gates it against Production
with the promote gate; a win sets ``Challenger``. Production never moves here.

Triggers read the last monitoring runs of Production (``churn-monitoring``: drift runs of
``monitor``, ``job=performance`` runs of ``performance``) and retrain only when enough of
them flagged a problem, so one noisy window does not start a training.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict

from churn_platform import data, gate, job_metrics, outcomes, promotion, registry
from churn_platform.contract import (
    CANARY_PERCENT,
    CHALLENGER_ALIAS,
    CHURNED,
    INFERENCE_LOG_TABLE,
    ROLLOUT_ACTIONS,
    TAG_ADHOC,
    TAG_DATA_DIGEST,
    TAG_THRESHOLD,
    TAG_WINDOW_START,
    ExitCode,
)
from churn_platform.errors import (
    ChurnPlatformError,
    DataSourceError,
    DataValidationError,
    NotFoundError,
)
from churn_platform.gate import LEAST_GATE_CLASS, LEAST_GATE_ROWS, by_class, judgeable
from churn_platform.inference_log import make_engine, read_failure, require_log
from churn_platform.schema import FEATURE_NAMES, ID_COLUMN, LABEL_COLUMN
from churn_platform.settings import Settings, redacted, sqlite_file
from churn_platform.training_config import check_parameter

log = logging.getLogger(__name__)

Trigger = Literal["drift", "performance", "always"]
#: Tags on the run and the version: why and from what it was trained.
TAG_TRIGGER, TAG_WINDOW, TAG_RECENT_ROWS, TAG_BASE_ROWS, TAG_GATE_ROWS = (
    "retrain.trigger", "retrain.window", "retrain.recent_rows", "retrain.base_rows", "retrain.gate_rows",
)  # fmt: skip
#: The training parameters a retrain takes over from Production's run.
_INHERITED = ("model_type", "c", "learning_rate", "max_iter", "max_depth", "seed", "decision_threshold")


class NotRetrained(ChurnPlatformError):
    """Retraining was not needed or not possible (exit 1); the reason says which. Nothing registered."""

    exit_code = ExitCode.REFUSED
    prefix = "not retrained: "  # the scheduled job's usual answer: its log should not say "error" every day

    def __init__(self, message: str, decision: Decision | None = None) -> None:
        super().__init__(message)
        if decision is not None:  # under --json, the runs it counted: a dashboard shows the debounce
            self.details = {"decision": decision.model_dump(mode="json")}


class Decision(BaseModel):
    """Whether the trigger fired, and the monitoring runs it read."""

    model_config = ConfigDict(frozen=True)

    retrain: bool
    reason: str
    runs: list[dict[str, Any]]
    #: The last retrain, when the gate refused it: a retrain on the same data would be refused too.
    refused_version: int | None = None
    #: When what holds retraining began (an undecided Challenger's registration, a rollout's
    #: start): a forgotten one stops the loop with exit 1, a normal answer (ChurnRetrainHeld).
    held_since: datetime | None = None


def _flagged(run: Any, trigger: Trigger) -> bool | None:
    """Did this monitoring run flag the trigger's problem? None: not a run of that kind."""
    tags = run.data.tags
    if TAG_ADHOC in tags:  # a file, another version or an old window says nothing of Production now
        return None
    # A verdict edited by hand into another word ("Drift") was counted clean: only the job's own count.
    verdicts = {"degraded": True, "ok": False} if trigger == "performance" else {"drift": True, "no_drift": False}
    # A run that judged nothing (not_judged; a data-quality failure, which counted "clean"
    # diluted real drift) says nothing either way; nor does a run of the other job.
    if (tags.get("job") == "performance") != (trigger == "performance"):
        return None
    return verdicts.get(tags.get("verdict", ""))


def _undecided_retrain(client: MlflowClient, name: str, production: int, pending: ModelVersion | None) -> int | None:
    """The Challenger's version (``pending``) when it is a retrain gated against today's
    Production that no one has judged: Production has not moved since (by the CLI or in the
    UI), the audit trail has no move of Production to it (promoted, then rolled back in the
    UI, which leaves its alias; a move undone before any command recorded it leaves no
    trace), and its last rollout was not stopped. A rollout under way is the judging, not its
    end: one stopped and started again awaits its decision again."""
    if pending is None or TAG_TRIGGER not in (pending.tags or {}):
        return None
    figures = gate.recorded_figures(pending.tags)  # edited by hand: nothing says it awaits anyone
    if figures is None or figures.production_version != production:
        return None
    events = [e for e in promotion.recorded_events(client, name) if e.to_version == int(pending.version)]
    # Promoted, then rolled back in the UI (which leaves the Challenger alias where it was): judged.
    if any(e.action in promotion.MOVES for e in events):
        return None
    rollouts = [e.action for e in events if e.action in ROLLOUT_ACTIONS]
    return None if rollouts[-1:] == ["rollout-stop"] else int(pending.version)


def _gated_run(client: MlflowClient, version: ModelVersion, production: int) -> Run | None:
    """The training run of a retrain gated against today's Production; None for another
    version's, one with no figures (edited by hand), or a run `mlflow gc` deleted."""
    figures = gate.recorded_figures(version.tags or {})
    if not version.run_id or figures is None or figures.production_version != production:
        return None
    try:
        return client.get_run(version.run_id)
    except MlflowException as exc:
        if registry.is_missing(exc):
            return None
        raise


def _answered(client: MlflowClient, version: ModelVersion, production: int, challenger: int | None) -> bool:
    """Whether a retrained version answered the runs before it. Not one whose run the registry
    dropped under between registering it and making it Challenger (passed against today's
    Production, its run unfinished, no alias): counted, it made the Job's retry decline ("0 of
    the last 0 runs", exit 1) and left the gated version without Challenger for good."""
    run = None if int(version.version) == challenger else _gated_run(client, version, production)
    return run is None or run.info.status == "FINISHED" or run.data.tags.get("gate.passed") != "True"


def _refused(
    client: MlflowClient, version: ModelVersion, production: int, wanted: Callable[[], dict[str, Any]]
) -> bool:
    """Whether the gate refused a retrain against today's Production trained as this one would
    be (``wanted``): the next would learn from mostly the same outcomes and be refused again,
    registering a version a day. One with other parameters (an experiment by hand) tried
    something else, and holds nothing."""
    run = _gated_run(client, version, production)
    if run is None or run.data.tags.get("gate.passed") != "False":
        return False
    try:
        return _trained_with(run, wanted())
    except ChurnPlatformError:  # Production's parameters unreadable: held as before; the retrain says why when due
        return True


def _trained_with(run: Run, wanted: dict[str, Any]) -> bool:
    """Whether ``run`` fitted with ``wanted``'s parameters (the decision threshold aside: it
    changes no fit)."""
    for key, value in wanted.items():
        given = run.data.params.get(key)
        try:  # absent or unreadable: trained some other way
            if key != "decision_threshold" and (given is None or _typed(key, given) != value):
                return False
        except (ValueError, OverflowError):
            return False
    return True


def _retrains(client: MlflowClient, name: str) -> list[ModelVersion]:
    """The versions a retrain registered (its trigger tag), newest first."""
    found = client.search_model_versions(f"name = {registry.quoted(name)}")
    return sorted((v for v in found if TAG_TRIGGER in (v.tags or {})), key=lambda v: int(v.creation_timestamp),
                  reverse=True)  # fmt: skip


def _same_as_last(client: MlflowClient, name: str, production: int, digest: str, wanted: dict[str, Any]) -> int | None:
    """The last retrain gated against today's Production, when it learned from the same rows
    (``digest``) with the same parameters: another would be the same model under a new number."""
    last = next((v for v in _retrains(client, name) if (figures := gate.recorded_figures(v.tags)) is not None
                 and figures.production_version == production), None)  # fmt: skip
    if last is None or last.tags.get(TAG_DATA_DIGEST) != digest:
        return None
    run = _gated_run(client, last, production)
    return int(last.version) if run is not None and _trained_with(run, wanted) else None


#: After a refused retrain, how long a run whose evidence starts before it (over all time, or
#: from a fixed --since) waits to count: the scheduled performance window, in ms.
_REFUSAL_HOLD_MS = 30 * 86_400_000


def _judges_after(run: Any, ms: int) -> bool:
    """Whether a monitoring run's evidence starts after ``ms``, or the run is ``_REFUSAL_HOLD_MS``
    later (a window that never starts after it, counted never, ended retraining for good). A run
    without the tag (an earlier release's) is taken as it was before the tag existed."""
    if (start := run.data.tags.get(TAG_WINDOW_START)) is None or run.info.start_time - ms >= _REFUSAL_HOLD_MS:
        return True
    try:
        at = datetime.fromisoformat(start)
    except ValueError:  # edited by hand into no time: as if untagged
        return True
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000 > ms


#: The schedules' periods (the performance CronJob runs daily, the monitor hourly), in ms.
_PERIOD_MS = {"performance": 86_400_000, "drift": 3_600_000}


def decide(
    client: MlflowClient, settings: Settings, version: int, trigger: Trigger, of: int, at_least: int,
    parameters: dict[str, Any] | None = None,
) -> Decision:
    """The debounce: retrain when at least ``at_least`` of Production's last ``of`` runs of the
    trigger's kind (one per UTC day for performance, per hour for drift) flagged it
    (``always``: retrain). ``parameters``: those the retrain is given (``--model-type``)."""
    if trigger == "always":
        return Decision(retrain=True, reason="asked for (no trigger to wait for)", runs=[])
    # A performance run judges 30 days: for weeks after a retrain most of its evidence is the
    # same, and each daily run replaced the Challenger under evaluation with another version.
    held = registry.aliased(client, settings.model_name, CHALLENGER_ALIAS)
    if pending := _undecided_retrain(client, settings.model_name, version, held):
        reason = (f"the Challenger, v{pending} (a retrain, newer than Production v{version}), awaits a decision: "
                  "promote it, stop its rollout, or delete its alias to let a retrain replace it")  # fmt: skip
        return Decision(retrain=False, reason=reason, runs=[],
                        held_since=datetime.fromtimestamp(held.creation_timestamp / 1000, UTC))  # fmt: skip
    from churn_platform import rollout

    # One trained by hand too: the retrain moved the Challenger alias off the version the
    # rollout serves, and nothing said so (the rollout keeps its own version).
    if (running := rollout.current(client, settings.model_name, version)).mode != "off":
        reason = (f"a {running.mode} of v{running.challenger_version} beside Production v{version} is under way: "
                  "end it first (`rollout promote` or `rollout stop`), so the Challenger alias stays on the version "
                  "it serves")  # fmt: skip
        started = datetime.fromisoformat(running.started_at) if running.started_at else None
        return Decision(retrain=False, reason=reason, runs=[], held_since=started)
    experiment = client.get_experiment_by_name(settings.monitor_experiment)
    if experiment is None:  # a typo read "0 of the last 0 runs flagged", not retrained, every day
        return Decision(retrain=False, runs=[], reason=(
            f"no monitoring runs to read: MLflow experiment {settings.monitor_experiment!r} (CHURN_MONITOR_EXPERIMENT) "
            "does not exist yet (the monitor and performance jobs make it)"))  # fmt: skip
    registry.refuse_deleted(experiment, "CHURN_MONITOR_EXPERIMENT", ", where the verdicts a retrain reads are,")
    name = registry.quoted(settings.model_name)
    runs: list[dict[str, Any]] = []
    # Runs before the latest retrain were answered by it: a retrain waits for new evidence
    # instead of registering another version every day until someone promotes one.
    challenger = int(held.version) if held else None
    last = next((v for v in _retrains(client, settings.model_name) if _answered(client, v, version, challenger)), None)
    after = int(last.creation_timestamp) if last else 0
    # Refused by the gate, it answered the evidence it learned from: only runs whose evidence
    # starts after it count (with 30-day performance windows, a month), not the next two days'.
    refused = last is not None and _refused(client, last, version, lambda: _training_parameters(
        client, settings.model_name, version, parameters or {}))
    query = f"tags.model_name = {name} AND tags.model_version = '{version}'"
    if trigger == "performance":
        query += " AND tags.job = 'performance'"
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=query + f" AND attributes.start_time > {after}",
        order_by=["attributes.start_time DESC"],
        max_results=min(50_000, max(200, 20 * of)),  # several runs a period are one: --of 300 was never met
    )
    # One run per period of the trigger's schedule, the latest that judged: a run by hand
    # after an alert judges the same window again, and counted, one day's evidence retrained.
    period, periods = _PERIOD_MS[trigger], set()
    # Runs of an earlier time it served judged other days: after a rollback to a version that
    # drifted 40 days before, they retrained it on the day it came back.
    became, back = _became_production(client, settings.model_name, version), None
    for run in found:
        flagged = _flagged(run, trigger)
        if refused and not _judges_after(run, after):
            continue
        if flagged is not None and became is not None and run.info.start_time <= became.ns // 1_000_000:
            back = became  # this run and those after it (older) judged an earlier time it served
            break
        if flagged is not None and (at := run.info.start_time // period) not in periods:
            periods.add(at)
            runs.append({"run_id": run.info.run_id, "verdict": run.data.tags.get("verdict"), "flagged": flagged,
                         "at": datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat()})  # fmt: skip
        if len(runs) == of:
            break
    hits = sum(r["flagged"] for r in runs)
    what = "drift" if trigger == "drift" else "degradation"
    kind = "monitor" if trigger == "drift" else "performance"
    since_retrain = " since the last retrain" if after else ""
    if refused:
        when = datetime.fromtimestamp(after / 1000, UTC).isoformat(timespec="seconds")
        since_retrain = (f" whose evidence starts after v{last.version}, the retrain the gate refused at {when} "
                         f"(or that ran {_REFUSAL_HOLD_MS // 86_400_000} days after it),")  # fmt: skip
    elif back is not None:
        since_retrain = f" since it became Production again ({back.action} at {back.at})"
    reason = (f"{hits} of the last {len(runs)} {kind} runs of v{version}{since_retrain} flagged {what} "
              f"(retrain at {at_least} of {of})")  # fmt: skip
    if refused and hits < at_least:
        reason += "; `churn-platform retrain --if always` trains now"
    return Decision(retrain=hits >= at_least, reason=reason, runs=runs,
                    refused_version=int(last.version) if refused else None)  # fmt: skip


def _training_parameters(client: MlflowClient, name: str, production: int, given: dict[str, Any]) -> dict[str, Any]:
    """What a retrain trains with: Production's run's parameters, then those it is given."""
    return {**production_parameters(client, name, production, given), **given}


def _became_production(client: MlflowClient, name: str, version: int) -> promotion.Event | None:
    """The audit trail's last move of Production to ``version`` when an earlier move took
    Production off it (it served before: runs of that time judged other days); else None.
    A first promotion bounds nothing: runs before it judged no one, and a clock behind the
    promoting machine's would drop the first days' runs."""
    moves = [e for e in promotion.recorded_events(client, name) if e.action in promotion.MOVES]
    back = next((i for i in range(len(moves) - 1, -1, -1) if moves[i].to_version == version), None)
    left = back is not None and any(e.from_version == version for e in moves[:back])
    return moves[back] if left else None


def _require_log(url: str) -> None:
    """Connect to the log and find its table, or say why not (exit 2 or 3), before the decision."""
    engine = make_engine(url)
    try:
        require_log(engine)
    except (sa.exc.DatabaseError, sa.exc.InterfaceError) as exc:  # down, a missing grant, not a database at all
        raise read_failure(exc, engine.url.render_as_string()) from exc
    finally:
        engine.dispose()


@contextlib.contextmanager
def _named(option: str, value: str | None) -> Iterator[None]:
    """A data error about ``value`` names the option it came from: "data file not found" said
    nothing of --base."""
    try:
        yield
    except (DataSourceError, DataValidationError) as exc:
        if option in str(exc):
            raise
        raise type(exc)(f"{option}{'' if value and value in str(exc) else f' {value}'}: {exc}") from None


def labelled(url: str, name: str, since: datetime | None, horizon_days: int, maturity_days: int = 0) -> pd.DataFrame:
    """Each outcome since ``since`` with the features of the customer's latest prediction
    (any version) within the horizon before it (a "no", at least ``maturity_days`` before it):
    the recent labelled data."""
    engine = make_engine(url)
    dialect = engine.dialect.name
    features = ", ".join(f"l.{c}" for c in (ID_COLUMN, *FEATURE_NAMES))
    matched = outcomes.matched_sql(dialect, any_version=True, maturity_days=maturity_days)
    query = (f"SELECT m.{CHURNED}, m.observed_at, {features} FROM ({matched}) m "
             f"JOIN {INFERENCE_LOG_TABLE} l ON l.id = m.log_id ORDER BY m.outcome_id")  # fmt: skip
    start = since or datetime(1970, 1, 1, tzinfo=UTC)
    params = {"name": name, "horizon_days": horizon_days, **outcomes.window_params(dialect, start, datetime.now(UTC))}
    try:
        require_log(engine)  # a typo is no "ingest more outcomes" (exit 1, a normal answer)
        if not sa.inspect(engine).has_table(outcomes.OUTCOMES_TABLE):  # none ingested yet: "ingest more outcomes"
            return pd.DataFrame(columns=[CHURNED, "observed_at", ID_COLUMN, *FEATURE_NAMES])
        with engine.connect() as conn:
            result = conn.execute(sa.text(query), params)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except (sa.exc.DatabaseError, sa.exc.InterfaceError) as exc:  # down, a missing grant, not a database at all
        raise read_failure(exc, engine.url.render_as_string()) from exc
    finally:
        engine.dispose()


def in_gate_slice(customer_ids: pd.Series, share: float) -> pd.Series:
    """A stable, customer-wise choice of the held-out slice: a customer's outcomes are all in
    it or all out of it, on every run (Python's ``hash`` is salted per process)."""
    # A salt of its own: the slice draws independently of any other use of the hash (canary routing).
    return customer_ids.astype(str).map(lambda c: data.stable_bucket(f"gate:{c}")) < share * 10_000


@dataclass(frozen=True)
class TrainingSet:
    train: pd.DataFrame
    gate: pd.DataFrame
    recent_rows: int
    base_rows: int


def training_set(recent: pd.DataFrame, base: pd.DataFrame | None, *, min_rows: int, gate_share: float) -> TrainingSet:
    """Validate the recent labelled rows, keep each customer's latest, hold out a customer-wise
    slice of them for the gate, and add the base rows of the other customers. Raises
    ``NotRetrained`` on too little data."""
    # One row per customer: scored and exported daily, a stayer gave a near-identical row a day
    # and a churner one, so a hundred customers met the minimums, stayers outweighed churners
    # 29 to 1, and the drift reference held each customer fifteen times over.
    recent = recent.sort_values("observed_at", kind="stable").drop_duplicates(ID_COLUMN, keep="last")
    if len(recent) < min_rows:
        raise NotRetrained(f"only {len(recent)} labelled customers in the window; at least {min_rows} are needed "
                           "(CHURN_RETRAIN_MIN_ROWS): ingest more outcomes or widen --since")  # fmt: skip
    frame = recent.rename(columns={CHURNED: LABEL_COLUMN}).drop(columns=["observed_at"])
    frame[LABEL_COLUMN] = frame[LABEL_COLUMN].astype(bool).astype(int).astype(str)
    frame = frame.astype({c: str for c in frame.columns if frame[c].dtype == object})
    try:
        checked = data.validate(frame)
    except DataValidationError as exc:  # "row 3430" counted rows of a frame the user never sees
        _, reasons = data.split_rejects(frame.drop(columns=[LABEL_COLUMN]))
        if reasons.empty:
            raise
        named = "; ".join(f"customer {frame.at[i, ID_COLUMN]!r}: {why}" for i, why in reasons.head(3).items())
        raise DataValidationError(
            f"{len(reasons)} of the inference log's rows joined to an outcome do not match this release's schema "
            f"(the latest prediction of each customer is read), e.g. {named}: correct or delete those rows, or "
            "retrain from --since after them"
        ) from exc
    classes = checked[LABEL_COLUMN].value_counts()
    if len(classes) < 2:
        raise NotRetrained(f"every labelled row in the window has churn={classes.index[0]}: one class cannot train")
    held = in_gate_slice(checked[ID_COLUMN], gate_share)
    gate, train = checked[held], checked[~held]

    def enough(part: pd.DataFrame, label: str) -> None:
        """As data.split asks of a split: --gate-share 0.99 trained on 49 rows, 0.003 gated on 14."""
        if counts := data.short_of_a_class(part[LABEL_COLUMN]):
            advice = "ingest more outcomes, widen --since" + ("" if base is not None else ", add --base FILE")
            advice += "" if 0.2 <= gate_share <= 0.3 else ", or choose a --gate-share nearer 0.25"
            raise NotRetrained(f"the {label} has {counts} rows by {LABEL_COLUMN} (--gate-share "
                               f"{gate_share}): each side needs at least {data.MIN_ROWS_PER_CLASS} of each class; "
                               f"{advice}")  # fmt: skip

    enough(gate, "held-out gate slice of the recent rows")
    # The gate draws no verdict from fewer (gate.too_few): the version would be fitted, registered
    # and refused, with no figures recorded, so no hold on the next trigger: a version a day.
    classes = by_class(gate[LABEL_COLUMN])
    if not judgeable(len(gate), classes):
        raise NotRetrained(f"the held-out gate slice has {len(gate)} customers ({classes[1]} churned): the "
                           f"gate judges on at least {LEAST_GATE_ROWS}, {LEAST_GATE_CLASS} of each class; ingest "
                           "more outcomes, widen --since, or raise --gate-share")  # fmt: skip
    base_rows = 0
    if base is not None:
        if ID_COLUMN not in base:
            raise DataValidationError(f"--base needs a {ID_COLUMN} column: without it, customers held out for the "
                                      "gate could be trained on too")  # fmt: skip
        # Not only the gate's customers: a recent customer's base row is an older label of the same
        # customer (the usual base is the customer file the log's customers come from), trained on
        # beside the new one, so the model learnt half of the change it was retrained for.
        base = base[~base[ID_COLUMN].astype(str).isin(set(checked[ID_COLUMN].astype(str)))]
        base_rows = len(base)
        train = pd.concat([train, base], ignore_index=True)
    enough(train, "training part" + (" (recent rows and --base)" if base_rows else " of the recent rows"))
    return TrainingSet(train=train.reset_index(drop=True), gate=gate.reset_index(drop=True),
                       recent_rows=len(checked), base_rows=base_rows)  # fmt: skip


def production_parameters(client: MlflowClient, name: str, version: int,
                          overridden: Collection[str] = ()) -> dict[str, Any]:  # fmt: skip
    """The training parameters of Production's run, for a retrain that changes only the data;
    the decision threshold Production serves with (its version's tag, which `mlflow run` sets
    when it logs the parameter empty, and a user may have changed in the UI). Those the
    retrain is given (``overridden``) are neither taken nor checked."""
    registered = registry.get_version(client, name, version)
    try:
        params = client.get_run(registered.run_id).data.params if registered.run_id else {}
    except MlflowException as exc:  # purged (`mlflow gc`): was a traceback, exit 70 "a bug"
        if not registry.is_missing(exc):
            raise
        raise NotFoundError(f"the training run {registered.run_id} of {name} v{version} no longer exists (deleted "
                            "for good): a retrain keeps Production's parameters and cannot read them; train the "
                            "next version with `churn-platform train`") from None  # fmt: skip
    # Not given: empty, None, or '' (how `mlflow run` logs an empty parameter: shell-quoted).
    inherited = {k: (params[k], f"run parameter {k}", "train the next version with `churn-platform train`")
                 for k in _INHERITED
                 if k in params and params[k] not in ("", "None", "''") and k not in overridden}  # fmt: skip
    if registered.tags.get(TAG_THRESHOLD) and "decision_threshold" not in overridden:
        inherited["decision_threshold"] = (registered.tags[TAG_THRESHOLD], f"tag {TAG_THRESHOLD}",
                                           "correct the tag in the MLflow UI")  # fmt: skip
    typed = {}
    for key, (value, where, mend) in inherited.items():
        try:
            typed[key] = _typed(key, value)
            check_parameter(key, typed[key])
        except (ValueError, OverflowError, DataValidationError) as exc:
            # Edited in the UI, say ("0,3"): the retrain reuses it, so the user must hear whose it is.
            why = exc if isinstance(exc, DataValidationError) else f"{value!r} is not a number"
            raise ChurnPlatformError(f"Production v{version}'s {where}={value!r}, which a retrain reuses, is "
                                     f"refused ({why}): {mend}") from None  # fmt: skip
    return typed


@contextlib.contextmanager
def exclusive(url: str, name: str) -> Iterator[None]:
    """One retrain of a model at a time: two at once (a Job created by hand beside the
    schedule's) both registered, and the later Challenger silently replaced the other. A
    session-level advisory lock on a PostgreSQL log, a file lock beside a SQLite one (one
    machine: a cron job and a retrain by hand), each let go however the process ends; raises
    ``NotRetrained`` while another holds it."""
    engine = make_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            with _file_lock(sqlite_file(url), name):
                yield
            return
        if engine.dialect.name != "postgresql":
            yield
            return
        key = int.from_bytes(hashlib.blake2b(f"churn-platform retrain {name}".encode(), digest_size=8).digest(),
                             "big", signed=True)  # fmt: skip
        try:  # autocommit: a transaction idle for the whole training could meet idle_in_transaction_session_timeout
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except (sa.exc.DatabaseError, sa.exc.InterfaceError) as exc:
            raise read_failure(exc, engine.url.render_as_string()) from exc
        with conn:
            try:
                held = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
                holder = None if held else conn.execute(sa.text(_HOLDER), {"key": key}).first()
            except (sa.exc.DatabaseError, sa.exc.InterfaceError) as exc:
                raise read_failure(exc, engine.url.render_as_string()) from exc
            if not held:
                by = f" (session pid {holder.pid} from {holder.client or 'a local socket'}, connected at " \
                     f"{holder.backend_start:%Y-%m-%d %H:%M:%S %Z})" if holder else ""  # fmt: skip
                raise NotRetrained(f"another retrain of {name!r} is running{by}: it holds the retrain lock in the "
                                   "inference log's database, so this one stops, registering nothing")  # fmt: skip
            try:
                yield
            finally:
                with contextlib.suppress(sa.exc.SQLAlchemyError):  # gone with the session anyway
                    if not conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key}).scalar():
                        # Not ours to let go: the connection changed under us (PgBouncer, transaction mode).
                        log.warning("the retrain lock was not held at the end: another retrain may have run at "
                                    "the same time; point --inference-log-url at PostgreSQL or a session pool")
    finally:
        engine.dispose()


@contextlib.contextmanager
def _file_lock(database: Path | None, name: str) -> Iterator[None]:
    """``flock`` on a file beside the SQLite log: the kernel lets go when the process ends."""
    if database is None:  # in memory, or a file: URI: no file beside it to lock
        yield
        return
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()  # a model name is no file name
    path = Path(f"{database}.retrain-{digest}.lock")
    try:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # another user's (the cron job's): flock takes a read-only file too
            descriptor = os.open(path, os.O_RDONLY)
    except OSError as exc:  # a log read from a read-only folder (a copy) still retrains
        _unlocked(path, exc)
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NotRetrained(f"another retrain of {name!r} is running: it holds the retrain lock {path}, so this one "
                               "stops, registering nothing") from None  # fmt: skip
        except OSError as exc:  # no locks on this filesystem (some NFS)
            _unlocked(path, exc)
        yield
    finally:
        os.close(descriptor)  # closing lets go


def _unlocked(path: Path, exc: OSError) -> None:
    log.warning("no retrain lock (%s: %s): a second retrain at the same time would register too", path, exc.strerror)


#: Who holds a retrain lock: a node that died keeps its session (and the lock) until the
#: server's keepalive gives up; the pid is what pg_terminate_backend takes.
_HOLDER = """SELECT a.pid, host(a.client_addr) AS client, a.backend_start FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
AND ((l.classid::bigint << 32) | l.objid::bigint) = :key"""


class RetrainResult(BaseModel):
    """What a retrain did: the decision, the data, and the version it registered."""

    model_config = ConfigDict(frozen=True)

    decision: Decision
    production_version: int
    version: int | None = None
    run_id: str | None = None
    recent_rows: int = 0
    base_rows: int = 0
    gate_rows: int = 0
    gate: dict[str, Any] | None = None
    challenger: bool = False
    rollout: dict[str, Any] | None = None
    #: The rollout of another version running beside the new Challenger (``--rollout`` started none).
    rollout_not_started: str | None = None


def retrain(
    settings: Settings,
    *,
    trigger: Trigger = "always",
    of: int = 3,
    at_least: int = 2,
    since: datetime | None = None,
    base: str | None = None,
    inference_log_url: str | None = None,
    gate_share: float = 0.25,
    parameters: dict[str, Any] | None = None,
    rollout_mode: Literal["shadow", "canary"] | None = None,
    percent: int | None = None,
) -> RetrainResult:
    """Decide, build the training set, train and gate; register only when every step worked."""
    from churn_platform import rollout as rollout_mod
    from churn_platform.training import gated_frame, train
    from churn_platform.training_config import TrainConfig

    if not 1 <= at_least <= of:
        raise ChurnPlatformError(f"--at-least must be between 1 and --of ({of}), got {at_least}")
    if not 0 < gate_share < 1:
        raise ChurnPlatformError(f"the gate share must be between 0 and 1, got {gate_share}")
    if rollout_mode == "canary" and percent is None:  # checked before anything is registered
        raise ChurnPlatformError(f"--rollout canary needs --percent ({CANARY_PERCENT[0]} to {CANARY_PERCENT[1]})")
    name = settings.model_name
    client = registry.connect(settings)
    log_url = inference_log_url or settings.inference_log_url

    def decided() -> tuple[int, Decision]:
        production = promotion.current_production(client, name)
        if production is None:
            raise NotRetrained(f"no version of {name!r} holds Production: promote one with "
                               "`churn-platform promote --version N`")  # fmt: skip
        decision = decide(client, settings, production, trigger, of, at_least, parameters)
        since = decision.held_since
        job_metrics.record("churn_retrain_held_since_timestamp_seconds", since.timestamp() if since else 0)
        if not decision.retrain:
            raise NotRetrained(decision.reason, decision)
        return production, decision

    # What a typo breaks is found on the first day, not on the day a retrain is due (most days
    # end at the decision): the log is connected to (the registry's database or a down one read
    # "not retrained" every day) and --base looked for (not read).
    _require_log(log_url)
    if base:
        with _named("--base", base):
            data.modified_time(base, settings.s3_endpoint_url)
    with registry.translate_errors(settings):  # first without the lock: most days end here, the log untouched
        decided()
    with exclusive(log_url, name), registry.translate_errors(settings):
        production, decision = decided()  # again: a retrain that held the lock may have registered since
        given = parameters or {}
        inherited = _training_parameters(client, name, production, given)
        recent = labelled(log_url, name, since, settings.outcome_horizon_days, settings.outcome_maturity_days)
        with _named("--base", base):
            base_frame = data.load(base, settings.s3_endpoint_url) if base else None
        parts = training_set(recent, base_frame, min_rows=settings.retrain_min_rows, gate_share=gate_share)
        if len(parts.train) < settings.monitor_min_rows:  # its training rows are the monitor's reference
            raise NotRetrained(
                f"the training part would have {len(parts.train)} rows, fewer than CHURN_MONITOR_MIN_ROWS "
                f"({settings.monitor_min_rows}): the drift monitor could never judge the version; ingest more "
                f"outcomes, widen --since, add --base FILE or lower --gate-share ({gate_share:g})"
            )
        digest = data.digest(gated_frame(parts.train, parts.gate))
        if decision.refused_version is not None:
            refused = registry.get_version(client, name, decision.refused_version)
            if refused.tags.get(TAG_DATA_DIGEST) == digest:
                raise NotRetrained(f"the training data is the same as v{decision.refused_version}'s, which the gate "
                                   "refused: ingest new outcomes (or change --since or --base)")  # fmt: skip
        if (same := _same_as_last(client, name, production, digest, inherited)) is not None:
            # `--if always` weekly with no outcome since: the same model under a new number each week.
            raise NotRetrained(f"the training data and parameters are the same as v{same}'s, the last retrain against "
                               f"Production v{production}: it would be the same model; ingest new outcomes (or "
                               f"change --since, --base, --gate-share or --model-type, or delete v{same} to train "
                               "it again)")  # fmt: skip
        config = TrainConfig(
            data=f"inference log + outcomes since {since.isoformat() if since else 'the start'}"
                 + (f" + {base}" if base else ""),
            model_name=name,
            **inherited,
        )  # fmt: skip
        window = f"{since.isoformat() if since else 'start'}..{datetime.now(UTC).isoformat(timespec='seconds')}"
        tags = {TAG_TRIGGER: f"{trigger}: {decision.reason}"[:250], TAG_WINDOW: window,
                TAG_RECENT_ROWS: str(parts.recent_rows), TAG_BASE_ROWS: str(parts.base_rows),
                TAG_GATE_ROWS: str(len(parts.gate))}  # fmt: skip
        source = {"inference_log": redacted(log_url), "window": window, **({"base": base} if base else {})}
        result = train(config, settings, frame=parts.train, gate_rows=parts.gate, tags=tags, built_from=source)
        started, kept = None, None
        running = rollout_mod.current(client, name, production) if result.challenger else None
        if running is not None and running.mode != "off":
            # Someone's canary of another version ended without a word: it is theirs to stop. Nor
            # does the moved alias change what it serves, which only this line says.
            by = f" (started by {running.started_by}{': ' + running.reason if running.reason else ''})"
            mode = rollout_mode or running.mode
            share = f" --percent {percent or running.percent}" if mode == "canary" else ""
            kept = (f"a {running.mode} of v{running.challenger_version} is running{by if running.started_by else ''}, "
                    + ("so none was started" if rollout_mode else f"and goes on serving v{running.challenger_version}")
                    + f"; `churn-platform rollout start --mode {mode}{share} --version {result.version}` replaces it")
        elif running is not None and rollout_mode:
            state = rollout_mod.start(client, name, mode=rollout_mode, percent=percent, version=result.version,
                                      reason=f"retrained ({trigger})", actor=promotion.default_actor())  # fmt: skip
            started = state.model_dump(mode="json")
    return RetrainResult(
        decision=decision, production_version=production, version=result.version, run_id=result.run_id,
        recent_rows=parts.recent_rows, base_rows=parts.base_rows, gate_rows=len(parts.gate),
        gate=result.gate.model_dump(mode="json", by_alias=True), challenger=result.challenger, rollout=started,
        rollout_not_started=kept,
    )  # fmt: skip


def _typed(key: str, value: Any) -> Any:
    """Run parameters come back from MLflow as text."""
    if key in ("max_iter", "max_depth", "seed"):
        return int(float(value))
    if key in ("c", "learning_rate", "decision_threshold"):
        return float(value)
    return value
