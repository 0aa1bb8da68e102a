"""What a phase task holds while it runs: the job, the store, the settings and the job's lease.

Shared by the tasks (autotrain.worker.tasks), the recovery decisions and the heartbeat thread,
which all need this worker's settings and store without importing the tasks themselves.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

from autotrain.jobs.connection import get_redis, store_for, until_redis_back
from autotrain.jobs.job import Job, JobState, JobStore
from autotrain.jobs.lease import Lease
from autotrain.jobs.queue import hand_on, hand_on_batch_slot
from autotrain.settings import Settings, load_settings

__all__ = ["PhaseContext", "worker_settings", "worker_store", "worker_gpu", "outage_seconds"]


@lru_cache(maxsize=1)
def worker_settings() -> Settings:
    return load_settings()


def worker_store() -> JobStore:
    settings = worker_settings()
    return store_for(settings, get_redis(settings))


def worker_gpu() -> int | None:
    """The physical GPU this worker owns (set by `autotrain worker`), None on a CPU worker."""
    value = os.environ.get("AUTOTRAIN_GPU_INDEX")
    return int(value) if value not in (None, "") else None


@dataclass
class PhaseContext:
    job: Job
    store: JobStore
    settings: Settings
    lease: Lease

    @property
    def outage(self) -> float:
        return outage_seconds(self.settings)

    def hand_on(self, phase: str, **fields) -> None:
        """This phase is done: the queue of `phase` owns the job now."""
        self.lease.stop()  # from here the move decides; a renewal would only see it gone
        hand_on(self.store, self.job.id, self.lease.owner, phase, self.settings.lease_seconds,
                self.outage, **fields)  # fmt: skip

    def finish(self, state: JobState, **fields) -> bool:
        """End the job in a final state, if this worker still owns it."""
        self.lease.stop()
        moved = until_redis_back(
            lambda: self.store.move(self.job.id, expected=self.lease.owner, owner="", state=state,
                                    finished_at=time.time(), **fields),
            self.outage, f"finishing {self.job.id}",
        )  # fmt: skip
        if moved == 1:
            hand_on_batch_slot(self.store, self.job, self.outage)
        return moved == 1


def outage_seconds(settings: Settings) -> float:
    """How long taking or finishing a phase waits for Redis: well past a lease."""
    return settings.lease_seconds * 10
