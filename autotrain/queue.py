"""Submitting jobs as Celery chains, re-dispatching parked and orphaned ones, and cancelling.

The chain per dataset is validate | prepare | configure | train | report. A job parked by its
batch's concurrency limit, or re-queued by the reaper, gets a fresh `train | report` chain.
"""

from __future__ import annotations

import logging
import socket
import time

from celery import chain

from autotrain.celery_app import GPU_QUEUE, PREP_QUEUE, app, gpu_queue_name
from autotrain.job import Job, JobState, JobStore
from autotrain.lease import lease_key
from autotrain.settings import Settings
from autotrain.spec import JobSpec

__all__ = [
    "submit_job",
    "training_queue",
    "dispatch_training",
    "cancel_job",
    "reap_expired",
    "queue_depths",
    "current_host",
]

log = logging.getLogger(__name__)


def current_host() -> str:
    """The host name used in worker names and pinned queues (AUTOTRAIN_HOST overrides it)."""
    import os

    return os.environ.get("AUTOTRAIN_HOST") or socket.gethostname()


def training_queue(spec: JobSpec) -> str:
    """`gpu` for any GPU; the first pinned GPU's own queue when the job is pinned."""
    if not spec.gpu_ids:
        return GPU_QUEUE
    return gpu_queue_name(spec.host or current_host(), spec.gpu_ids[0])


def submit_job(store: JobStore, spec: JobSpec) -> Job:
    """Create the job record and enqueue its five-phase chain."""
    if spec.gpu_ids and not spec.host:
        spec = spec.model_copy(update={"host": current_host()})
    job = store.create(spec, queue=training_queue(spec))
    _send(store, job.id, full=True)
    return store.get(job.id)


def dispatch_training(store: JobStore, job_id: str) -> None:
    """Send `train | report` for a job whose earlier phases are done (parked or re-queued)."""
    _send(store, job_id, full=False)


def _send(store: JobStore, job_id: str, *, full: bool) -> None:
    from autotrain import tasks

    queue = store.get(job_id).queue or GPU_QUEUE
    steps = [tasks.train.si(job_id).set(queue=queue), tasks.report.si(job_id).set(queue=PREP_QUEUE)]
    if full:
        steps = [
            tasks.validate.si(job_id).set(queue=PREP_QUEUE),
            tasks.prepare.si(job_id).set(queue=PREP_QUEUE),
            tasks.configure.si(job_id).set(queue=PREP_QUEUE),
            *steps,
        ]
    result = chain(*steps).apply_async()
    ids = []
    node = result
    while node is not None:
        ids.append(node.id)
        node = node.parent
    store.update(job_id, task_ids=ids)


def cancel_job(store: JobStore, job_id: str) -> Job:
    """Flag the job; a task working on it ends it (a running trainer is stopped by its worker).

    Every task checks the flag before it starts, so a cancelled job never starts or restarts.
    A job no task holds right now (queued, parked by its batch, between two phases) is made
    final here and its pending tasks are revoked, so no worker even picks them up. Cancelling a
    final job changes nothing, so cancelling twice is fine.
    """
    job = store.get(job_id)
    if job.is_final:
        return job
    store.update(job.id, cancel_requested=True)
    if not store.redis.exists(lease_key(job.id)):
        store.set_state(
            job.id, JobState.CANCELLED, finished_at=time.time(), error="cancelled by user"
        )
        for task_id in job.task_ids:
            app.control.revoke(task_id)
        _hand_on_batch_slot(store, store.get(job.id))
    return store.get(job.id)


def _hand_on_batch_slot(store: JobStore, job: Job) -> None:
    from autotrain.lease import release_batch_slot

    if job.spec.batch_id:
        nxt = release_batch_slot(store.redis, job.spec.batch_id, job.id)
        if nxt:
            dispatch_training(store, nxt)


def reap_expired(store: JobStore, settings: Settings) -> list[str]:
    """Re-queue jobs whose worker stopped renewing their lease; fail ones out of attempts."""
    reaped: list[str] = []
    busy = {
        JobState.VALIDATING,
        JobState.PREPARING,
        JobState.CONFIGURING,
        JobState.WAITING_GPU,
        JobState.TRAINING,
        JobState.REPORTING,
    }
    for job in store.list(states=busy):
        if job.state == JobState.WAITING_GPU and job.worker is None:
            continue  # parked by its batch: no task owns it
        if store.redis.exists(lease_key(job.id)):
            store.redis.delete(_missing_key(job.id))
            continue
        if time.time() - (job.started_at or job.created_at) < settings.lease_seconds:
            continue  # the first task may not have taken its lease yet
        if not _missing_long_enough(store, job.id, grace=settings.lease_seconds / 2):
            continue
        # Claim the re-queue so that only one reaper acts on it.
        if not store.redis.set(
            lease_key(job.id), "reaper", nx=True, px=int(settings.lease_seconds * 1000)
        ):
            continue
        reaped.append(job.id)
        if job.cancel_requested:
            store.set_state(
                job.id, JobState.CANCELLED, finished_at=time.time(), error="cancelled by user"
            )
            _hand_on_batch_slot(store, job)
        elif job.state == JobState.REPORTING:
            from autotrain import tasks

            log.warning("re-sending the report of %s: worker %s lost its lease", job.id, job.worker)
            tasks.report.si(job.id).apply_async(queue=PREP_QUEUE)
        elif job.state in (JobState.TRAINING, JobState.WAITING_GPU):
            if job.attempt >= settings.max_attempts:
                error = (
                    f"Training was interrupted {job.attempt} times (worker {job.worker} stopped "
                    f"renewing its lease); giving up after max_attempts={settings.max_attempts}."
                )
                store.set_state(job.id, JobState.FAILED, finished_at=time.time(), error=error)
                _hand_on_batch_slot(store, job)
                continue
            log.warning("re-queueing %s: worker %s lost its lease", job.id, job.worker)
            store.set_state(job.id, JobState.QUEUED, worker=None)
            dispatch_training(store, job.id)
        else:
            log.warning(
                "re-queueing %s from validation: worker %s lost its lease", job.id, job.worker
            )
            store.set_state(job.id, JobState.QUEUED, worker=None)
            _send(store, job.id, full=True)
    return reaped


def _missing_key(job_id: str) -> str:
    return f"autotrain:lease-missing:{job_id}"


def _missing_long_enough(store: JobStore, job_id: str, grace: float) -> bool:
    """Whether a lease has been missing for `grace` seconds, over at least two reaper passes.

    Leases expire by the clock even while Redis is down, so right after a Redis restart a live
    worker's lease may be gone until its next renewal (every third of the lease): the grace
    lets it renew before its job would be re-queued and trained twice.
    """
    now = time.time()
    key = _missing_key(job_id)
    if store.redis.set(key, now, nx=True, ex=max(1, int(grace * 6))):
        return False
    return now - float(store.redis.get(key) or now) >= grace


def queue_depths(store: JobStore) -> dict[str, int]:
    """Messages waiting in each autotrain queue of the broker."""
    depths: dict[str, int] = {}
    for key in store.redis.scan_iter(match="gpu*", count=500):
        if store.redis.type(key) == "list":
            depths[key] = store.redis.llen(key)
    depths[PREP_QUEUE] = store.redis.llen(PREP_QUEUE)
    depths.setdefault(GPU_QUEUE, store.redis.llen(GPU_QUEUE))
    return depths
