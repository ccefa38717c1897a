"""Holds the model being served and replaces it safely.

Loading happens in a background thread; the new model is verified before a single
attribute assignment swaps it in. A request takes one reference to the current model and
uses it to the end, so in-flight requests finish on the old model and none fails during
a swap. A version that fails to load or verify is never swapped in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from churn_platform import loading, registry, rollout, tracing
from churn_platform.errors import (
    ChurnPlatformError,
    NotFoundError,
    RegistryNotFound,
    RegistryUnreachable,
    StorageUnreachable,
)
from churn_platform.loading import LoadedModel
from churn_platform.settings import Settings
from serving.heap import settle_heap

log = logging.getLogger(__name__)

#: A version that failed to load (a Challenger, or a Production while another version serves)
#: is tried again after this pause, doubled at each failure up to the longest: each try
#: downloads and verifies it under the load lock, on every replica.
RETRY_S, RETRY_MAX_S = 60.0, 900.0

State = Literal[
    "starting", "loading", "ready", "registry_unreachable", "alias_missing", "verification_failed", "load_failed",
    "challenger_failed",
]  # fmt: skip


@dataclass(frozen=True)
class Attempt:
    """The outcome of the latest load attempt, for /ready and /model."""

    state: State
    reason: str
    version: int | None = None
    at: str = ""


@dataclass(frozen=True)
class ActiveRollout:
    """The registry's rollout state and the verified Challenger that serves it; swapped as one."""

    state: rollout.RolloutState
    model: LoadedModel


@dataclass(frozen=True)
class _Failure:
    """A version that failed to load: ``what`` (a Challenger's (version, rollout start), or a
    Production version while an older one serves), why, and when to try it again (monotonic,
    and as a UTC time for ``/model``): each try loads it whole, model and reference rows."""

    what: object
    state: State
    reason: str
    pause: float
    retry_at: float
    retry_time: str

    @classmethod
    def after(cls, before: _Failure | None, what: object, state: State, reason: str) -> _Failure:
        """``what`` failing now: the pause doubled from ``before``'s when that was the same, else the first."""
        pause = min(before.pause * 2, RETRY_MAX_S) if before is not None and before.what == what else RETRY_S
        at = (datetime.now(UTC) + timedelta(seconds=pause)).isoformat(timespec="seconds")
        return cls(what, state, reason, pause, time.monotonic() + pause, at)

    def holds(self, what: object) -> bool:
        """Whether ``what`` is this failure's and its pause has not run out."""
        return self.what == what and time.monotonic() < self.retry_at


class LoadListener(Protocol):
    """Told about each load's outcome (the metrics implement it)."""

    def model_loaded(self, model: LoadedModel) -> None: ...

    def load_failed(self, attempt: Attempt) -> None: ...

    def registry_answered(self) -> None: ...


