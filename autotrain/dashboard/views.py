"""What each dashboard page shows, as plain data built from the SDK (the same facts as the CLI).

Pages render these dicts on the server; the live channel (autotrain.dashboard.server) sends the
same dicts again as they change, and the page's script patches the numbers in place.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from autotrain import control
from autotrain.dashboard import files
from autotrain.jobs.job import Job, JobState
from autotrain.records import job_row, worker_row
from autotrain.settings import Settings
from autotrain.status import fleet_status
from autotrain.transfer import refresh_from_store
from autotrain.worker.recorder import read_loss_history
from autotrain.workspace import Workspace

if TYPE_CHECKING:
    from autotrain.fleet.eta import Forecast

__all__ = ["jobs_page", "job_page", "batch_page", "fleet_page", "FILTER_STATES"]

FILTER_STATES = [s.value for s in JobState]


# The queue's replay reads every job in progress: live pages share one, a few seconds old at most.
_FORECAST_SECONDS = 3.0
_forecasts: dict[str, tuple[float, dict[str, Forecast]]] = {}


def recent_forecast(settings: Settings) -> dict[str, Forecast]:
    """autotrain.control.job_forecasts, recomputed at most every few seconds per workspace."""
    made, value = _forecasts.get(str(settings.workspace), (0.0, {}))
    if time.monotonic() - made > _FORECAST_SECONDS:
        value = control.job_forecasts(settings=settings)
        _forecasts[str(settings.workspace)] = (time.monotonic(), value)
    return value


def _forecasts_for(jobs: list[Job], settings: Settings) -> dict[str, Forecast]:
    return recent_forecast(settings) if any(not j.is_final for j in jobs) else {}


def jobs_page(settings: Settings, state: str = "", batch: str = "", profile: str = "",
              limit: int = 100) -> dict:  # fmt: skip
    """Every job (newest first), filtered like `train list --state/--batch/--profile`."""
    jobs = control.list_jobs(state=state if state in FILTER_STATES else None, batch=batch or None,
                             profile=profile or None, limit=limit, settings=settings)  # fmt: skip
    expected = _forecasts_for(jobs, settings)
    now = time.time()
    return {"jobs": [job_row(j, expected.get(j.id), now) for j in jobs],
            "filters": {"state": state, "batch": batch, "profile": profile}}  # fmt: skip


def job_page(settings: Settings, job_id: str) -> dict:
    """Everything about one job: its row, loss curve, samples, log tail, manifest, attempts."""
    details = control.show_job(job_id, settings=settings, forecasts=recent_forecast(settings))
    job, expected = details.job, details.forecast
    refresh_from_store(job, settings)  # its log and samples, where another host trains it
    workspace = Workspace(settings.workspace)
    lines, live, offset = files.log_tail(workspace, job)
    log_dir = files.job_dir(workspace, job) / "log"
    return {
        "job": job_row(job, expected),
        "forecast": expected.why if expected else "",
        "error": job.error or "",
        "waiting_for": job.waiting_for or "",
        "points": read_loss_history(log_dir),
        "gallery": gallery(workspace, job),
        "log": lines + ([live] if live else []),
        "log_offset": offset,
        "manifest": files.manifest_of(workspace, job, details.run) or "",
        "history": [{**e, "at": _clock(e.get("at"))} for e in details.history],
        "held": job.held,
    }


def gallery(workspace: Workspace, job: Job) -> list[dict]:
    """Samples grouped by prompt, each group newest step first (click one to enlarge)."""
    prompts = files.prompts_of(workspace, job)
    groups: dict[int, list[dict]] = {}
    for sample in files.samples_of(workspace, job):
        groups.setdefault(sample.prompt, []).append({"url": sample.url, "step": sample.step})
    return [{"prompt": prompts[i] if i < len(prompts) else f"prompt {i + 1}", "index": i,
             "samples": samples} for i, samples in sorted(groups.items())]  # fmt: skip


def batch_page(settings: Settings, batch_id: str) -> dict:
    """A batch's jobs with one overall bar, and the contact sheet: per prompt, the newest sample
    of every job side by side."""
    jobs = control.list_jobs(batch=batch_id, limit=10**9, settings=settings)
    jobs.reverse()  # oldest first: the order submitted
    workspace = Workspace(settings.workspace)
    expected = _forecasts_for(jobs, settings)
    steps = sum(j.step for j in jobs)
    total = sum(j.total or 0 for j in jobs)
    sheet: dict[int, dict[str, Any]] = {}
    for job in jobs:
        for group in gallery(workspace, job):
            row = sheet.setdefault(group["index"], {"prompt": group["prompt"], "cells": {}})
            row["cells"][job.id] = group["samples"][0]
    name = control.batch_name(batch_id, settings=settings)
    return {
        "batch": batch_id, "name": name,
        "jobs": [job_row(j, expected.get(j.id)) for j in jobs],
        "done": sum(1 for j in jobs if j.is_final), "count": len(jobs),
        "percent": round(100 * steps / total, 1) if total else 0.0,
        "sheet": [sheet[i] for i in sorted(sheet)],
    }  # fmt: skip


def fleet_page(settings: Settings) -> dict:
    """Hosts, workers and GPUs with their memory and the jobs they train; queue depths."""
    status = fleet_status(settings=settings)
    if not status.redis.running:
        from autotrain.errors import RedisUnavailable

        raise RedisUnavailable(f"Redis is down: {status.redis.url}")
    flower = f"http://{settings.flower_address}:{settings.flower_port}"
    return {"workers": [worker_row(w) for w in status.workers], "queues": status.queues,
            "flower": flower}  # fmt: skip


def _clock(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""
