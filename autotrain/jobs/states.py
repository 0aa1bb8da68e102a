"""The states of a job, apart from the job record so that the CLI can name them without
loading pydantic and redis (autotrain.jobs.job re-exports them)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobState", "FINAL_STATES", "ALLOWED"]


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


ALLOWED: dict[JobState, frozenset[JobState]] = {
    # waiting for validate, prepare or configure: a worker takes it into that phase
    JobState.QUEUED: frozenset(
        {
            JobState.VALIDATING,
            JobState.PREPARING,
            JobState.CONFIGURING,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    # hand-on to the next phase's queue, or the reaper re-queueing the phase of a dead worker
    JobState.VALIDATING: frozenset({JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}),
    JobState.PREPARING: frozenset({JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}),
    JobState.CONFIGURING: frozenset(
        {JobState.WAITING_GPU, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}
    ),
    # waiting for (or on) a GPU: taken, parked, held, placed on another GPU's queue (itself
    # again), sent back to configure a leaner variant (queued), or trains
    JobState.WAITING_GPU: frozenset(
        {
            JobState.WAITING_GPU,
            JobState.TRAINING,
            JobState.QUEUED,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    # trained: report; a GPU fault, stall or lost worker re-queues the training (waiting_gpu);
    # out of memory steps down the ladder to configure (queued)
    JobState.TRAINING: frozenset(
        {
            JobState.REPORTING,
            JobState.WAITING_GPU,
            JobState.QUEUED,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    # waiting for or running the report (a lost worker re-queues it: reporting again)
    JobState.REPORTING: frozenset(
        {JobState.REPORTING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset(),  # a success is never reopened: a new run is a new job
    # `train retry` reopens it for all five phases (autotrain.jobs.scripts.REOPEN)
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}
"""The moves of the lifecycle (DESIGN.md: queued -> validating -> preparing -> configuring ->
waiting_gpu -> training -> reporting -> succeeded | failed | cancelled) and the moves back that
re-queues, retries and recovery make: from-state -> the states a job may go to next. The Lua
that moves jobs (MOVE, REOPEN) is given this table and refuses any other change of state."""
