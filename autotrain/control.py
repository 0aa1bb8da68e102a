"""The control verbs: everything `autotrain train ...` does to a job, callable from Python.

    from autotrain import hold_job, release_job, list_jobs
    for job in list_jobs(state="queued"):
        hold_job(job.id)

Each verb needs nothing called before it: `settings` defaults to `load_settings()` (the
AUTOTRAIN_* environment and the workspace's settings file), and a verb that sends work to the
workers configures the Celery app itself. Errors are typed (autotrain.errors): NoSuchJob,
AmbiguousJobId, JobNotFinal, NameInUse, RedisUnavailable, all AutotrainError. The CLI and the
dashboard call these and nothing below them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotrain.errors import AutotrainError
from autotrain.formatting import parse_duration
from autotrain.jobs.job import Job, JobState
from autotrain.jobs.store import JobStore
from autotrain.settings import Settings, load_settings
from autotrain.transfer import job_storage, refresh_from_store

if TYPE_CHECKING:
    from autotrain.fleet.eta import Forecast
    from autotrain.jobs.order import Where
    from autotrain.jobs.prune import PruneResult

__all__ = [
    "cancel_job",
    "cancel_batch",
    "retry_job",
    "resume_job",
    "retry_batch",
    "hold_job",
    "release_job",
    "move_job",
    "prune_jobs",
    "list_jobs",
    "get_job",
    "show_job",
    "job_logs",
    "job_forecasts",
    "waiting_reasons",
    "start_positions",
    "queue_depth",
    "wait_for_progress",
    "batch_name",
    "JobDetails",
    "BatchRetry",
]


def cancel_job(job_id: str, *, settings: Settings | None = None) -> Job:
    """Cancel a job: a queued one never starts, a running trainer is stopped (SIGTERM, then
    SIGKILL). Cancelling a job that ended changes nothing; the job as it is now is returned."""
    from autotrain.jobs import queue

    return queue.cancel_job(_sending_store(settings), job_id)


def cancel_batch(batch_id: str, *, settings: Settings | None = None) -> list[Job]:
    """Cancel every job of the batch that has not ended; returns those jobs."""
    from autotrain.jobs import queue

    store = _sending_store(settings)
    open_jobs = [j for j in store.list(batch_id=batch_id) if not j.is_final]
    return [queue.cancel_job(store, job.id) for job in open_jobs]


def retry_job(job_id: str, *, from_scratch: bool = False, settings: Settings | None = None) -> Job:
    """Queue a failed or cancelled job again as its next attempt, resuming from its newest saved
    state (or from step 0 with `from_scratch`). JobNotFinal while it is under way."""
    from autotrain.jobs import queue

    return queue.retry_job(_sending_store(settings), job_id, from_scratch=from_scratch)


def resume_job(job_id: str, *, settings: Settings | None = None) -> Job:
    """`retry_job` that continues from the newest saved state (`train resume`)."""
    return retry_job(job_id, settings=settings)


@dataclass
class BatchRetry:
    """What `retry_batch` did: the jobs queued again, and those refused with the reason."""

    retried: list[Job] = field(default_factory=list)
    refused: list[tuple[Job, AutotrainError]] = field(default_factory=list)


def retry_batch(batch_id: str, *, only_failed: bool = False, from_scratch: bool = False,
                settings: Settings | None = None) -> BatchRetry:  # fmt: skip
    """Retry every failed (and, unless `only_failed`, cancelled) job of the batch; one refused
    does not stop the others."""
    from autotrain.jobs import queue

    store = _sending_store(settings)
    wanted = {JobState.FAILED} if only_failed else {JobState.FAILED, JobState.CANCELLED}
    outcome = BatchRetry()
    for job in store.list(states=wanted, batch_id=batch_id):
        try:
            outcome.retried.append(queue.retry_job(store, job.id, from_scratch=from_scratch))
        except AutotrainError as exc:
            outcome.refused.append((job, exc))
    return outcome


def hold_job(job_id: str, *, settings: Settings | None = None) -> Job:
    """Keep a job queued but not startable until `release_job`."""
    from autotrain.jobs import order

    return order.hold_job(_store(settings), job_id)


def release_job(job_id: str, *, settings: Settings | None = None) -> Job:
    """Let a held job start again, at the end of its priority level."""
    from autotrain.jobs import order

    return order.release_job(_sending_store(settings), job_id)


def move_job(job_id: str, where: Where = "top", other_id: str | None = None, *,
             settings: Settings | None = None) -> Job:  # fmt: skip
    """Put a waiting job first (`top`) or last (`bottom`) of its queue, or just `before` the
    waiting job `other_id`."""
    from autotrain.jobs import order

    return order.move_job(_store(settings), job_id, where, other_id)


def prune_jobs(older_than: float | str, *, states: Iterable[JobState | str] | None = None,
               outputs: bool = False, dry_run: bool = False,
               settings: Settings | None = None) -> PruneResult:  # fmt: skip
    """Remove the jobs that ended over `older_than` ago (seconds, or `7d`, `12h`, `30m`, `45s`):
    records, history, events; with `outputs`, their output folders too."""
    from autotrain.jobs import prune
    from autotrain.workspace import Workspace

    settings = settings or load_settings()
    seconds = parse_duration(older_than) if isinstance(older_than, str) else float(older_than)
    wanted = {JobState(s) for s in states or ()} or None
    return prune.prune_jobs(_store(settings), seconds, states=wanted, outputs=outputs,
                            workspace=Workspace(settings.workspace), dry_run=dry_run)  # fmt: skip


def list_jobs(*, state: JobState | str | Iterable[JobState | str] | None = None,
              profile: str | None = None, name: str | None = None, batch: str | None = None,
              limit: int = 50, offset: int = 0, settings: Settings | None = None) -> list[Job]:  # fmt: skip
    """Jobs newest first, one page, filtered as `train list` filters them: by state (one or
    several), profile, a part of the dataset name, and batch."""
    if isinstance(state, str | JobState):
        state = [state]
    wanted = {JobState(s) for s in state or ()} or None

    def where(job: Job) -> bool:
        return name is None or name in job.name

    return _store(settings).page(states=wanted, batch_id=batch, profile=profile, where=where,
                                 offset=offset, limit=limit)  # fmt: skip


def get_job(job_id: str, *, settings: Settings | None = None) -> Job:
    """A job by id or unique id prefix; NoSuchJob or AmbiguousJobId when there is none."""
    return _store(settings).get(job_id)


@dataclass
class JobDetails:
    """Everything `train show` says about one job."""

    job: Job
    history: list[dict[str, Any]]
    waiting_reason: str | None
    forecast: Forecast | None
    needs: list[str]  # its GPU memory estimate and its profile's ladder, a line each
    run: dict[str, Any] | None  # its run manifest as the store holds it (run.json)
    storage: dict[str, Any] | None = None  # what the object store moved, by phase (storage_url)


def show_job(job_id: str, *, settings: Settings | None = None,
             forecasts: dict[str, Forecast] | None = None) -> JobDetails:  # fmt: skip
    """The job, its attempts, why it waits, when it should start and end, what memory it needs.

    `forecasts`: a `job_forecasts()` made moments ago, for callers that show many jobs."""
    from autotrain.fleet.eta import forecast
    from autotrain.fleet.waiting import waiting_reasons as reasons_of

    settings = settings or load_settings()
    store = _store(settings)
    job = store.get(job_id)
    reason = reasons_of(store.redis, [job]).get(job.id)
    expected = None
    if not job.is_final:
        expected = (forecasts if forecasts is not None else forecast(store, settings)).get(job.id)
    return JobDetails(job, store.history(job.id), reason, expected, _needs(job, settings),
                      store.get_data(job.id, "run"), job_storage(job.id, settings=settings))  # fmt: skip


def job_logs(job_id: str, *, follow: bool = False, poll: float = 0.5,
             settings: Settings | None = None) -> Iterator[str]:  # fmt: skip
    """The trainer's raw output (output/<name>/log/trainer.log) in chunks, progress bar redraws
    as new lines; with `follow`, new output until the job ends."""
    settings = settings or load_settings()
    store = _store(settings)
    job = store.get(job_id)
    log_path = settings.workspace / "output" / job.name / "log" / "trainer.log"
    offset = 0
    while True:
        if settings.storage_url:  # trained on another host: its log as the store has it
            refresh_from_store(store.get(job.id), settings)
        if log_path.is_file():
            with open(log_path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
                offset += len(chunk)
            if chunk:
                yield chunk.decode("utf-8", errors="replace").replace("\r", "\n")
        if not follow or store.get(job.id).is_final:
            return
        time.sleep(poll)


def job_forecasts(*, settings: Settings | None = None) -> dict[str, Forecast]:
    """When each job in progress should start and finish, by job id (autotrain.fleet.eta)."""
    from autotrain.fleet.eta import forecast

    settings = settings or load_settings()
    return forecast(_store(settings), settings)


def waiting_reasons(jobs: list[Job], *, settings: Settings | None = None) -> dict[str, str]:
    """{job id: why it waits, with the fix} for the jobs of `jobs` that wait."""
    from autotrain.fleet.waiting import waiting_reasons as reasons_of

    return reasons_of(_store(settings).redis, jobs)


def start_positions(jobs: list[Job], *, settings: Settings | None = None) -> dict[str, int]:
    """{job id: 1 for the next to start, ...} for the jobs of `jobs` waiting in a GPU queue."""
    from autotrain.jobs.order import start_positions as positions_of

    return positions_of(_store(settings), jobs)


def queue_depth(*, settings: Settings | None = None) -> int:
    """Jobs queued or waiting for a GPU: the `Queue:` of the monitor's line."""
    counts = _store(settings).count_active()
    return counts.get(JobState.QUEUED, 0) + counts.get(JobState.WAITING_GPU, 0)