class ModelHolder:
    def __init__(self, settings: Settings, listener: LoadListener | None = None) -> None:
        self.settings = settings
        self.current: LoadedModel | None = None
        self.last = Attempt("starting", "the service is starting")
        #: The Challenger beside Production while a rollout runs (None: Production alone).
        self.rollout: ActiveRollout | None = None
        #: How following the rollout state went last: "off", "serving vN", or why not.
        self.rollout_status = "off"
        self._challenger_failure: _Failure | None = None
        self._production_failure: _Failure | None = None
        #: This poll's Challenger met an outage: the poll's "ready" must not end the streak it began.
        self._challenger_outage = False
        self._lock = threading.RLock()  # one load at a time (re-entered by a queued reload)
        self._reload_queued: Future[Attempt] | None = None
        self._queue_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = listener

    # ---------------------------------------------------------------- loading

    def _record(self, state: State, reason: str, version: int | None = None) -> Attempt:
        self.last = Attempt(state, reason, version, datetime.now(UTC).isoformat(timespec="seconds"))
        answered = state not in ("starting", "loading", "registry_unreachable") and not self._challenger_outage
        if self._listener and answered:
            self._listener.registry_answered()  # and its artifact store: the attempt got past both
        return self.last

    def load_production(self, retry: bool = False) -> Attempt:
        """Resolve Production and, if it is not what we serve, load, verify and swap it in: one
        trace (``model.reload``) with its resolve and its loads, Production's and a Challenger's.
        ``retry``: an operator's reload, which tries a Challenger that failed at once."""
        name = self.settings.model_name
        with self._lock, tracing.span("model.reload", {"churn.model_name": name}):
            self._challenger_outage = False
            if retry:
                self._challenger_failure = self._production_failure = None
            default = self.settings.decision_threshold
            client, version = None, None
            try:
                client = registry.connect(self.settings)
                with registry.translate_errors(self.settings):
                    with tracing.span("registry.resolve", {"churn.model_name": name}):
                        version = loading.resolve(client, name)
                    if self.current is not None and self.current.version == version:
                        self._production_failure = None  # moved back to what serves
                        self.current = loading.refreshed(client, self.current, default_threshold=default)
                        self._follow_rollout(client, version)
                        return self._record("ready", f"serving {name} v{version}", version)
                    if self.rollout is not None and self.rollout.model.version == version:
                        # The Challenger promoted: loaded and verified already. Loading it again held
                        # three models at once, and a failed load ended its canary on this replica.
                        model = loading.refreshed(client, self.rollout.model, default_threshold=default)
                    elif (held := self._failed_before(version)) is not None:
                        return self._not_loaded(client, version, held.state,
                                                f"{held.reason[:400]} (tried again after {held.retry_time}, or at "
                                                "once by POST /admin/reload)")  # fmt: skip
                    else:
                        self._record("loading", f"loading {name} v{version}", version)
                        with tracing.span("model.load", {"churn.model_name": name, "churn.model_version": version}):
                            model = loading.load(
                                client, name, version,
                                default_threshold=self.settings.decision_threshold,
                                sample=self.settings.verify_sample_rows,
                            )  # fmt: skip
            except (RegistryUnreachable, RegistryNotFound, StorageUnreachable) as exc:  # none can be missing yet
                return self._fail("registry_unreachable", str(exc))
            except NotFoundError as exc:
                return self._not_loaded(client, version, "alias_missing", str(exc))
            except loading.VerificationFailed as exc:
                return self._production_failed(client, version, "verification_failed", str(exc))
            except ChurnPlatformError as exc:
                return self._production_failed(client, version, "load_failed", str(exc))
            except Exception as exc:  # noqa: BLE001 - any load failure keeps the old model serving
                if registry.is_connection_error(exc):
                    return self._fail("registry_unreachable", f"registry or artifact store unreachable: {exc}"[:500])
                return self._production_failed(client, version, "load_failed", f"{type(exc).__name__}: {exc}"[:500])
            # The Challenger first: a replica that becomes ready already routes as the others do.
            self._follow_rollout(client, model.version)
            self.current, self._production_failure = model, None  # the atomic swap
            settle_heap()
            if self._listener:
                self._listener.model_loaded(model)
            log.info("serving %s v%s (%s scorer, max |diff| %.2g on %d rows)", name, model.version,
                     model.scorer_kind, model.max_abs_difference, model.verified_rows)  # fmt: skip
            return self._record("ready", f"serving {name} v{model.version}", model.version)

    def _follow_rollout(self, client: object, production: int) -> None:
        """Load and verify the rollout's Challenger exactly as Production; whatever fails here
        leaves Production serving alone and is only reported (``/model``, metrics)."""
        name = self.settings.model_name
        state = None
        try:
            with registry.translate_errors(self.settings):
                state = rollout.current(client, name, production)  # type: ignore[arg-type]
                version = state.challenger_version
                if state.mode == "off" or version is None:
                    self.rollout, self.rollout_status = None, f"off: {state.reason}" if state.reason else "off"
                    self._challenger_failure = None
                    return
                note = ""
                if self.rollout is not None and self.rollout.model.version == version:  # mode, percent or tags changed
                    model = self.rollout.model
                    try:
                        with registry.translate_errors(self.settings):
                            model = loading.refreshed(client, model, default_threshold=self.settings.decision_threshold)
                    except RegistryUnreachable as exc:  # not read is not failed: it serves on as it was
                        note = f" (kept: its tags could not be read: {exc})"
                        log.warning("rollout: Challenger v%s's tags unreadable, kept: %s", version, exc)
                    self.rollout = ActiveRollout(state, model)
                elif self._failed_lately((version, state.started_at)):
                    return
                else:
                    with tracing.span("model.load", {"churn.model_name": name, "churn.model_version": version or 0,
                                                     "churn.arm": "challenger"}):  # fmt: skip
                        model = loading.load(client, name, version, default_threshold=self.settings.decision_threshold,  # type: ignore[arg-type]
                                             sample=self.settings.verify_sample_rows)  # fmt: skip
                    self.rollout = ActiveRollout(state, model)
                    settle_heap()
                    log.info("rollout: %s with Challenger v%s", state.mode, version)
                self.rollout_status = f"{state.mode}: serving Challenger v{version}{note}"[:500]
                self._challenger_failure = None
        except Exception as exc:  # noqa: BLE001 - a Challenger never takes Production down
            outage = isinstance(exc, RegistryUnreachable | StorageUnreachable) or registry.is_connection_error(exc)
            if state is None and outage:  # not read is not failed: route as before (a locked SQLite file too)
                kept = self.rollout_status.split(" (kept: ", 1)[0]
                self.rollout_status = f"{kept} (kept: the rollout state could not be read: {exc})"[:500]
                log.warning("rollout: state unreadable, routing unchanged: %s", exc)
                return
            self.rollout = None
            self.rollout_status = f"Challenger not served: {type(exc).__name__}: {exc}"[:500]
            log.warning("rollout: %s", self.rollout_status)
            self._challenger_outage = outage  # ChurnRegistryUnreachable's streak goes on while it lasts
            if self._listener:  # an outage is not a broken Challenger: its alert is not this one's
                self._listener.load_failed(Attempt("registry_unreachable" if outage else "challenger_failed",
                                                   self.rollout_status))  # fmt: skip
            if state is not None and state.challenger_version is not None and not outage:  # an outage: next poll
                tried = (state.challenger_version, state.started_at)
                self._challenger_failure = _Failure.after(self._challenger_failure, tried, "challenger_failed",
                                                          self.rollout_status)  # fmt: skip

    def _failed_lately(self, rollout: tuple[int, str | None]) -> bool:
        """Whether this rollout's Challenger (version, start) failed to load and its pause has not
        run out: then it is not tried again, but still reported and counted (the alert stays). A
        rollout started again (`rollout stop`, `start`) tries at once."""
        failed = self._challenger_failure
        if failed is None or not failed.holds(rollout):
            return False
        self.rollout = None
        self.rollout_status = (f"{failed.reason[:400]} (tried again after {failed.retry_time}, "
                               "or at once by POST /admin/reload on this replica)")  # fmt: skip
        if self._listener:
            self._listener.load_failed(Attempt("challenger_failed", self.rollout_status))
        return True

    def _failed_before(self, version: int) -> _Failure | None:
        """This Production version's last failure, while its pause runs (polls skip it)."""
        failed = self._production_failure
        return failed if failed is not None and failed.holds(version) else None

    def _production_failed(self, client: object | None, version: int | None, state: State, reason: str) -> Attempt:
        """A Production that does not load or verify while another version serves: not tried again
        for a pause (60 s, doubling to 15 minutes for the same version; an operator's reload tries
        at once). At start-up, with nothing serving, the start-up backoff applies instead."""
        if version is not None and self.current is not None:
            self._production_failure = _Failure.after(self._production_failure, version, state, reason)
        return self._not_loaded(client, version, state, reason)

    def _not_loaded(self, client: object | None, production: int | None, state: State, reason: str) -> Attempt:
        """Production (``production``, when resolved) did not load: the old version serves on,
        beside no Challenger once Production is another version, and still following the
        registry otherwise: a `rollout stop` ignored here left it routing customers to the Challenger."""
        if client is not None and self.current is not None:
            if production is not None and production != self.current.version:
                # A rollout runs beside the Production it names: beside the older version this
                # replica still serves, its Challenger would answer customers no other replica's does.
                self.rollout = None
                self.rollout_status = (f"off here: this replica serves v{self.current.version}, not Production "
                                       f"v{production}, which it could not load")  # fmt: skip
            else:
                self._follow_rollout(client, self.current.version)
        return self._fail(state, reason)

    def _fail(self, state: State, reason: str) -> Attempt:
        attempt = self._record(state, reason)
        log.warning("model not (re)loaded: %s: %s", state, reason)
        if self._listener:
            self._listener.load_failed(attempt)
        return attempt

    # ---------------------------------------------------------------- background work

    def _spawn(self, target: Callable[[], object], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    def start(self) -> None:
        """Keep trying to load Production with backoff until it serves; then poll if configured."""

        def run() -> None:
            delay = 0.5
            while not self._stop.is_set() and self.current is None:
                attempt = self.load_production()
                if self.current is not None:
                    break
                log.info("not ready (%s); retrying in %.1fs", attempt.state, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.settings.startup_backoff_max_s)
            interval = self.settings.reload_poll_s
            while interval and not self._stop.wait(interval):
                self.load_production()

        self._spawn(run, "model-loader")

    def queue_reload(self) -> Future[Attempt]:
        """Queue an operator's reload (``POST /admin/reload``); its future holds the outcome
        for a caller that waits (``?wait=true``). One still waiting for the running load covers
        every later call: it resolves Production only once it runs, so a burst of calls (a
        script retrying against a hung registry) costs at most two loads and two threads. A
        daemon thread of the holder's: a load still running when the process stops never holds
        its exit, as a worker thread of the server's did."""
        with self._queue_lock:
            if self._reload_queued is not None:
                return self._reload_queued
            outcome: Future[Attempt] = Future()
            self._reload_queued = outcome

        def run() -> None:
            with self._lock:
                with self._queue_lock:
                    self._reload_queued = None
                if outcome.set_running_or_notify_cancel():
                    try:
                        outcome.set_result(self.load_production(retry=True))
                    except BaseException as exc:  # noqa: BLE001 - the waiting caller's to raise
                        log.exception("reload failed")  # no one may be waiting
                        outcome.set_exception(exc)

        self._spawn(run, "model-reload")
        return outcome

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
