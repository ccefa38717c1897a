"""Long-lived heaps parked outside the garbage collector's reach."""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """After a load (a model, the feature store): MLflow, sklearn, Feast and what they load
    leave a large, long-lived heap; a full collection over it stalls requests for 100+ ms (and,
    left in the young generations, a loaded Challenger cost a canary 13 % of its requests/s).
    Park it outside the collector's reach, after releasing what earlier loads parked and no
    longer use (a replaced model, a stopped rollout's Challenger), which would otherwise never
    be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
