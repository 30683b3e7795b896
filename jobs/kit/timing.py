"""Where a job's wall time goes: its phases, timed on the driver and logged as they end.

A small run is mostly fixed cost (interpreter and imports, Ray start, MLflow set-up, the
data plan, the worker group, the first step, the export, the registry); every phase is a
log line ``phase NAME: S s`` and, once the job's MLflow run exists, a ``time/NAME_s``
metric, so the cost of a run can be read in either place and compared between runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("phases")


def process_age_s() -> float:
    """Seconds since this process started (the interpreter and imports before main)."""
    import psutil  # a dependency of ray[default]

    return max(0.0, time.time() - psutil.Process(os.getpid()).create_time())


def log_phase(name: str, seconds: float) -> None:
    """The line ``phase NAME: S s`` (bench/fixed_cost.py reads these)."""
    logger.info("phase %s: %.2f s", name, seconds)


class Phases:
    """The driver's phase clock. ``startup`` (from process start to this object; off in a
    process that runs other things first) is the first phase; each
    ``with phases("name"):`` block adds one; :meth:`log_to` sends them all to a run."""

    def __init__(self, startup: bool = True) -> None:
        self.times: dict[str, float] = {}
        if startup:
            self._record("startup", process_age_s())

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._record(name, time.perf_counter() - start)

    def _record(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds
        log_phase(name, seconds)

    def log_to(self, uri: str, run_id: str) -> None:
        """The phases so far as ``time/<name>_s`` metrics of the run."""
        from jobs.kit.tracking import Tracker

        Tracker(uri, run_id).log({f"time/{k}_s": v for k, v in self.times.items()}, 0)
