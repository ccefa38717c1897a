"""Rollout state of a registered model: serve the Challenger beside Production, in shadow or
as a canary, decided in the registry so every API replica follows the same state.

The state is one registered-model tag (``contract.ROLLOUT_TAG``, JSON); each change is an
audit event beside the promotions, so ``churn-platform history`` tells the whole story.
``promote`` moves Production through the same gate and audit trail as ``churn-platform
promote``, then ends the rollout.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, ValidationError

from churn_platform import promotion, registry
from churn_platform.contract import CHALLENGER_ALIAS, ROLLOUT_TAG
from churn_platform.errors import NotFoundError

Mode = Literal["off", "shadow", "canary"]


class RolloutState(BaseModel):
    """What serves beside Production, and who decided it, when and why."""

    model_config = ConfigDict(frozen=True)

    mode: Mode = "off"
    #: Share of customers (by a stable hash of their id) the Challenger answers in canary mode.
    percent: int | None = None
    challenger_version: int | None = None
    production_version: int | None = None
    started_by: str | None = None
    started_at: str | None = None
    reason: str = ""


class RolloutError(NotFoundError):
    """A rollout change that cannot be made as asked (exit 2); nothing was changed."""


def current(client: MlflowClient, name: str) -> RolloutState:
    """The rollout state in the registry (``off`` when none was ever started)."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(f"registered model {name!r} does not exist") from exc
        raise
    raw = tags.get(ROLLOUT_TAG)
    if not raw:
        return RolloutState()
    try:
        return RolloutState.model_validate_json(raw)
    except ValidationError:
        return RolloutState(reason=f"unreadable {ROLLOUT_TAG} tag ignored: {raw[:100]!r}")


def _save(client: MlflowClient, name: str, state: RolloutState) -> None:
    client.set_registered_model_tag(name, ROLLOUT_TAG, json.dumps(state.model_dump(mode="json"), sort_keys=True))


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
    if mode == "canary" and (percent is None or not 1 <= percent <= 99):
        raise RolloutError(f"--percent must be between 1 and 99 for a canary, got {percent}")
    if mode == "shadow" and percent is not None:
        raise RolloutError("--percent applies to canary only: in shadow every customer is scored by both models")
    production = promotion.current_production(client, name)
    if production is None:
        raise RolloutError(f"no version of {name!r} holds Production: there is nothing to roll out beside")
    if version is None:
        challenger = registry.version_by_alias(client, name, CHALLENGER_ALIAS) or registry.version_by_alias(
            client, name, CHALLENGER_ALIAS.lower()
        )
        if challenger is None:
            raise RolloutError(
                f"no version of {name!r} holds {CHALLENGER_ALIAS} (training sets it when a version passes the gate); "
                "name one with --version"
            )
        version = int(challenger.version)
    promotion.ready_version(client, name, version)
    if version == production:
        raise RolloutError(f"v{version} already holds Production: a rollout needs another version")
    actor = actor or promotion.default_actor()
    state = RolloutState(
        mode=mode, percent=percent, challenger_version=version, production_version=production, started_by=actor,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"), reason=reason,
    )  # fmt: skip
    what = f"{mode} {percent}%" if mode == "canary" else mode
    promotion.record(client, name, "rollout-start", production, version, actor=actor,
                     reason=f"{what}: {reason}".rstrip(": "))  # fmt: skip
    _save(client, name, state)
    return state


def stop(client: MlflowClient, name: str, *, reason: str = "", actor: str | None = None) -> RolloutState:
    """End the rollout: all traffic back to Production alone."""
    before = current(client, name)
    if before.mode == "off":
        raise RolloutError(f"no rollout of {name!r} is running; nothing changed")
    promotion.record(client, name, "rollout-stop", before.production_version, before.challenger_version,
                     actor=actor, reason=reason or f"{before.mode} stopped")  # fmt: skip
    state = RolloutState()
    _save(client, name, state)
    return state


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
    state = current(client, name)
    if state.mode == "off" or state.challenger_version is None:
        raise RolloutError(f"no rollout of {name!r} is running: start one, or use `churn-platform promote`")
    result = promotion.promote(client, name, state.challenger_version, reason=reason or f"after {state.mode}",
                               actor=actor, force=force, tolerance=tolerance)  # fmt: skip
    stop(client, name, reason=f"promoted v{state.challenger_version}", actor=actor)
    return result
