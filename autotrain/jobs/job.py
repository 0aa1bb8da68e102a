"""Jobs: the unit users see, stored in Redis as the source of truth for state and progress.

Celery task states are an implementation detail; every command reads the job record instead.
This module is the record (`Job`) and its hash form; autotrain.jobs.store reads and writes it,
autotrain.jobs.dispatch moves it from owner to owner (autotrain.jobs.owners)."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from autotrain.jobs import owners
from autotrain.jobs.states import FINAL_STATES, JobState
from autotrain.spec import JobSpec

__all__ = [
    "Job",
    "JobState",
    "FINAL_STATES",
    "encode_fields",
    "decode_fields",
]


class Job(BaseModel):
    """A job record as users see it in `train list`, `train monitor` and the SDK."""

    id: str
    spec: JobSpec
    state: JobState = JobState.QUEUED
    attempt: int = 1  # every re-queue is a new attempt
    host: str | None = None
    gpu: str | None = None
    worker: str | None = None  # the worker of the current (or last) phase
    train_worker: str | None = None  # the worker that ran (or runs) the trainer
    step: int = 0
    total: int | None = None
    loss: float | None = None
    rate: float | None = None
    eta_seconds: float | None = None
    epoch: int | None = None
    epochs: int | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    training_started_at: float | None = None
    training_finished_at: float | None = None
    attempt_started_at: float | None = None  # this attempt's training start (the queue ETA)
    finished_at: float | None = None
    error: str | None = None
    cancel_requested: bool = False
    queue: str | None = None
    # Who may move it now (autotrain.jobs.owners): the queue ("queue:<message id>"), a worker
    # ("worker:<token>"), its batch ("parked"), `train hold` ("held") or nobody ("", final).
    owner: str = owners.NOBODY
    phase: str | None = None  # the phase its owner runs or waits for
    next_task: dict[str, Any] | None = None  # the message for that phase: name, id, queue
    prep_host: str | None = None  # where phases 1-3 and 5 ran (host/gpu say where it trained)
    # Its staged dataset's listing in the object store (storage_url), when it was submitted
    # through one: validated and staged where it was submitted, downloaded by every other host.
    stored_dataset: str | None = None
    task_ids: list[str] = Field(default_factory=list)
    plan: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    samples: list[str] = Field(default_factory=list)
    files: list[int] | None = None  # [done, total] of the phase checking or copying files
    waiting_for: str | None = None  # what its worker waits for (a GPU another job holds)
    attempt_base: int = 0  # attempts before the user's last retry (max_attempts counts from it)
    priority: int = 1  # its messages' broker priority, 0 first (autotrain.jobs.keys.PRIORITIES)
    # `train hold`, the user's wish: set by hold, cleared by release. The job leaves the queue
    # (owner "held") at once when it waits in one, else at its next hand-off; so held with
    # another owner means "on a worker or parked, held when that ends". Owner "held" means it
    # is out of every queue now, and always comes with the flag (release clears the flag first,
    # then hands the job to the queue).
    held: bool = False
    variant: int = 0  # the profile's leaner variant in use (its ladder, 1-based; 0 = as is)
    avoid_gpus: list[str] = Field(default_factory=list)  # "host:index" where it hit NCCL errors
    from_scratch: bool = False  # the retry asked to start training over

    def queued_seconds(self, now: float | None = None) -> float:
        """From submission to the start of training (or to its end, when it never trained)."""
        began = self.training_started_at or self.finished_at or now or time.time()
        return began - self.created_at

    def training_seconds(self, now: float | None = None) -> float | None:
        """From the start of training to its end (or now); None when it never trained."""
        if not self.training_started_at:
            return None
        ended = self.training_finished_at or self.finished_at or now or time.time()
        return ended - self.training_started_at

    def attempts_exhausted(self, max_attempts: int) -> bool:
        """Whether automatic retries are used up (counted from the user's last retry)."""
        return self.attempt - self.attempt_base >= max_attempts

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def profile(self) -> str:
        return self.spec.profile

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.step / self.total)


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Fields as the job hash stores them: each value JSON-encoded."""
    return {name: json.dumps(_jsonable(value)) for name, value in fields.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, StrEnum | Path):
        return str(value)
    return value


def decode_fields(raw: dict[str, str]) -> dict[str, Any]:
    """The job hash's fields, decoded (Job.model_validate takes them)."""
    return {name: json.loads(value) for name, value in raw.items()}
