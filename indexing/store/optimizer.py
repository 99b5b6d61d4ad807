"""Background optimisation of the embedded store's collections."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("loupe")


class Optimizer:
    """Builds the vector index once enough new points have arrived and writes have paused.

    Qdrant Edge keeps new points in a brute-force segment until `optimize()` runs; that call
    takes tens of seconds per 25k points on 2 cores, so it runs in a background thread while
    searches and upserts go on.
    """

    QUIET_S = 3.0

    def __init__(self, index, after_points: int) -> None:
        self.index, self.after_points = index, after_points
        self._pending: dict[str, int] = {}
        self._last_write = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loupe-optimizer", daemon=True)
        if after_points > 0:
            self._thread.start()

    def wrote(self, name: str, new_points: int) -> None:
        self._pending[name] = self._pending.get(name, 0) + new_points
        self._last_write = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            if time.monotonic() - self._last_write < self.QUIET_S:
                continue
            for name, count in list(self._pending.items()):
                if count >= self.after_points:
                    self._pending[name] = 0
                    try:
                        self.index.optimize(name)
                    except Exception:  # the next search still works, unoptimised
                        log.exception("optimize of %s failed", name)

    def stop(self) -> None:
        self._stop.set()
