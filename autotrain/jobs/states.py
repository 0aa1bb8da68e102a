"""The states of a job, apart from the job record so that the CLI can name them without
loading pydantic and redis (autotrain.jobs.job re-exports them)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobState", "FINAL_STATES"]


class JobState(StrEnum):
    QUEUED = "queued"
    VALIDATING = "validating"
    PREPARING = "preparing"
    CONFIGURING = "configuring"
    WAITING_GPU = "waiting_gpu"
    TRAINING = "training"
    REPORTING = "reporting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
