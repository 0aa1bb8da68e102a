"""The order in which waiting jobs start, and the commands that change it: move, hold, release.

A waiting job is a message in a broker queue, and the queue is kombu's: one Redis list per
priority level (autotrain.jobs.keys.broker_lists), served level 0 first, each list FIFO (kombu
LPUSHes and BRPOPs, so the next message is the rightmost). Reading those lists gives the true
start order; moving a message between them, atomically in Lua against the workers' BRPOP, changes
it. The job record follows: its `priority` is the level its message is in (and its spec's
`priority` names that level), so every later phase keeps the new place.
"""

from __future__ import annotations

import json
from typing import Literal

from autotrain.errors import AutotrainError
from autotrain.jobs import keys, scripts
from autotrain.jobs.dispatch import dispatch
from autotrain.jobs.job import Job, JobState
from autotrain.jobs.owners import HELD, is_queue_owner
from autotrain.jobs.store import JobStore

__all__ = ["start_order", "start_positions", "move_job", "hold_job", "release_job", "Where"]

Where = Literal["top", "bottom", "before"]


def start_order(store: JobStore, queues: list[str]) -> list[str]:
    """Task ids waiting in `queues`, in the order a worker taking from all of them starts them:
    priority first, then the queues in the given order, then first in, first out."""
    pipe = store.redis.pipeline(transaction=False)
    for level in range(len(keys.PRIORITIES)):
        for queue in queues:
            pipe.lrange(keys.broker_lists(queue)[level], 0, -1)
    order = []
    for items in pipe.execute():
        for item in reversed(items):  # the rightmost is taken first
            try:
                order.append(json.loads(item)["headers"]["id"])
            except (ValueError, KeyError, TypeError):
                continue
    return order


def start_positions(store: JobStore, jobs: list[Job], queues: list[str] | None = None,
                    ) -> dict[str, int]:  # fmt: skip
    """{job id: its place in the start order, 1 = next} for the jobs of `jobs` waiting in a GPU
    queue to train. Every task waiting in `queues` (default: the queues these jobs wait in)
    counts, shown or not, so 1 is truly next."""
    waiting = {j.next_task["id"]: j.id for j in jobs
               if is_queue_owner(j.owner) and j.next_task and j.phase == "train"}  # fmt: skip
    if queues is None:
        queues = sorted({j.next_task["queue"] for j in jobs if j.next_task
                         and j.next_task["id"] in waiting})  # fmt: skip
    if not waiting or not queues:
        return {}
    order = start_order(store, queues)
    return {waiting[t]: place for place, t in enumerate(order, start=1) if t in waiting}


def move_job(store: JobStore, job_id: str, where: Where, other_id: str | None = None) -> Job:
    """Put a waiting job first or last of its queue, or just before another waiting job."""
    job = _waiting(store, job_id, "moved")
    other = _waiting(store, other_id, "used as a reference") if where == "before" else None
    if other and other.next_task["queue"] != job.next_task["queue"]:
        raise AutotrainError(
            f"Jobs {job.id} and {other.id} wait in different queues "
            f"({job.next_task['queue']}, {other.next_task['queue']}): one cannot start before the other."
        )
    outcome = _reorder(store, job, where, other.next_task["id"] if other else "")
    if outcome[0] == 0:
        raise AutotrainError(f"Job {job.id} ({job.name}) is no longer waiting: a worker took it.")
    if outcome[0] == -1:
        raise AutotrainError(
            f"Job {other.id} ({other.name}) is no longer waiting: a worker took it."
        )
    level = sorted(keys.PRIORITIES.values())[int(outcome[0]) - 1]
    # the spec's priority names the same level: one priority, whichever a reader looks at
    name = next(n for n, value in keys.PRIORITIES.items() if value == level)
    spec = job.spec.model_copy(update={"priority": name})
    store.update(job.id, priority=level, spec=spec, next_task={**job.next_task, "priority": level})
    return store.get(job.id)


def hold_job(store: JobStore, job_id: str) -> Job:
    """Keep a job queued but not startable until `release_job`.

    A job waiting in a queue leaves it at once; one in validation, staging or configuration
    (on a worker now) is held when that phase hands it on, and one parked by its batch when its
    slot comes (the slot goes on to the next job of the batch).
    """
    job = store.get(job_id)
    if job.is_final or job.state in (JobState.TRAINING, JobState.REPORTING):
        raise AutotrainError(
            f"Job {job.id} ({job.name}) is {job.state.value}: only a job that has not started "
            f"training can be held. To stop it: autotrain train cancel --job {job.id}"
        )
    store.update(job.id, held=True)
    waiting = is_queue_owner(job.owner) and job.next_task
    if waiting and _reorder(store, job, "remove")[0] != 0:
        moved = store.move(job.id, expected=job.owner, owner=HELD)
        if moved == 1:
            store.add_history(job.id, attempt=job.attempt, event="held", phase=job.phase)
    return store.get(job.id)


def release_job(store: JobStore, job_id: str, confirm_seconds: float = 30.0) -> Job:
    """Let a held job start again, at the end of its priority level."""
    job = store.get(job_id)
    if not job.held:
        raise AutotrainError(f"Job {job.id} ({job.name}) is not held.")
    store.update(job.id, held=False)
    if job.owner == HELD:
        released = {"attempt": job.attempt, "event": "released", "phase": job.phase}
        dispatch(store, job, job.phase or "validate", expected=HELD, state=None,
                 confirm_seconds=confirm_seconds, history=released)  # fmt: skip
    return store.get(job.id)


def _waiting(store: JobStore, job_id: str, verb: str) -> Job:
    job = store.get(job_id)
    if not (is_queue_owner(job.owner) and job.next_task):
        how = "held" if job.owner == HELD else job.state.value
        raise AutotrainError(
            f"Job {job.id} ({job.name}) is {how}, not waiting in a queue, so it cannot be {verb}."
        )
    return job


def _reorder(store: JobStore, job: Job, mode: str, other_task: str = "") -> list:
    lists = keys.broker_lists(job.next_task["queue"])
    levels = [str(p) for p in sorted(keys.PRIORITIES.values())]
    return scripts.REORDER(store.redis, lists, [job.next_task["id"], mode, other_task, *levels])
