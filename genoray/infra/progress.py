"""Progress lines for long jobs whose stderr is not a terminal (batch schedulers, pipelines, logs).

On a terminal Ray's own progress bars show the job; elsewhere they are off, and a job would
run silently for hours. :class:`Progress` prints one line every ``every_s`` seconds with the
units and records done, the rate and an ETA (from the fraction of units done).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

EVERY_S = 30.0  # GENORAY_PROGRESS_S overrides it
QUIET_ENV = "GENORAY_QUIET"  # set (to 1) by ``genoray -q``: no progress lines, notes or summaries on stderr


def _duration(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Count finished units and their records; print a line at most every ``every_s`` seconds
    (and only when ``stream`` is not a terminal, unless ``force``)."""

    def __init__(self, what: str, total_units: int, every_s: float | None = None, stream: TextIO | None = None,
                 force: bool = False):
        self.what, self.total = what, total_units
        self.every_s = float(os.environ.get("GENORAY_PROGRESS_S", EVERY_S)) if every_s is None else every_s
        self.stream = stream or sys.stderr
        self.enabled = force or not (getattr(self.stream, "isatty", lambda: False)() or os.environ.get(QUIET_ENV))
        self.units = self.records = 0
        self.t0 = self.last = time.monotonic()

    def update(self, records: int, units: int = 1) -> None:
        """Count ``units`` more finished units of ``records`` records; print a line when due."""
        self.units += units
        self.records += records
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.every_s or self.units == self.total):
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        """The progress line: units, records, rate, elapsed time and ETA."""
        elapsed = max((now or time.monotonic()) - self.t0, 1e-9)
        rate = self.records / elapsed
        eta_s = _duration(elapsed * (self.total - self.units) / self.units) if self.units else "?"
        return (f"{self.what}: {self.units}/{self.total} units, {self.records:,} records, {rate:,.0f} records/s, "
                f"elapsed {_duration(elapsed)}, ETA {eta_s}")
