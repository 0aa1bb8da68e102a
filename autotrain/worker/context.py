"""What a phase task holds while it runs: the job, the store, the settings and the job's lease.

Shared by the tasks (autotrain.worker.tasks), the recovery decisions and the heartbeat thread,
which all need this worker's settings and store without importing the tasks themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from autotrain.jobs.connection import get_redis, store_for, until_redis_back
from autotrain.jobs.dispatch import dispatch, finish
from autotrain.jobs.job import Job, JobState
from autotrain.jobs.lease import Lease
from autotrain.jobs.store import JobStore
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

    def hand_on(self, phase: str, **fields) -> bool:
        """This phase is done: the queue of `phase` owns the job now (or `held`, when the user
        held it and `phase` is not the report). False when this worker no longer owned it."""
        self.lease.stop()  # from here the move decides; a renewal would only see it gone
        # read again: the user may have held, moved or re-prioritised it meanwhile
        job = until_redis_back(lambda: self.store.get(self.job.id), self.outage, "reading the job")
        return dispatch(self.store, job, phase, expected=self.lease.owner,
                        confirm_seconds=self.settings.lease_seconds, outage_seconds=self.outage,
                        hold=phase != "report", **fields)  # fmt: skip

    def finish(self, state: JobState, **fields) -> bool:
        """End the job in a final state, if this worker still owns it."""
        self.lease.stop()
        return finish(self.store, self.job, state, expected=self.lease.owner,
                      outage_seconds=self.outage, **fields)  # fmt: skip


def outage_seconds(settings: Settings) -> float:
    """How long taking or finishing a phase waits for Redis: well past a lease."""
    return settings.lease_seconds * 10
