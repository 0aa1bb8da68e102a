"""Live progress from the job's Redis stream: the single-job line and the batch view.

Monitors replay a job's stream from the start, so one attached late (or on another host) sees
the whole history, then block on new events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from autotrain.formatting import format_eta, format_loss, format_start
from autotrain.jobs.job import FINAL_STATES, Job, JobState
from autotrain.jobs.store import JobStore
from autotrain.settings import Settings, load_settings

if TYPE_CHECKING:
    from autotrain.fleet.eta import Forecast

__all__ = [
    "progress_bar",
    "job_line",
    "batch_line",
    "batch_end_line",
    "follow_job",
    "follow_batch",
    "watch_job",
    "watch_batch",
    "STATE_ICONS",
]

STATE_ICONS = {
    JobState.QUEUED: "⚪",
    JobState.VALIDATING: "🔵",
    JobState.PREPARING: "🔵",
    JobState.CONFIGURING: "🔵",
    JobState.WAITING_GPU: "🟡",
    JobState.TRAINING: "🟢",
    JobState.REPORTING: "🔵",
    JobState.SUCCEEDED: "✅",
    JobState.FAILED: "❌",
    JobState.CANCELLED: "⚫",
}


def progress_bar(step: int, total: int | None, width: int = 30) -> str:
    """`[============------] 40.0% (200/500)`; an unknown total shows an empty bar."""
    if not total:
        return f"[{'-' * width}] 0.0% ({step}/?)"
    fraction = min(1.0, step / total)
    filled = int(fraction * width)
    return f"[{'=' * filled}{'-' * (width - filled)}] {fraction * 100:.1f}% ({step}/{total})"


def job_line(job: Job, queue_depth: int = 0) -> str:
    """The DESIGN.md single-job line, with the state when the job is not training."""
    line = f"{progress_bar(job.step, job.total)} | ETA: {format_eta(job.eta_seconds)} | Loss: {format_loss(job.loss)} | Queue: {queue_depth}"
    if job.state != JobState.TRAINING:
        line += f" | {job.state.value}"
        if job.state in (JobState.VALIDATING, JobState.PREPARING) and job.files:
            line += f" {job.files[0]}/{job.files[1]} files"
    return line


def batch_line(job: Job, jobs: list[Job], forecast: Forecast | None = None) -> str:
    """The DESIGN.md batch line for one job of a batch; a waiting job says when it starts."""
    waiting = [
        j
        for j in jobs
        if j.state not in FINAL_STATES and j.state not in (JobState.TRAINING, JobState.REPORTING)
    ]
    done = sum(1 for j in jobs if j.state in FINAL_STATES)
    queue = f"Queue: {len(waiting)}" + (f" (next: {waiting[0].name})" if waiting else "")
    overall = f"Progress: {done}/{len(jobs)} ({done / len(jobs) * 100:.1f}%)" if jobs else ""
    icon = STATE_ICONS.get(job.state, "")
    eta = format_eta(job.eta_seconds)
    if job.state != JobState.TRAINING and forecast and forecast.starts_at:
        eta = format_start(forecast.starts_at - time.time())
    return (
        f"{icon} {job.name}: {progress_bar(job.step, job.total, width=20)} | ETA: {eta} "
        f"| Loss: {format_loss(job.loss)} | {queue} | {overall}"
    )


def batch_end_line(jobs: list[Job], forecasts: dict[str, Forecast]) -> str | None:
    """`Batch done in about 00:12:40 (at 04:52)`, from the forecast of its last job."""
    ends = [forecasts[j.id].finishes_at for j in jobs if not j.is_final and j.id in forecasts]
    if not ends or None in ends:
        return None
    end = max(e for e in ends if e is not None)
    return (f"Batch done in about {format_eta(end - time.time())} "
            f"(at {time.strftime('%H:%M', time.localtime(end))})")  # fmt: skip


def follow_job(
    store: JobStore, job_id: str, poll_ms: int = 500
) -> Iterator[tuple[Job, list[dict]]]:
    """Yield (job, new events) from the start of the stream until the job is final."""
    last = "0-0"
    rows = store.read_events(job_id, after=last)
    while True:
        if rows:
            last = rows[-1][0]
        job = store.get(job_id)
        yield job, [event for _, event in rows]
        if job.is_final:
            rows = store.read_events(job_id, after=last)
            if rows:
                yield job, [event for _, event in rows]
            return
        rows = store.read_events(job_id, after=last, block_ms=poll_ms)


def follow_batch(
    store: JobStore, batch_id: str, interval: float = 1.0, stop: Callable[[], bool] | None = None
) -> Iterator[list[Job]]:
    """Yield the batch's jobs every `interval` seconds until all are final."""
    while True:
        jobs = store.list(batch_id=batch_id)
        yield jobs
        if all(j.is_final for j in jobs) or (stop and stop()):
            return
        time.sleep(interval)


def watch_job(job_id: str, *, settings: Settings | None = None) -> Iterator[tuple[Job, list[dict]]]:
    """`follow_job` on the settings' Redis (default: load_settings()): nothing to set up first."""
    from autotrain.jobs.connection import job_store

    yield from follow_job(job_store(settings or load_settings()), job_id)


def watch_batch(batch_id: str, *, settings: Settings | None = None) -> Iterator[list[Job]]:
    """`follow_batch` on the settings' Redis (default: load_settings())."""
    from autotrain.jobs.connection import job_store

    yield from follow_batch(job_store(settings or load_settings()), batch_id)
