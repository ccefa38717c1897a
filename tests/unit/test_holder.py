"""The model holder's background reloads: a burst of ``POST /admin/reload`` calls must not
queue a model load (seconds, hundreds of MiB) per call, nor keep a thread per call."""

from __future__ import annotations

import threading
import time

from churn_platform.settings import Settings
from serving.holder import ModelHolder
from tests.unit.conftest import registry_copy


def test_a_burst_of_reloads_costs_at_most_two_loads(tmp_path):
    holder = ModelHolder(Settings(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    release, loads = threading.Event(), []

    def slow_load(retry: bool = False):
        assert retry  # an operator's reload: a Challenger that failed is tried at once
        with holder._lock:  # as the real one: one load at a time
            loads.append(1)
            release.wait(10)

    holder.load_production = slow_load  # the load itself is what the integration tests cover
    first = holder.queue_reload()
    deadline = time.monotonic() + 10
    while not loads:  # the first load runs and holds the lock
        assert time.monotonic() < deadline, "the first reload never began"
        threading.Event().wait(0.01)
    queued = {holder.queue_reload() for _ in range(200)}
    assert len(queued) == 1 and first not in queued  # one reload waits; it resolves Production when it runs
    release.set()
    holder.stop(timeout=10)
    assert len(loads) == 2
    assert len(holder._threads) <= 2  # finished threads are not kept

    holder.queue_reload().result(10)  # a later call, after both finished, loads again
    for thread in holder._threads:
        thread.join(10)
    assert len(loads) == 3 and sum(t.is_alive() for t in holder._threads) == 0


def test_waited_reloads_share_the_one_queued_behind_the_running_load(tmp_path):
    """?wait=true started a thread and a load per call: a script retrying against a hung
    registry piled them up, one load after another. Each waiter gets the outcome of the load
    that covered its call."""
    holder = ModelHolder(Settings(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    release, loads = threading.Event(), []

    def slow_load(retry: bool = False):
        with holder._lock:
            loads.append(1)
            release.wait(10)
            return f"load {len(loads)}"

    holder.load_production = slow_load
    first = holder.queue_reload()
    deadline = time.monotonic() + 10
    while not loads:
        assert time.monotonic() < deadline, "the first reload never began"
        threading.Event().wait(0.01)
    queued = {id(holder.queue_reload()) for _ in range(200)}
    assert len(queued) == 1 and id(first) not in queued
    later = holder.queue_reload()
    release.set()
    assert first.result(10) == "load 1" and later.result(10) == "load 2"  # the queued one resolved afresh
    holder.stop(timeout=10)
    assert len(loads) == 2


def test_a_production_that_fails_to_load_is_not_reloaded_at_every_poll(registry_uri, tmp_path, monkeypatch):
    """Each poll downloaded, unpickled and verified a Production that could not serve, to fail
    again (every 30 s on every worker); a Challenger that failed already waited between tries."""
    from mlflow import MlflowClient

    from churn_platform import loading

    uri = registry_copy(registry_uri, tmp_path)  # the session's registry stays as it is
    holder = ModelHolder(Settings(tracking_uri=uri, model_name="churn"))
    assert holder.load_production().state == "ready" and holder.current.version == 1
    client = MlflowClient(uri, uri)
    client.set_model_version_tag("churn", "2", "decision_threshold", "1.5")  # refused when loaded
    client.set_registered_model_alias("churn", "Production", "2")
    real, loads = loading.load, []
    monkeypatch.setattr(loading, "load", lambda *a, **k: loads.append(a[2]) or real(*a, **k))
    first = holder.load_production()
    assert first.state in ("verification_failed", "load_failed") and loads == [2], first
    again = holder.load_production()  # the next poll: reported, not loaded again
    assert loads == [2] and again.state == first.state and "tried again after" in again.reason
    assert holder.current.version == 1  # the old version serves on
    holder.load_production(retry=True)  # an operator's reload tries at once
    assert loads == [2, 2]
    client.set_registered_model_alias("churn", "Production", "1")  # moved back: nothing held
    assert holder.load_production().state == "ready" and holder._production_failure is None
