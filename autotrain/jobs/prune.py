"""Keep the job store bounded: remove finished jobs older than a cutoff.

A finished job's events and bulky data already expire by themselves (`retention_days`); its
record, history and index entries stay until pruned here. Outputs on disk are kept unless asked:
they are what the user trained.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from autotrain.jobs import keys
from autotrain.jobs.job import FINAL_STATES, Job, JobState
from autotrain.jobs.store import JobStore
from autotrain.trainers.outputs import RUNS_DIR, output_owner
from autotrain.workspace import Workspace

__all__ = ["prune_jobs", "PruneResult"]


@dataclass
class PruneResult:
    removed: list[Job] = field(default_factory=list)
    outputs_removed: list[Path] = field(default_factory=list)


def prune_jobs(store: JobStore, older_than_seconds: float, *,
               states: set[JobState] | None = None, outputs: bool = False,
               workspace: Workspace | None = None, dry_run: bool = False) -> PruneResult:  # fmt: skip
    """Remove the finished jobs (of `states`) that ended more than `older_than_seconds` ago.

    With `outputs`, also each job's files in `workspace`: `output/<name>/` when that job still
    owns it, or the archive `output/<name>/runs/<job id>/` of an earlier run.
    """
    wanted = (states or set(FINAL_STATES)) & FINAL_STATES
    cutoff = time.time() - older_than_seconds
    result = PruneResult()
    for job in store.list(states=wanted):
        if (job.finished_at or job.created_at) > cutoff:
            continue
        if outputs and workspace is not None:
            result.outputs_removed += _job_outputs(workspace, job)
        result.removed.append(job)
    if dry_run:
        return result
    for path in result.outputs_removed:
        shutil.rmtree(path, ignore_errors=True)
    for job in result.removed:
        _delete(store, job)
    return result


def _job_outputs(workspace: Workspace, job: Job) -> list[Path]:
    output_dir = workspace.output_dir(job.name)
    if output_owner(output_dir) == job.id:
        return [output_dir]
    archive = output_dir / RUNS_DIR / job.id
    return [archive] if archive.is_dir() else []


def _delete(store: JobStore, job: Job) -> None:
    pipe = store.redis.pipeline(transaction=True)
    pipe.delete(keys.job(job.id), keys.job_events(job.id), keys.job_history(job.id),
                *(keys.job_data(job.id, what) for what in keys.JOB_DATA))  # fmt: skip
    pipe.delete(*(f"celery-task-meta-{task_id}" for task_id in job.task_ids or ["-"]))
    pipe.zrem(keys.JOBS, job.id)
    pipe.zrem(keys.ACTIVE, job.id)
    pipe.zrem(keys.profile_jobs(job.profile), job.id)
    pipe.zrem(keys.state_jobs(str(job.state)), job.id)
    if job.spec.batch_id:
        pipe.zrem(keys.batch_jobs(job.spec.batch_id), job.id)
    pipe.execute()
