"""The reaper: re-queue the jobs of dead workers, send messages nobody confirmed sending, and
send again those fetched by a worker that never started them (autotrain.jobs.lost_messages).

A job is reaped only when the worker that owns it stopped renewing its lease for longer than the
lease plus a grace, never because its next phase waits in a queue: a waiting job holds no lease.
The cost of a pass follows the expired leases and undelivered messages, not the history.

Leases are deadlines kept in Redis, so an outage makes every lease look expired when Redis comes
back. A live worker renews within a third of a lease of that, so for a lease after Redis starts
(its uptime) the reaper does nothing; beyond that a deadline must be missed by a grace of half a
lease. An outage of any length that ends in a restart re-queues nothing that is still alive.
"""

from __future__ import annotations

import logging
import time

from autotrain.jobs import keys
from autotrain.jobs.dispatch import dispatch, finish, resend
from autotrain.jobs.job import JobState
from autotrain.jobs.lost_messages import resend_lost_messages
from autotrain.jobs.owners import is_worker_owner, queue_owner
from autotrain.jobs.store import JobStore
from autotrain.settings import Settings

__all__ = ["reap", "ReapResult"]

log = logging.getLogger(__name__)


class ReapResult:
    """What one pass did, for logs and tests."""

    def __init__(self) -> None:
        self.requeued: list[str] = []
        self.failed: list[str] = []
        self.cancelled: list[str] = []
        self.resent: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled or self.resent)


def reap(store: JobStore, settings: Settings, now: float | None = None) -> ReapResult:
    """One pass: every job whose worker is gone, every hand-off whose message was not confirmed."""
    now = time.time() if now is None else now
    result = ReapResult()
    if store.redis.info("server").get("uptime_in_seconds", 0) < settings.lease_seconds:
        return result  # just (re)started: live workers have not had their chance to renew
    before = now - settings.lease_seconds / 2
    for job_id in store.expired_leases(before):
        _reap_one(store, settings, job_id, before, now, result)
    for job_id in store.undelivered(now):
        _resend(store, settings, job_id, now, result)
    result.resent += resend_lost_messages(store, settings.lease_seconds, now)
    return result


def _reap_one(store: JobStore, settings: Settings, job_id: str, before: float, now: float,
              result: ReapResult) -> None:  # fmt: skip
    job = store.get(job_id)
    if not is_worker_owner(job.owner):
        store.redis.zrem(keys.LEASES, job_id)  # a stale entry; nothing owns it by lease
        return
    dead = job.worker or job.owner
    guard = {"expected": job.owner, "now": now, "lease_expired_before": before}
    if job.cancel_requested:
        if finish(store, job, JobState.CANCELLED, error="cancelled by user", **guard):
            result.cancelled.append(job_id)
        return
    if job.attempts_exhausted(settings.max_attempts):
        error = (
            f"Interrupted {job.attempt} times (worker {dead} stopped renewing its lease during "
            f"{job.phase}); giving up after max_attempts={settings.max_attempts}."
        )
        if finish(store, job, JobState.FAILED, error=error, **guard):
            result.failed.append(job_id)
        return
    phase = job.phase or "validate"
    # what run.json's attempts_log says of this attempt (autotrain.worker.training)
    lost = {"attempt": job.attempt, "event": "worker lost", "phase": phase, "worker": dead,
            "host": job.host, "gpu": job.gpu, "started_at": job.attempt_started_at,
            "step": job.step, "total": job.total}  # fmt: skip
    if dispatch(store, job, phase, confirm_seconds=settings.lease_seconds, history=lost,
                attempt=job.attempt + 1, **guard):  # fmt: skip
        log.warning("re-queued %s (%s, attempt %d): worker %s stopped renewing its lease",
                    job_id, phase, job.attempt + 1, dead)  # fmt: skip
        result.requeued.append(job_id)


def _resend(store: JobStore, settings: Settings, job_id: str, now: float,
            result: ReapResult) -> None:  # fmt: skip
    job = store.get(job_id)
    if resend(store, job, settings.lease_seconds, now):
        log.warning("sent %s of %s again: its send was never confirmed", job.phase, job_id)
        result.resent.append(job_id)
    elif job.next_task is None or job.owner != queue_owner(job.next_task["id"]):
        store.redis.zrem(keys.DISPATCH, job_id)  # a stale entry: the queue no longer owns it
