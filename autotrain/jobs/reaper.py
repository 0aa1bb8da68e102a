"""The reaper: re-queue the jobs of dead workers, and send messages nobody confirmed sending.

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
from autotrain.jobs.job import JobState, JobStore
from autotrain.jobs.owners import NOBODY, is_worker_owner, queue_owner
from autotrain.jobs.queue import (
    _message_for,
    _task_ids,
    hand_on_batch_slot,
    send_next,
    waiting_state,
)
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
    return result


def _reap_one(store: JobStore, settings: Settings, job_id: str, before: float, now: float,
              result: ReapResult) -> None:  # fmt: skip
    job = store.get(job_id)
    if not is_worker_owner(job.owner):
        store.redis.zrem(keys.LEASES, job_id)  # a stale entry; nothing owns it by lease
        return
    dead = job.worker or job.owner
    if job.cancel_requested:
        moved = store.move(
            job_id, expected=job.owner, owner=NOBODY, state=JobState.CANCELLED, finished_at=now,
            error="cancelled by user", lease_expired_before=before,
        )  # fmt: skip
        if moved == 1:
            result.cancelled.append(job_id)
            hand_on_batch_slot(store, job)
        return
    if job.attempts_exhausted(settings.max_attempts):
        error = (
            f"Interrupted {job.attempt} times (worker {dead} stopped renewing its lease during "
            f"{job.phase}); giving up after max_attempts={settings.max_attempts}."
        )
        moved = store.move(
            job_id, expected=job.owner, owner=NOBODY, state=JobState.FAILED, finished_at=now,
            error=error, lease_expired_before=before,
        )  # fmt: skip
        if moved == 1:
            result.failed.append(job_id)
            hand_on_batch_slot(store, job)
        return
    phase = job.phase or "validate"
    message = _message_for(job, phase)
    moved = store.move(
        job_id, expected=job.owner, owner=queue_owner(message["id"]), state=waiting_state(phase),
        dispatch_until=now + settings.lease_seconds, lease_expired_before=before,
        attempt=job.attempt + 1, phase=phase, next_task=message, worker=None,
        task_ids=_task_ids(job, message),
    )  # fmt: skip
    if moved == 1:
        log.warning("re-queueing %s (%s, attempt %d): worker %s stopped renewing its lease",
                    job_id, phase, job.attempt + 1, dead)  # fmt: skip
        result.requeued.append(job_id)
        store.add_history(job_id, attempt=job.attempt, event="worker lost", phase=phase,
                          worker=dead, step=job.step, total=job.total)  # fmt: skip
        send_next(store, job_id, message)


def _resend(store: JobStore, settings: Settings, job_id: str, now: float,
            result: ReapResult) -> None:  # fmt: skip
    job = store.get(job_id)
    message = job.next_task
    owner = queue_owner(message["id"]) if message else None
    if message is None or job.owner != owner:
        store.redis.zrem(keys.DISPATCH, job_id)
        return
    # Keep it in the dispatch set until a worker takes it: a lost send is tried again.
    if (
        store.move(job_id, expected=owner, owner=owner, dispatch_until=now + settings.lease_seconds)
        == 1
    ):
        log.warning("sending %s of %s again: its send was never confirmed", job.phase, job_id)
        result.resent.append(job_id)
        send_next(store, job_id, message)
