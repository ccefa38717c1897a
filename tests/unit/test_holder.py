"""The model holder's background reloads: a burst of ``POST /admin/reload`` calls must not
queue a model load (seconds, hundreds of MiB) per call, nor keep a thread per call."""

from __future__ import annotations

import threading
import time

from churn_platform.settings import Settings
from serving.holder import ModelHolder


def test_a_burst_of_reloads_costs_at_most_two_loads(tmp_path):
    holder = ModelHolder(Settings(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    release, loads = threading.Event(), []

    def slow_load(retry: bool = False):
        assert retry  # an operator's reload: a Challenger that failed is tried at once
        with holder._lock:  # as the real one: one load at a time
            loads.append(1)
            release.wait(10)

    holder.load_production = slow_load  # the load itself is what the integration tests cover
    first = holder.reload_in_background()
    deadline = time.monotonic() + 10
    while not loads:  # the first load runs and holds the lock
        assert time.monotonic() < deadline, "the first reload never began"
        threading.Event().wait(0.01)
    queued = {holder.reload_in_background() for _ in range(200)}
    assert len(queued) == 1 and first not in queued  # one reload waits; it resolves Production when it runs
    release.set()
    holder.stop(timeout=10)
    assert len(loads) == 2
    assert len(holder._threads) <= 2  # finished threads are not kept

    holder.reload_in_background().join(10)  # a later call, after both finished, loads again
    assert len(loads) == 3 and sum(t.is_alive() for t in holder._threads) == 0
