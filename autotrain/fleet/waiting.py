"""Why a job waits: the reason `train list`, the monitors and `pipeline run` give for a job that
does not move, so a queue with nobody behind it is never a silent wait.

A job waits in one of three places (autotrain.jobs.scripts): in a queue (no live worker takes that
queue, or every one that does is busy), parked by its batch (`--max-concurrent`), or on a worker
that waits for a GPU another job holds (the training task records that holder as `waiting_for`).
"""

from __future__ import annotations

import redis

from autotrain.fleet.registry import WorkerRecord, live_workers, starting_workers
from autotrain.jobs import keys
from autotrain.jobs.job import Job
from autotrain.jobs.owners import HELD, PARKED, is_queue_owner

__all__ = ["why_waiting", "waiting_reasons", "batch_limits", "NO_WORKER"]

NO_WORKER = (
    "no live worker is connected: start one with `autotrain worker` on a GPU host, "
    "or `autotrain up` here"
)


def waiting_reasons(client: redis.Redis, jobs: list[Job]) -> dict[str, str]:
    """{job id: reason} for the jobs of `jobs` that wait; one read of the workers for all."""
    open_jobs = [j for j in jobs if not j.is_final]
    if not open_jobs:
        return {}
    workers = live_workers(client)
    starting = [] if workers else starting_workers(client)
    limits = batch_limits(client, {j.spec.batch_id for j in open_jobs if j.owner == PARKED})
    reasons = {}
    for job in open_jobs:
        reason = why_waiting(job, workers, limits.get(job.spec.batch_id or ""), starting)
        if reason:
            reasons[job.id] = reason
    return reasons


def why_waiting(job: Job, workers: list[WorkerRecord], batch_limit: int | None = None,
                starting: list[str] = ()) -> str | None:  # fmt: skip
    """The reason `job` makes no progress, in words with the fix; None when it is not waiting.

    `workers` is `registry.live_workers()`; `batch_limit` the `--max-concurrent` of its batch;
    `starting` the workers a host is starting now (`registry.starting_workers`): while someone
    starts workers, the wait says so rather than telling the user to start one.
    """
    if job.is_final:
        return None
    if job.owner == HELD or (job.held and not _queued(job)):
        return f"held: it starts after `autotrain train release --job {job.id}`"
    if job.owner == PARKED:
        limit = f" (--max-concurrent {batch_limit})" if batch_limit else ""
        return f"waits for a slot of its batch{limit}: it trains when one of the batch ends"
    if _queued(job):
        queue = (job.next_task or {}).get("queue")
        if not workers and starting:
            plural = "s" if len(starting) > 1 else ""
            return f"starting {len(starting)} worker{plural} ({', '.join(starting)})"
        if not workers:
            return NO_WORKER
        takers = [w for w in workers if queue in w.queues]
        if queue and not takers:
            return f"no live worker takes queue {queue!r}: start `autotrain worker` where it runs"
        if queue and queue.startswith("gpu") and all(len(w.jobs) >= w.slots for w in takers):
            busy = ", ".join(f"{w.name} (job {w.job})" for w in takers)
            return f"queued on {queue!r}; every worker that takes it is busy: {busy}"
        return None
    return job.waiting_for


def _queued(job: Job) -> bool:
    return is_queue_owner(job.owner)


def batch_limits(client: redis.Redis, batch_ids: set[str | None]) -> dict[str, int]:
    """The `--max-concurrent` of each of these batches, in one round trip."""
    ids = sorted(b for b in batch_ids if b)
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for batch_id in ids:
        pipe.hget(keys.batch(batch_id), "max_concurrent")
    return {b: int(v) for b, v in zip(ids, pipe.execute(), strict=True) if v}
