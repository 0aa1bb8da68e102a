"""The SDK's side of a store shared by the fleet (`storage_url`): datasets in, outputs out.

    from autotrain.transfer import pull_job
    pulled = pull_job("20261206-101500-ab12cd")   # weights, run.json, samples, logs, here

A host that never ran a job reads it all the same: `pull_job` / `pull_batch` bring its
outputs into this workspace, and `refresh_from_store` keeps a local copy of its logs and samples
current for `train logs` and the dashboard. Without `storage_url` these say so, or do nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotrain.errors import AutotrainError
from autotrain.jobs.connection import job_store
from autotrain.jobs.job import Job
from autotrain.jobs.queue import current_host
from autotrain.settings import Settings, load_settings
from autotrain.spec import JobSpec
from autotrain.storage.dataset_copy import upload_dataset
from autotrain.storage.job_outputs import fetch_job_outputs
from autotrain.storage.layout import job_prefix
from autotrain.storage.objects import Traffic, store_at
from autotrain.trainers.outputs import claim_output_dir, output_owner
from autotrain.worker import phases
from autotrain.worker.phases import PhaseProgress
from autotrain.worker.stored import TRAFFIC_DATA
from autotrain.workspace import Workspace

__all__ = [
    "Pulled",
    "pull_job",
    "pull_batch",
    "job_storage",
    "refresh_from_store",
    "into_object_store",
]


@dataclass
class Pulled:
    """One job's outputs brought here: where they are and what it cost."""

    job_id: str
    name: str
    output_dir: Path
    traffic: Traffic
    files: list[str] = field(default_factory=list)


def pull_job(job_id: str, *, with_states: bool = False,
             settings: Settings | None = None) -> Pulled:  # fmt: skip
    """Bring the job's outputs from the store into this workspace's `output/<name>/` (an other
    job's files there move to `runs/`, as for a new run). Saved states only `with_states`."""
    settings = settings or load_settings()
    object_store = _object_store(settings)
    job = job_store(settings).get(job_id)
    if not object_store.list(job_prefix(job.id)):
        raise AutotrainError(
            f"The store {settings.storage_url} holds nothing of job {job.id} ({job.name}): it "
            "has not trained yet, or it ran before storage_url was set (its files are then on "
            f"the host that trained it{f', {job.host}' if job.host else ''})."
        )
    output_dir = _claim(settings, job)
    before = _listing(output_dir)
    traffic = fetch_job_outputs(object_store, job.id, output_dir,
                                states="all" if with_states else "none")  # fmt: skip
    after = _listing(output_dir)
    changed = sorted(rel for rel, sig in after.items() if before.get(rel) != sig)
    return Pulled(job.id, job.name, output_dir, traffic, changed)


def pull_batch(batch_id: str, *, with_states: bool = False,
               settings: Settings | None = None) -> list[Pulled | tuple[str, str]]:  # fmt: skip
    """`pull_job` for every job of the batch that has outputs; (job id, why not) for the rest."""
    settings = settings or load_settings()
    results: list[Pulled | tuple[str, str]] = []
    for job in job_store(settings).list(batch_id=batch_id):
        try:
            results.append(pull_job(job.id, with_states=with_states, settings=settings))
        except AutotrainError as exc:
            results.append((job.id, str(exc)))
    return results


def job_storage(job_id: str, *, settings: Settings | None = None) -> dict[str, Any] | None:
    """What the store moved for the job, by phase and in all (None when it used no store)."""
    return job_store(settings or load_settings()).get_data(job_id, TRAFFIC_DATA)


_refreshed: dict[str, float] = {}


def refresh_from_store(job: Job, settings: Settings, *, every: float = 5.0) -> None:
    """Where a job trains (or trained) on another host, bring its logs, samples and run.json
    from the store into this workspace (at most every `every` seconds per job); a no-op
    without a store or on the host that trains it (its own files are the newest)."""
    if not settings.storage_url or (job.host == current_host() and not job.is_final):
        return
    if time.monotonic() - _refreshed.get(job.id, -every) < every:
        return
    _refreshed[job.id] = time.monotonic()
    workspace = Workspace(settings.workspace)
    if output_owner(workspace.output_dir(job.name)) not in (None, job.id) and not job.is_final:
        return  # this host's folder is another job's, still in use: not ours to move aside
    output_dir = _claim(settings, job)
    fetch_job_outputs(store_at(settings.storage_url), job.id, output_dir,
                      skip=lambda rel: rel.startswith("model/") and rel.count("/") == 1)  # fmt: skip


def into_object_store(
    spec: JobSpec, settings: Settings, progress: PhaseProgress | None
) -> dict[str, dict] | None:
    """With `storage_url`: validate and stage the dataset here, where it is, and upload the
    staged copy (content-addressed: what the store holds is not sent again). Returns the job's
    first data (the report, the staging and where it is in the store); None without a store.

    The job's own validate and prepare phases then only pass it on, and every other phase
    downloads the copy from the store (autotrain.worker.stored).
    """
    if not settings.storage_url:
        return None
    object_store = store_at(settings.storage_url)
    object_store.check()  # a wrong endpoint, key or bucket is said before any work
    report = phases.validate_phase(spec, settings, progress)
    staged = phases.prepare_phase(spec, report, settings, progress=progress)
    upload = upload_dataset(
        object_store,
        Workspace(settings.workspace),
        spec.name,
        progress=(lambda done, total: progress("upload", done, total)) if progress else None,
    )
    traffic = upload.traffic.as_dict()
    return {
        "report": report.model_dump(mode="json"),
        "stage": staged.model_dump(mode="json") | {"stored": upload.key, "uploaded": traffic},
        TRAFFIC_DATA: {"phases": {"submit": traffic}, "total": traffic},
    }


def _object_store(settings: Settings):
    if not settings.storage_url:
        raise AutotrainError(
            "No store is configured: set storage_url (AUTOTRAIN_STORAGE_URL=s3://bucket/prefix) "
            "to the store the fleet shares. Without one, outputs are in the shared workspace."
        )
    return store_at(settings.storage_url)


def _claim(settings: Settings, job: Job) -> Path:
    workspace = Workspace(settings.workspace)
    claim_output_dir(workspace, job.name, job.id, job.profile)
    return workspace.output_dir(job.name)


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and "runs" not in p.relative_to(folder).parts}  # fmt: skip
