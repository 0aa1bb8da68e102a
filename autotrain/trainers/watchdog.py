"""The stall watchdog: a trainer that stops making progress without exiting is ended.

A hung trainer (a deadlocked NCCL collective, a dead filesystem) keeps its worker renewing the
lease forever, so nothing else would ever notice. The budget for the next sign of life comes
from the run's own pace: `factor` times the slowest of its recent step intervals, clamped to
[floor, ceiling]. Before the first step (model loading, latent caching) and after a save or a
sample (which pause the steps) the run gets the larger `startup` allowance instead.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from autotrain.trainers.progress import ProgressEvent

__all__ = ["StallWatchdog"]

# Events after which the trainer is busy elsewhere for a while (saving weights or a state,
# generating samples, starting an epoch with caching): the next step may come late.
_SLOW_AFTER = {"checkpoint", "state", "sample", "epoch"}


@dataclass
class StallWatchdog:
    factor: float = 6.0
    floor: float = 120.0
    ceiling: float = 3600.0
    startup: float = 1800.0
    recent: int = 20
    _intervals: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    _last: float = field(default_factory=time.monotonic)
    _last_step_at: float | None = None
    _allowance: float | None = None  # the startup allowance is running

    def __post_init__(self) -> None:
        self._intervals = deque(maxlen=self.recent)
        self._allowance = self.startup

    def saw(self, event: ProgressEvent, now: float | None = None) -> None:
        """Record an event from the trainer; steps set the pace, slow phases grant an allowance."""
        now = time.monotonic() if now is None else now
        if event.kind == "step":
            if self._last_step_at is not None and self._allowance is None:
                self._intervals.append(now - self._last_step_at)
            self._last_step_at, self._allowance = now, None
        elif event.kind in _SLOW_AFTER:
            self._allowance = self.startup
        else:
            return
        self._last = now

    def budget(self) -> float:
        """Seconds the trainer may stay silent from its last sign of life."""
        if self._allowance is not None or not self._intervals:
            return self._allowance or self.startup
        return min(self.ceiling, max(self.floor, self.factor * max(self._intervals)))

    def stalled_for(self, now: float | None = None) -> float | None:
        """How long the trainer has been silent past its budget's start, once over budget."""
        silent = (time.monotonic() if now is None else now) - self._last
        return silent if silent > self.budget() else None
