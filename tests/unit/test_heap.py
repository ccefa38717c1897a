"""``settle_heap``: what a load leaves is parked out of the collector's way, and what an earlier
load parked and no longer uses is released (a replaced model must not stay in memory)."""

from __future__ import annotations

import gc
import weakref

from serving.heap import settle_heap


class _Model:
    """Stands for a loaded model: a cycle, which only the collector frees."""

    def __init__(self) -> None:
        self.itself = self


def test_a_load_is_parked_and_a_replaced_one_is_released_at_the_next_settling():
    try:
        old = _Model()
        gone = weakref.ref(old)
        settle_heap()  # the first load, parked
        assert gc.get_freeze_count() > 0
        del old  # replaced: unreachable now, but frozen objects are never collected...
        gc.collect()
        assert gone() is not None
        settle_heap()  # ...until the next load settles the heap
        assert gone() is None
    finally:
        gc.unfreeze()
