"""How a job and a worker read to people: one presentation for the CLI, the dashboard and the
`--json` output, so `train list`, the jobs page and `train show --json` never disagree.

Times, durations and ETA wording come from autotrain.formatting; the forecast is the queue ETA
(autotrain.fleet.eta.Forecast) that autotrain.control.job_forecasts returns.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from autotrain.formatting import format_age, format_eta, format_loss, format_start, iso_time
from autotrain.jobs.job import Job
from autotrain.jobs.states import JobState

if TYPE_CHECKING:
    from autotrain.fleet.eta import Forecast
    from autotrain.status import WorkerStatus

__all__ = [
    "job_row",
    "public_record",
    "eta_text",
    "forecast_text",
    "worker_row",
    "worker_record",
]


def job_row(job: Job, expected: Forecast | None = None, now: float | None = None,
            position: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One line of a jobs table (`train list`, the dashboard's jobs and batch pages).

    `expected` is the job's forecast, `position` its place in the start order (1 = next)."""
    now = now or time.time()
    return {
        "id": job.id, "name": job.name, "profile": job.profile, "state": job.state.value,
        "batch": job.spec.batch_id or "", "next": str(position) if position else "-",
        "where": f"{job.host}/{job.gpu or '-'}" if job.host else "-",
        "step": job.step, "total": job.total or 0,
        "percent": round(100 * (job.fraction or 0), 1),
        "progress": f"{(job.fraction or 0) * 100:.0f}% ({job.step}/{job.total})" if job.total else "-",
        "loss": format_loss(job.loss), "eta": eta_text(job, expected, now),
        "age": format_age(now - job.created_at), "final": job.is_final,
    }  # fmt: skip


def eta_text(job: Job, expected: Forecast | None, now: float) -> str:
    """The ETA cell: a training job's time left; when a waiting one starts; `-` when unknown."""
    if job.state == JobState.TRAINING:
        return format_eta(job.eta_seconds)
    if expected is None or expected.starts_at is None:
        return "-"
    return format_start(expected.starts_at - now)


# The fields `--json` prints: flat, stable, documented in the README; times in ISO 8601 (UTC).
_TIMES = ("created_at", "started_at", "training_started_at", "training_finished_at", "finished_at")


def public_record(job: Job, history: list[dict] | None = None, waiting_reason: str | None = None,
                  forecast: Forecast | None = None) -> dict[str, Any]:  # fmt: skip
    """A job as `train list --json` and `train show --json` print it."""
    result = job.result or {}
    record: dict[str, Any] = {
        "id": job.id, "name": job.name, "profile": job.profile,
        "dataset_path": str(job.spec.dataset_path), "batch_id": job.spec.batch_id,
        "state": job.state.value, "attempt": job.attempt, "variant": job.variant,
        "priority": job.priority, "held": job.held, "step": job.step, "total": job.total,
        "loss": job.loss, "eta_seconds": job.eta_seconds, "host": job.host, "gpu": job.gpu,
        "worker": job.worker, "train_worker": job.train_worker, "queue": job.queue,
        "error": job.error, "waiting_reason": waiting_reason,
        "weights": result.get("weights"), "run_json": result.get("run_json"),
        "samples": job.samples,
    }  # fmt: skip
    record.update({name: iso_time(getattr(job, name)) for name in _TIMES})
    if forecast is not None:
        record["forecast"] = {"starts_at": iso_time(forecast.starts_at),
                              "finishes_at": iso_time(forecast.finishes_at),
                              "worker": forecast.gpu, "why": forecast.why}  # fmt: skip
    if history is not None:
        record["history"] = [{**e, "at": iso_time(e.get("at"))} for e in history]
    return record


def forecast_text(expected: Forecast, now: float | None = None) -> str:
    """`starts in 00:03:10 (04:12:30), done in 00:09:40 (04:19:00): <why>` (`train show`)."""
    now = now or time.time()

    def when(at: float | None) -> str:
        return "unknown" if at is None else (
            f"{format_eta(at - now)} ({time.strftime('%H:%M:%S', time.localtime(at))})")  # fmt: skip

    starts = "" if expected.starts_at and expected.starts_at <= now else (
        f"starts in {when(expected.starts_at)}, ")  # fmt: skip
    return f"{starts}done in {when(expected.finishes_at)}: {expected.why}"


def worker_row(status: WorkerStatus) -> dict[str, Any]:
    """One worker of the fleet, in words (`autotrain status`, the dashboard's fleet page)."""
    w = status.record
    return {
        "name": w.name, "host": w.host,
        "gpu": w.gpu or ("cpu" if w.takes_training else "-"),
        "model": w.gpu_name or ("GPU" if w.is_gpu else "-"),
        "memory": _memory(w.memory_total, w.memory_free),
        "utilisation": _unit(w.utilization, "%"), "temperature": _unit(w.temperature, " °C"),
        "jobs": w.jobs, "job": w.job or "-", "queues": ", ".join(w.queues),
        "failures": status.failures, "suspect": status.suspect,
    }  # fmt: skip


def worker_record(status: WorkerStatus) -> dict[str, Any]:
    """One worker as `autotrain status --json` prints it (README: fields)."""
    w = status.record
    return {"name": w.name, "host": w.host, "gpu": w.gpu, "queues": w.queues, "job": w.job,
            "gpu_failures": status.failures, "suspect": status.suspect}  # fmt: skip


def _memory(total: int | None, free: int | None) -> str:
    if not total:
        return "-"
    gib = 1 << 30
    if free is None:
        return f"{total / gib:.0f} GiB"
    return f"{free / gib:.1f} of {total / gib:.0f} GiB free"


def _unit(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.0f}{unit}"
