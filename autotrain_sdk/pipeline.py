"""The documented script integration, kept working as written:

    from autotrain_sdk.pipeline import run_pipeline, run_batch_pipeline
    success = run_pipeline(dataset_path=..., profile="FluxLORA", monitor=True, min_images=10)

A thin layer over `autotrain.pipeline` (the real API): the same arguments, plus `monitor`, which
follows the job (or batch) to its end. The result is truthy on success and carries the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotrain import pipeline as _real
from autotrain.jobs.job import Job, JobState
from autotrain.monitor import watch_batch, watch_job
from autotrain.settings import Settings, load_settings

__all__ = ["run_pipeline", "run_batch_pipeline", "PipelineOutcome", "BatchOutcome"]


@dataclass
class PipelineOutcome:
    """One job: truthy once it succeeded, or (not monitored) once it is queued and not failed."""

    job: Job | None
    monitored: bool
    immediate: _real.ImmediateResult | None = None  # `immediate=True`: ran here, no job record

    def __bool__(self) -> bool:
        if self.immediate is not None:
            return self.immediate.returncode == 0
        if self.monitored or self.job.is_final:
            return self.job.state == JobState.SUCCEEDED
        return True


@dataclass
class BatchOutcome:
    """A batch: truthy when every job succeeded (or, not monitored, was queued and none failed)."""

    batch_id: str | None
    jobs: list[Job] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    monitored: bool = False

    def __bool__(self) -> bool:
        if self.rejected or not self.jobs:
            return False
        return all(bool(PipelineOutcome(job, self.monitored)) for job in self.jobs)


def run_pipeline(dataset_path: Path | str, profile: str, *, monitor: bool = False,
                 settings: Settings | None = None, **options: Any) -> PipelineOutcome:  # fmt: skip
    """Queue one dataset (autotrain.pipeline.run_pipeline); with `monitor`, wait for its end."""
    settings = settings or load_settings()
    job = _real.run_pipeline(dataset_path, profile, settings=settings, **options)
    if not isinstance(job, Job):  # immediate=True ran it here
        return PipelineOutcome(None, True, immediate=job)
    if monitor:
        for job, _events in watch_job(job.id, settings=settings):  # noqa: B007, B020
            pass  # the newest record is the one kept
    return PipelineOutcome(job, monitor)


def run_batch_pipeline(profile: str, *, monitor: bool = False, settings: Settings | None = None,
                       **options: Any) -> BatchOutcome:  # fmt: skip
    """Queue a batch (autotrain.pipeline.run_batch_pipeline); with `monitor`, wait for its end."""
    settings = settings or load_settings()
    result = _real.run_batch_pipeline(profile, settings=settings, **options)
    jobs = result.jobs
    if monitor and result.batch_id and jobs:
        for jobs in watch_batch(result.batch_id, settings=settings):  # noqa: B007
            pass  # the newest records are the ones kept
    return BatchOutcome(result.batch_id, jobs, result.rejected, monitor)
