"""Submitting jobs, and the user's verbs on a whole job: cancel and retry; queue depths.

How a job moves from phase to phase (and ends) is autotrain.jobs.dispatch: the single place a
job is handed to a queue or made final.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from autotrain.errors import AutotrainError, JobNotFinal
from autotrain.jobs import keys
from autotrain.jobs.dispatch import dispatch, finish, label, new_message, send
from autotrain.jobs.job import Job, JobState
from autotrain.jobs.keys import (
    GPU_QUEUE,
    PREP_ONGOING_QUEUE,
    PREP_QUEUE,
    PRIORITIES,
    gpu_queue_name,
)
from autotrain.jobs.owners import NOBODY, is_worker_owner, queue_owner
from autotrain.jobs.store import JobStore
from autotrain.spec import JobSpec

__all__ = [
    "submit_job",
    "cancel_job",
    "retry_job",
    "queue_depths",
    "training_queue",
    "current_host",
]

log = logging.getLogger(__name__)


def current_host() -> str:
    """The host name used in worker names and pinned queues (AUTOTRAIN_HOST overrides it)."""
    return os.environ.get("AUTOTRAIN_HOST") or socket.gethostname()


def training_queue(spec: JobSpec) -> str:
    """`gpu` for any GPU; the first pinned GPU's own queue when the job is pinned."""
    if not spec.gpu_ids:
        return GPU_QUEUE
    return gpu_queue_name(spec.host or current_host(), spec.gpu_ids[0])


def submit_job(store: JobStore, spec: JobSpec, confirm_seconds: float = 30.0,
               variant: int = 0, data: dict[str, dict] | None = None) -> Job:  # fmt: skip
    """Create the job record, owned by the queue, and send its first phase.

    `variant` > 0 starts it with a leaner variant of its profile (autotrain.fleet.placement).
    `data` is stored on the job before its first message goes (what was done at submit).
    """
    if spec.gpu_ids and not spec.host:
        spec = spec.model_copy(update={"host": current_host()})
    priority = PRIORITIES[spec.priority]
    message = new_message("validate", training_queue(spec), label(spec), priority)
    job = store.create(  # born owned by the queue: the reaper sends it if `send` never confirms
        spec,
        dispatch_until=time.time() + confirm_seconds,
        queue=training_queue(spec),
        owner=queue_owner(message["id"]),
        phase="validate",
        next_task=message,
        task_ids=[message["id"]],
        priority=priority,
        variant=variant,
        stored_dataset=((data or {}).get("stage") or {}).get("stored"),
    )
    for what, value in (data or {}).items():
        store.put_data(job.id, what, value)
    send(store, job.id, message)
    return store.get(job.id)


def cancel_job(store: JobStore, job_id: str) -> Job:
    """Flag the job; a worker working on it ends it (a running trainer is stopped by its worker).

    A job no worker holds (waiting in a queue, parked by its batch) is made final here and its
    pending message revoked, so no worker even picks it up; every task also checks ownership
    and the flag before it starts, so a cancelled job never starts or restarts. Cancelling a
    final job changes nothing, so cancelling twice is fine.
    """
    job = store.get(job_id)
    if job.is_final:
        return job
    store.update(job.id, cancel_requested=True)
    for _ in range(3):
        job = store.get(job.id)
        if job.is_final or is_worker_owner(job.owner):
            break  # that worker sees the flag within a second
        if finish(store, job, JobState.CANCELLED, expected=job.owner, error="cancelled by user"):
            break
    return store.get(job.id)


def retry_job(store: JobStore, job_id: str, *, from_scratch: bool = False,
              confirm_seconds: float = 30.0) -> Job:  # fmt: skip
    """Queue a failed or cancelled job again, as its next attempt.

    It runs all five phases again: validation re-checks the dataset, staging reuses the staged
    copy that still matches, and training resumes from the newest complete saved state of the
    job (autotrain.trainers.resume), or starts over with `from_scratch` (the earlier files are moved to
    output/<name>/runs/, not deleted).
    """
    job = store.get(job_id)
    if job.state == JobState.SUCCEEDED:
        raise AutotrainError(
            f"Job {job.id} ({job.name}) succeeded: there is nothing to retry. To train it again, "
            f"queue a new run: autotrain pipeline run --dataset-path {job.spec.dataset_path} "
            f"--profile {job.profile}"
        )
    if not job.is_final:
        raise JobNotFinal(
            f"Job {job.id} ({job.name}) is {job.state.value}: it is still under way. Cancel it "
            f"first (autotrain train cancel --job {job.id}) to retry it."
        )
    fields: dict = {
        "attempt": job.attempt + 1, "attempt_base": job.attempt, "error": None,
        "finished_at": None, "cancel_requested": False, "waiting_for": None,
        "from_scratch": from_scratch,
    }  # fmt: skip
    if from_scratch:
        fields.update(step=0, loss=None, eta_seconds=None, training_started_at=None,
                      training_finished_at=None)  # fmt: skip
    dispatch(store, job, "validate", expected=NOBODY, reopen=True, state=JobState.QUEUED,
             confirm_seconds=confirm_seconds,
             history={"attempt": job.attempt + 1, "event": "retried", "from_scratch": from_scratch},
             **fields)  # fmt: skip
    if job.spec.batch_id:
        store.redis.delete(keys.batch_notified(job.spec.batch_id))  # its next end is news again
    return store.get(job.id)


def queue_depths(store: JobStore) -> dict[str, int]:
    """Messages waiting in each queue some worker consumes (registered in `autotrain:queues`)."""
    names = store.redis.smembers(keys.QUEUES) | {PREP_QUEUE, PREP_ONGOING_QUEUE, GPU_QUEUE}
    pipe = store.redis.pipeline(transaction=False)
    ordered = sorted(names)
    for name in ordered:
        for key in keys.broker_lists(name):  # one list per priority level
            pipe.llen(key)
    lengths = iter(pipe.execute())
    levels = len(keys.PRIORITIES)
    return {name: sum(next(lengths) for _ in range(levels)) for name in ordered}
