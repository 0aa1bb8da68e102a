"""Handing jobs to the broker: submit, the hand-off from one phase to the next, and cancel.

The five phases are five tasks; a finishing phase sends the next one itself (no Celery chain),
through `hand_on`: the job is moved to the queue's ownership under the id of the message about
to be sent, then the message is sent, then the send is confirmed. A message whose send was never
confirmed (its sender died, Redis dropped) is sent again by the reaper with the same id;
ownership is taken by message id, so the copy that comes second is ignored.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

from autotrain.errors import AutotrainError
from autotrain.jobs import keys
from autotrain.jobs.connection import until_redis_back
from autotrain.jobs.job import Job, JobState, JobStore
from autotrain.jobs.keys import (
    GPU_QUEUE,
    PREP_ONGOING_QUEUE,
    PREP_QUEUE,
    PRIORITIES,
    gpu_queue_name,
)
from autotrain.spec import JobSpec

__all__ = [
    "submit_job",
    "training_queue",
    "hand_on",
    "send_next",
    "dispatch_parked",
    "cancel_job",
    "retry_job",
    "queue_depths",
    "current_host",
    "PHASES",
    "waiting_state",
]

log = logging.getLogger(__name__)

# phase -> (task name, the state a job shows while it waits for that phase)
PHASES: dict[str, tuple[str, JobState]] = {
    "validate": ("autotrain.validate", JobState.QUEUED),
    "prepare": ("autotrain.prepare", JobState.QUEUED),
    "configure": ("autotrain.configure", JobState.QUEUED),
    "train": ("autotrain.train", JobState.WAITING_GPU),
    "report": ("autotrain.report", JobState.REPORTING),
}


def current_host() -> str:
    """The host name used in worker names and pinned queues (AUTOTRAIN_HOST overrides it)."""
    return os.environ.get("AUTOTRAIN_HOST") or socket.gethostname()


def training_queue(spec: JobSpec) -> str:
    """`gpu` for any GPU; the first pinned GPU's own queue when the job is pinned."""
    if not spec.gpu_ids:
        return GPU_QUEUE
    return gpu_queue_name(spec.host or current_host(), spec.gpu_ids[0])


def waiting_state(phase: str) -> JobState:
    return PHASES[phase][1]


def submit_job(store: JobStore, spec: JobSpec, confirm_seconds: float = 30.0,
               variant: int = 0) -> Job:  # fmt: skip
    """Create the job record, owned by the queue, and send its first phase.

    `variant` > 0 starts it with a leaner variant of its profile (autotrain.fleet.placement).
    """
    if spec.gpu_ids and not spec.host:
        spec = spec.model_copy(update={"host": current_host()})
    priority = PRIORITIES[spec.priority]
    message = _message("validate", training_queue(spec), _label(spec), priority)
    job = store.create(
        spec,
        dispatch_until=time.time() + confirm_seconds,
        queue=training_queue(spec),
        owner=f"queue:{message['id']}",
        phase="validate",
        next_task=message,
        task_ids=[message["id"]],
        priority=priority,
        variant=variant,
    )
    send_next(store, job.id, message)
    return store.get(job.id)


def hand_on(store: JobStore, job_id: str, owner: str, phase: str, confirm_seconds: float,
            outage_seconds: float, **fields) -> bool:  # fmt: skip
    """Move the job from this worker to the queue of `phase` and send it; False if not ours.

    Survives a Redis outage of up to `outage_seconds`: the worker keeps its lease meanwhile.
    """
    job = until_redis_back(lambda: store.get(job_id), outage_seconds, "reading the job")
    if "queue" in fields:  # placement: the training goes to the queue of a GPU that fits
        job = job.model_copy(update={"queue": fields["queue"]})
    message = _message_for(job, phase)
    held = job.held and phase != "report"  # `train hold`: kept here until released
    moved = until_redis_back(
        lambda: store.move(
            job_id, expected=owner, owner="held" if held else f"queue:{message['id']}",
            state=waiting_state(phase),
            dispatch_until=None if held else time.time() + confirm_seconds,
            phase=phase, next_task=None if held else message, worker=None,
            task_ids=_task_ids(job, message), **fields,
        ),
        outage_seconds, f"handing {job_id} on to {phase}",
    )  # fmt: skip
    if moved != 1:
        log.warning("%s: not handed on to %s (no longer this worker's)", job_id, phase)
        return False
    if held:
        store.add_history(job_id, attempt=job.attempt, event="held", phase=phase)
        return True
    until_redis_back(lambda: send_next(store, job_id, message), outage_seconds, "sending")
    return True


