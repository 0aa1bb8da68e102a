"""The phases' side of a fleet that shares an object store instead of a folder (`storage_url`).

With no store configured every function here does nothing and the phases work on the shared
workspace as always. With one, each host's workspace is its cache: a phase first brings what it
needs from the store (the staged dataset, the job's newest complete state, its logs), training
writes through to it, and the report puts run.json and the sheet there before the job ends.
What each phase moved, and how long it took, is added up on the job (run.json, `train show`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autotrain.errors import AutotrainError
from autotrain.jobs.store import JobStore
from autotrain.settings import Settings
from autotrain.storage.dataset_copy import fetch_dataset
from autotrain.storage.job_outputs import fetch_job_outputs
from autotrain.storage.layout import job_key
from autotrain.storage.objects import ObjectStore, Traffic, store_at
from autotrain.storage.write_through import WriteThrough, upload_outputs
from autotrain.trainers.contact_sheet import SHEET_NAME
from autotrain.trainers.outputs import claim_output_dir
from autotrain.trainers.plan import TrainPlan
from autotrain.trainers.resume import state_is_complete
from autotrain.worker.context import PhaseContext
from autotrain.workspace import Workspace

__all__ = [
    "object_store",
    "stored_dataset",
    "bring_dataset",
    "local_plan",
    "bring_for_training",
    "writing_through",
    "bring_for_report",
    "upload_report",
    "record_traffic",
    "TRAFFIC_DATA",
]

log = logging.getLogger("autotrain.pipeline")
TRAFFIC_DATA = "storage"  # the job's data entry that adds up the store's traffic by phase
REPORT_FILES = ["run.json", SHEET_NAME, "log/loss.png"]


def object_store(settings: Settings) -> ObjectStore | None:
    return store_at(settings.storage_url) if settings.storage_url else None


def stored_dataset(ctx: PhaseContext) -> str | None:
    """The key of the job's dataset listing in the store, when it was submitted through one."""
    return ctx.job.stored_dataset


def _job_store(ctx: PhaseContext) -> ObjectStore | None:
    """The store the job's files go through; None for a job of a shared workspace."""
    if ctx.job.stored_dataset is None:
        return None
    store = object_store(ctx.settings)
    if store is None:
        raise AutotrainError(
            f"Job {ctx.job.id} ({ctx.job.name}) was submitted through an object store, and "
            f"this worker has no storage_url: set AUTOTRAIN_STORAGE_URL (and the AWS variables) "
            "on this host as on the one that submitted it."
        )
    return store


def bring_dataset(ctx: PhaseContext, phase: str) -> None:
    """This host's `input/<name>/` made the job's staged dataset (downloaded once per host)."""
    store, key = _job_store(ctx), ctx.job.stored_dataset
    if store is None or key is None:
        return
    traffic = fetch_dataset(store, Workspace(ctx.settings.workspace), ctx.job.name, key)
    if traffic.downloaded_files:
        log.info("%s %s: dataset downloaded (%s)", ctx.job.name, ctx.job.id, traffic.summary())
    record_traffic(ctx.store, ctx.job.id, phase, traffic)


def local_plan(ctx: PhaseContext) -> TrainPlan:
    """The job's plan with this host's paths. On a shared workspace that is the plan phase 3
    stored; through a store, it is rendered again here (same steps, this host's folders and
    model files), keeping what the trainer check at phase 3 found."""
    stored = TrainPlan.model_validate(ctx.job.plan)
    if _job_store(ctx) is None:
        return stored
    from autotrain.datasets.validate import ValidationReport
    from autotrain.profile import profile_for
    from autotrain.trainers.configure import render_plan, write_plan

    report = ValidationReport.model_validate(ctx.store.get_data(ctx.job.id, "report"))
    _claim(ctx)  # first: claiming moves an earlier run's files aside, the plan's among them
    profile = profile_for(ctx.job.spec, ctx.settings)
    plan = render_plan(ctx.job.spec, profile, ctx.settings, report, ctx.job.variant)
    plan.trainer_check_deferred = stored.trainer_check_deferred
    plan.trainer_warnings = stored.trainer_warnings
    write_plan(plan)
    return plan


