"""Peaks sampled in a background thread while a benchmark's block runs."""

from __future__ import annotations

import threading
from collections.abc import Callable


class PeakSampler:
    """The largest value ``sample()`` returned while the ``with`` block ran, sampling
    once at the start and then every ``interval_s``; None when no sample succeeded
    (``sample`` returns None for a lost sample)."""

    def __init__(self, sample: Callable[[], float | None], interval_s: float) -> None:
        self.peak: float | None = None
        self._sample, self._interval = sample, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            value = self._sample()
            if value is not None:
                self.peak = value if self.peak is None else max(self.peak, value)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
