"""The API's side of the feature store: customers' features by id, for ``/predict/by-id``.

The store is opened in a background thread when the API starts, and only when one is set
up (``CHURN_FEATURE_STORE_URL``, or an embedded store that ``features apply`` created):
Feast takes seconds to import, and an API without a feature store should not pay that or
wait for it. Predictions with features in the body never depend on the store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from fastapi.concurrency import run_in_threadpool

from churn_platform import feature_store
from churn_platform.settings import Settings
from serving.errors import ServingError
from serving.heap import settle_heap

log = logging.getLogger(__name__)
#: Seconds between attempts to open a store that was missing or down.
_RETRY_S = 10.0


class FeaturesUnavailable(ServingError):
    """No feature store is set up, it is still opening, or it cannot be read now."""

    status_code = 503
    headers = {"Retry-After": str(round(_RETRY_S))}  # a store set up or back since is opened at the next try


class FeaturesNotConfigured(ServingError):
    """No feature store is set up here: by-id predictions do not exist on this deployment. Not
    a 503: nothing is down, and any client could page on-call (ChurnApi5xxRate) by asking."""

    status_code = 404


_NOT_CONFIGURED = ("no feature store: set CHURN_FEATURE_STORE_URL, or run `churn-platform features apply`, "
                   "`features ingest` and `features materialize`")  # fmt: skip


class FeatureSource:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._read: Any = None
        self.state, self.reason = "not configured", _NOT_CONFIGURED
        self._lock = threading.Lock()
        self._opened_at = 0.0
        self._opening = False
        #: The embedded online store's file as opened (device, inode): Feast keeps its SQLite
        #: connection, so a store deleted and built again would otherwise be read as it was.
        self._file: tuple[int, int] | None = None

    @property
    def configured(self) -> bool:
        if self.settings.feature_store_url:
            return True
        return (Path(self.settings.feature_store_dir) / "registry.db").exists()

    def start(self) -> None:
        """Open the store in the background (a daemon thread: a hung store never blocks shutdown)."""
        with self._lock:
            self._opened_at = time.monotonic()
            if self._opening:
                return  # one opening at a time: parallel requests after the retry delay start one
            if not self.configured:  # never set up, or deleted since it was opened: the by-id routes' 404
                self.state, self.reason = "not configured", _NOT_CONFIGURED
                return
            self._opening = True
            self.state, self.reason = "opening", "the feature store is opening"
        threading.Thread(target=self._open, name="feature-store-open", daemon=True).start()

    def _open(self) -> None:
        read: Any = None
        if (missing := feature_store.missing_online_store(self.settings)) is not None:
            # Not opened: Feast would make an empty file there (owned by the API's user), a store half-built.
            with self._lock:
                self.state, self.reason, self._opening = "unavailable", missing, False
            log.warning("%s", missing)
            return
        try:
            store = feature_store.open_store(self.settings)
            read = feature_store.online_reader(store, self.settings)
            read(["warm-up"])  # loads the registry and connects, off the request path
        except Exception as exc:  # noqa: BLE001 - any failure is reported by /ready and the by-id routes
            with self._lock:
                self.state, self.reason = "unavailable", feature_store.unavailable_message(exc)
                self._opening = False
            log.warning("%s", self.reason)
            return
        settle_heap()  # Feast's modules and registry: loaded once, kept for good
        with self._lock:
            self._read, self._file = read, self._online_file()
            self.state, self.reason, self._opening = "ok", "online store readable", False
        log.info("feature store open (%s)", "PostgreSQL" if self.settings.feature_store_url else "embedded")

    async def aclose(self) -> None:
        """Release the reader's connections (the API's shutdown)."""
        with self._lock:
            read, self._read = self._read, None
        if read is not None and hasattr(read, "aclose"):
            await read.aclose()

    def _online_file(self) -> tuple[int, int] | None:
        if self.settings.feature_store_url:
            return None
        try:
            found = os.stat(Path(self.settings.feature_store_dir) / "online.db")
        except OSError:
            return None
        return found.st_dev, found.st_ino

    def _replaced(self) -> bool:
        """The embedded store was deleted, or built again, since it was opened: read it afresh."""
        if self._file is None or self._file == self._online_file():
            return False
        with self._lock:
            self._read, self._file = None, None
            self.state, self.reason = "unavailable", "the feature store was replaced since it was opened; reopening"
        log.warning("%s", self.reason)
        self.start()
        return True

    def status(self) -> dict[str, str]:
        return {"state": self.state, "detail": self.reason}

    async def lookup(self, customer_ids: list[str]) -> list[dict[str, Any] | None]:
        """Each id's latest materialized features, None for an id the store does not hold."""
        read = self._read
        if read is not None and not hasattr(read, "aread") and self._replaced():  # embedded: a stat per request
            read = None  # reopening (503), or gone (404)
        if read is None:
            # Set up since (a stat; an SQLAlchemy URL needs none): open it now, not up to 10 s later
            # (404 "run features apply" meanwhile, to whoever had just run it). Down: every 10 s.
            if (self.state == "not configured" and self.configured) or (
                self.state == "unavailable" and time.monotonic() - self._opened_at > _RETRY_S
            ):
                self.start()  # for the next requests
            if self.state == "not configured":
                raise FeaturesNotConfigured(self.reason)
            raise FeaturesUnavailable(self.reason)
        try:
            if hasattr(read, "aread"):  # PostgreSQL: read on the event loop
                found = await read.aread(customer_ids)
            else:  # Feast's own read (embedded) blocks: in a thread
                found = await run_in_threadpool(read, customer_ids)
        except Exception as exc:  # noqa: BLE001 - a store that went away answers 503, never 500
            reason = feature_store.unavailable_message(exc)
            with self._lock:
                self.state, self.reason = "unavailable", reason
            log.warning("%s", reason)
            raise FeaturesUnavailable(reason) from None
        if self.state != "ok":
            with self._lock:
                self.state, self.reason = "ok", "online store readable"
        return found