def bring_for_training(ctx: PhaseContext, plan: TrainPlan, since: float) -> None:
    """The job's output folder here made this job's, with what a resume needs from the store:
    the newest complete states since `since`, the resume record, the logs and samples so far,
    and final weights an attempt finished (not the intermediate checkpoints)."""
    store = _job_store(ctx)
    if store is None:
        return
    output_dir = _claim(ctx)
    final = f"model/{plan.output_name}.safetensors"

    def skip(rel: str) -> bool:
        return (
            rel.startswith("model/") and rel.count("/") == 1 and _is_weights(rel) and rel != final
        )

    traffic = fetch_job_outputs(store, ctx.job.id, output_dir, states="newest", since=since,
                                skip=skip)  # fmt: skip
    if traffic.downloaded_files:
        log.info(
            "%s %s: outputs so far downloaded (%s)", ctx.job.name, ctx.job.id, traffic.summary()
        )
    record_traffic(ctx.store, ctx.job.id, "train", traffic)


@contextmanager
def writing_through(ctx: PhaseContext, plan: TrainPlan) -> Iterator[None]:
    """Upload what the trainer writes while it runs, and all of it once it stopped."""
    store = _job_store(ctx)
    if store is None:
        yield
        return
    watcher = WriteThrough(store, ctx.job.id, plan.model_dir.parent, state_is_complete).start()
    try:
        yield
    finally:
        traffic = watcher.stop()
        record_traffic(ctx.store, ctx.job.id, "train", traffic)


def bring_for_report(ctx: PhaseContext) -> None:
    """Everything the job wrote but its states, for run.json, the sheet and the loss curve."""
    store = _job_store(ctx)
    if store is None:
        return
    output_dir = _claim(ctx)
    traffic = fetch_job_outputs(store, ctx.job.id, output_dir)
    record_traffic(ctx.store, ctx.job.id, "report", traffic)


def upload_report(ctx: PhaseContext, plan: TrainPlan) -> None:
    """run.json, the sheet and the loss curve into the store, before the job may succeed."""
    store = _job_store(ctx)
    if store is not None:
        upload_outputs(store, ctx.job.id, plan.model_dir.parent, REPORT_FILES)


def result_in_store(ctx: PhaseContext, plan: TrainPlan, result: dict) -> dict:
    """For a job of the store: its weights, run.json and sheet as store URLs (the report
    host's paths mean nothing elsewhere), and the command that brings them; else nothing."""
    if _job_store(ctx) is None:
        return {}
    output_dir, base = plan.model_dir.parent, f"{ctx.settings.storage_url.rstrip('/')}/"
    moved = {}
    for field in ("weights", "run_json", "samples_sheet"):
        path = Path(result.get(field) or "/").resolve()
        if path.is_relative_to(output_dir.resolve()):
            rel = path.relative_to(output_dir.resolve()).as_posix()
            moved[field] = base + job_key(ctx.job.id, rel)
    return moved | {"pull": f"autotrain pull --job {ctx.job.id}"}


def record_traffic(store: JobStore, job_id: str, phase: str, traffic: Traffic) -> dict:
    """Add `traffic` to the job's store traffic for `phase` and in total; returns the whole."""
    data = store.get_data(job_id, TRAFFIC_DATA) or {"phases": {}}
    phases = data.setdefault("phases", {})
    phases[phase] = Traffic.from_dict(phases.get(phase)).add(traffic).as_dict()
    total = Traffic()
    for each in phases.values():
        total.add(Traffic.from_dict(each))
    data["total"] = total.as_dict()
    store.put_data(job_id, TRAFFIC_DATA, data)
    return data


def _claim(ctx: PhaseContext) -> Path:
    workspace = Workspace(ctx.settings.workspace)
    claim_output_dir(workspace, ctx.job.name, ctx.job.id, ctx.job.profile)
    return workspace.output_dir(ctx.job.name)


def _is_weights(rel: str) -> bool:
    return rel.endswith((".safetensors", ".ckpt", ".pt"))