def wait_for_progress(job_id: str, after: str = "$", *, block_ms: int = 1000,
                      settings: Settings | None = None) -> str:  # fmt: skip
    """Block up to `block_ms` for the job's next progress event after stream id `after` ("$":
    from now on); returns the id to wait after next time."""
    store = _store(settings)
    rows = store.read_events(job_id, after=after, block_ms=block_ms, count=100)
    if rows:
        return rows[-1][0]
    return store.last_event_id(job_id) if after == "$" else after


def batch_name(batch_id: str, *, settings: Settings | None = None) -> str:
    """The name the batch was given (`--name`, or its datasets folder's); its id without one."""
    from autotrain.jobs.lease import batch_name as name_of

    return name_of(_store(settings).redis, batch_id) or batch_id


def _needs(job: Job, settings: Settings) -> list[str]:
    """The job's memory estimate and its profile's ladder (none when the profile is gone)."""
    from autotrain.fleet.placement import describe_needs
    from autotrain.profile import profile_for

    try:
        profile = profile_for(job.spec, settings)
    except AutotrainError:
        return []
    return describe_needs(profile, (job.plan or {}).get("config"), job.variant)


def _store(settings: Settings | None) -> JobStore:
    """The job store of the settings' Redis (RedisUnavailable, saying how to start it, if down)."""
    from autotrain.jobs.connection import job_store

    return job_store(settings or load_settings())


def _sending_store(settings: Settings | None) -> JobStore:
    """The job store, with the Celery app pointed at the same Redis: for verbs that send or
    revoke a phase's message."""
    from autotrain.jobs.celery_app import configure_app

    settings = settings or load_settings()
    configure_app(settings)
    return _store(settings)
