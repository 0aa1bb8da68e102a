"""What each dashboard page shows, as plain data built from the SDK (the same facts as the CLI).

Pages render these dicts on the server; the live channel (autotrain.dashboard.server) sends the
same dicts again as they change, and the page's script patches the numbers in place.
"""

from __future__ import annotations

import time
from typing import Any

from autotrain.dashboard import files
from autotrain.fleet.eta import Forecast, forecast
from autotrain.formatting import format_age, format_eta
from autotrain.jobs.job import Job, JobState
from autotrain.jobs.store import JobStore
from autotrain.settings import Settings
from autotrain.worker.recorder import read_loss_history
from autotrain.workspace import Workspace

__all__ = ["job_row", "jobs_page", "job_page", "batch_page", "fleet_page", "FILTER_STATES"]

FILTER_STATES = [s.value for s in JobState]


# The queue's replay reads every job in progress: live pages share one, a few seconds old at most.
_FORECAST_SECONDS = 3.0
_forecasts: dict[int, tuple[float, dict[str, Forecast]]] = {}


def recent_forecast(store: JobStore, settings: Settings) -> dict[str, Forecast]:
    """autotrain.fleet.eta.forecast, recomputed at most every few seconds per store."""
    made, value = _forecasts.get(id(store), (0.0, {}))
    if time.monotonic() - made > _FORECAST_SECONDS:
        value = forecast(store, settings)
        _forecasts[id(store)] = (time.monotonic(), value)
    return value


def job_row(job: Job, expected: Forecast | None = None, now: float | None = None) -> dict:
    """One line of the jobs table: what `train list` shows."""
    now = now or time.time()
    if job.state == JobState.TRAINING:
        eta = format_eta(job.eta_seconds)
    elif expected and expected.starts_at:
        eta = f"starts in {format_eta(expected.starts_at - now)}"
    else:
        eta = "-"
    return {
        "id": job.id, "name": job.name, "profile": job.profile, "state": job.state.value,
        "batch": job.spec.batch_id or "", "where": f"{job.host}/{job.gpu or '-'}" if job.host else "-",
        "step": job.step, "total": job.total or 0,
        "percent": round(100 * (job.fraction or 0), 1), "loss": _loss(job.loss), "eta": eta,
        "age": format_age(now - job.created_at), "final": job.is_final,
    }  # fmt: skip


def jobs_page(store: JobStore, settings: Settings, state: str = "", batch: str = "",
              profile: str = "", limit: int = 100) -> dict:  # fmt: skip
    """Every job (newest first), filtered like `train list --state/--batch/--profile`."""
    states = {JobState(state)} if state in FILTER_STATES else None
    jobs = store.page(states=states, batch_id=batch or None, limit=limit,
                      where=(lambda j: j.profile == profile) if profile else None)  # fmt: skip
    expected = recent_forecast(store, settings) if any(not j.is_final for j in jobs) else {}
    now = time.time()
    return {"jobs": [job_row(j, expected.get(j.id), now) for j in jobs],
            "filters": {"state": state, "batch": batch, "profile": profile}}  # fmt: skip


def job_page(store: JobStore, settings: Settings, job_id: str) -> dict:
    """Everything about one job: its row, loss curve, samples, log tail, manifest, attempts."""
    job = store.get(job_id)
    workspace = Workspace(settings.workspace)
    expected = None if job.is_final else recent_forecast(store, settings).get(job.id)
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
        "manifest": files.manifest_of(workspace, job, store.get_data(job.id, "run")) or "",
        "history": [{**e, "at": _clock(e.get("at"))} for e in store.history(job.id)],
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


def batch_page(store: JobStore, settings: Settings, batch_id: str) -> dict:
    """A batch's jobs with one overall bar, and the contact sheet: per prompt, the newest sample
    of every job side by side."""
    jobs = list(reversed(store.list(batch_id=batch_id)))  # oldest first: the order submitted
    workspace = Workspace(settings.workspace)
    expected = recent_forecast(store, settings) if any(not j.is_final for j in jobs) else {}
    steps = sum(j.step for j in jobs)
    total = sum(j.total or 0 for j in jobs)
    sheet: dict[int, dict[str, Any]] = {}
    for job in jobs:
        for group in gallery(workspace, job):
            row = sheet.setdefault(group["index"], {"prompt": group["prompt"], "cells": {}})
            row["cells"][job.id] = group["samples"][0]
    name = store.redis.hget(f"autotrain:batch:{batch_id}", "name") or batch_id
    return {
        "batch": batch_id, "name": name,
        "jobs": [job_row(j, expected.get(j.id)) for j in jobs],
        "done": sum(1 for j in jobs if j.is_final), "count": len(jobs),
        "percent": round(100 * steps / total, 1) if total else 0.0,
        "sheet": [sheet[i] for i in sorted(sheet)],
    }  # fmt: skip


def fleet_page(store: JobStore, settings: Settings) -> dict:
    """Hosts, workers and GPUs with their memory and the jobs they train; queue depths."""
    from autotrain.fleet.registry import live_workers
    from autotrain.jobs import keys
    from autotrain.jobs.queue import queue_depths

    workers = []
    for w in live_workers(store.redis):
        failures = (
            int(store.redis.get(keys.gpu_failures(w["host"], w["gpu"])) or 0) if w.get("gpu") else 0
        )
        workers.append({
            "name": w["name"], "host": w.get("host", ""),
            "gpu": w.get("gpu") or ("cpu" if keys.GPU_QUEUE in w.get("queues", []) else "-"),
            "model": w.get("gpu_name") or ("-" if not w.get("gpu") else "GPU"),
            "memory": _memory(w.get("memory_total"), w.get("memory_free")),
            "utilisation": _percent(w.get("utilization")), "temperature": _celsius(w.get("temperature")),
            "jobs": w.get("jobs", []), "queues": ", ".join(w.get("queues", [])),
            "failures": failures, "suspect": failures >= settings.suspect_gpu_failures,
        })  # fmt: skip
    flower = f"http://{settings.flower_address}:{settings.flower_port}"
    return {"workers": workers, "queues": queue_depths(store), "flower": flower}


def _memory(total: int | None, free: int | None) -> str:
    if not total:
        return "-"
    gib = 1 << 30
    return (
        f"{free / gib:.1f} of {total / gib:.0f} GiB free"
        if free is not None
        else f"{total / gib:.0f} GiB"
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _celsius(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} °C"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _clock(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""