def send_next(store: JobStore, job_id: str, message: dict) -> None:
    """Publish a phase message (again, if need be: same id) and confirm it was sent."""
    from autotrain.jobs.celery_app import app  # Celery only where a message is sent

    # Flower shows argsrepr: say which job it is, not only its id.
    app.send_task(message["name"], args=[job_id], task_id=message["id"], queue=message["queue"],
                  priority=message.get("priority", PRIORITIES["normal"]),
                  argsrepr=f"({job_id!r},) {message.get('label', '')}".rstrip())  # fmt: skip
    owner = f"queue:{message['id']}"
    store.move(job_id, expected=owner, owner=owner)  # confirmed: leaves the dispatch set


def dispatch_parked(store: JobStore, job_id: str, confirm_seconds: float = 30.0) -> bool:
    """Send `train` for a job its batch had parked, now that it has a slot."""
    job = store.get(job_id)
    if job.held:  # keeps its place out of the batch's way: the slot goes to the next one
        from autotrain.jobs.lease import release_batch_slot

        if store.move(job_id, expected="parked", owner="held", phase="train") == 1:
            following = release_batch_slot(store.redis, job.spec.batch_id, job_id)
            if following:
                dispatch_parked(store, following, confirm_seconds)
        return False
    message = _message_for(job, "train")
    moved = store.move(
        job_id, expected="parked", owner=f"queue:{message['id']}", state=JobState.WAITING_GPU,
        dispatch_until=time.time() + confirm_seconds, phase="train", next_task=message,
    )  # fmt: skip
    if moved == 1:
        send_next(store, job_id, message)
    return moved == 1


def _message(phase: str, train_queue: str, label: str = "", priority: int = 1) -> dict:
    task_name = PHASES[phase][0]
    if phase == "train":
        queue = train_queue
    else:
        queue = PREP_QUEUE if phase == "validate" else PREP_ONGOING_QUEUE
    return {"name": task_name, "id": str(uuid.uuid4()), "queue": queue, "label": label,
            "priority": priority}  # fmt: skip


def _message_for(job: Job, phase: str) -> dict:
    """The message of `phase` for `job`: its queue, its label for Flower, its priority."""
    return _message(phase, job.queue or GPU_QUEUE, _label(job.spec), job.priority)


def _task_ids(job: Job, message: dict) -> list[str]:
    """The job's newest Celery task ids with this message's (ten at most; Flower finds them)."""
    return [*job.task_ids[-9:], message["id"]]


def _label(spec: JobSpec) -> str:
    """`dataset=cat profile=FluxLORA`: what a task is about, for Flower."""
    return f"dataset={spec.name} profile={spec.profile}"


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
        if job.is_final or job.owner.startswith("worker:"):
            break  # that worker sees the flag within a second
        moved = store.move(
            job.id, expected=job.owner, owner="", state=JobState.CANCELLED,
            finished_at=time.time(), error="cancelled by user",
        )  # fmt: skip
        if moved == 1:
            if job.next_task:
                from autotrain.jobs.celery_app import app

                app.control.revoke(job.next_task["id"])
            hand_on_batch_slot(store, job)
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
        raise AutotrainError(
            f"Job {job.id} ({job.name}) is {job.state.value}: it is still under way. Cancel it "
            f"first (autotrain train cancel --job {job.id}) to retry it."
        )
    message = _message_for(job, "validate")
    fields: dict = {
        "attempt": job.attempt + 1, "attempt_base": job.attempt, "phase": "validate",
        "next_task": message, "task_ids": _task_ids(job, message), "error": None,
        "finished_at": None, "cancel_requested": False, "worker": None, "waiting_for": None,
        "from_scratch": from_scratch,
    }  # fmt: skip
    if from_scratch:
        fields.update(step=0, loss=None, eta_seconds=None, training_started_at=None,
                      training_finished_at=None)  # fmt: skip
    store.reopen(job.id, owner=f"queue:{message['id']}", state=JobState.QUEUED,
                 dispatch_until=time.time() + confirm_seconds, **fields)  # fmt: skip
    if job.spec.batch_id:
        store.redis.delete(keys.batch_notified(job.spec.batch_id))  # its next end is news again
    store.add_history(job.id, attempt=job.attempt + 1, event="retried",
                      from_scratch=from_scratch)  # fmt: skip
    send_next(store, job.id, message)
    return store.get(job.id)


def hand_on_batch_slot(store: JobStore, job: Job, outage_seconds: float = 0.0) -> None:
    """A job of a batch ended: its slot goes to the first parked job of the batch.

    Each step waits out a Redis outage of up to `outage_seconds` on its own: the slot, once
    released, already belongs to the parked job, which must then be sent, not released again.
    """
    from autotrain.jobs.lease import release_batch_slot

    batch_id = job.spec.batch_id
    if batch_id:
        nxt = until_redis_back(lambda: release_batch_slot(store.redis, batch_id, job.id),
                               outage_seconds, f"releasing the batch slot of {job.id}")  # fmt: skip
        if nxt:
            until_redis_back(lambda: dispatch_parked(store, nxt), outage_seconds, f"sending {nxt}")


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
