"""Who owns a job: the owner values of the job record, spelled once.

A job (`Job.owner`) is owned by exactly one of:

| owner             | meaning                                         | who moves it on                  |
|-------------------|-------------------------------------------------|----------------------------------|
| "queue:<message>" | the message for its next phase is in a queue    | the worker taking that message;  |
|                   | (or due to be confirmed sent, else re-sent)     | the reaper re-sends it           |
| "worker:<token>"  | a live worker runs a phase, renewing its lease  | that worker; the reaper once its |
|                   |                                                 | lease has lapsed                 |
| "parked"          | its batch is at `--max-concurrent`              | the batch job that frees a slot  |
| "held"            | `train hold`: out of every queue                | `train release`, `train cancel`  |
| "" (nobody)       | final: succeeded, failed or cancelled           | `train retry` (REOPEN)           |

Every change of owner goes through one guarded script (autotrain.jobs.scripts.MOVE).
"""

from __future__ import annotations

__all__ = [
    "NOBODY",
    "PARKED",
    "HELD",
    "queue_owner",
    "worker_owner",
    "is_queue_owner",
    "is_worker_owner",
]

NOBODY = ""
"""A final job's owner: nothing will run it again unless a user retries it."""

PARKED = "parked"
"""Waiting for a slot of its batch (autotrain.jobs.lease batch slots)."""

HELD = "held"
"""Kept out of every queue by `train hold` until `train release` (see `Job.held`)."""

_QUEUE = "queue:"
_WORKER = "worker:"


def queue_owner(message_id: str) -> str:
    """The queue owns the job through the message of this id (a re-sent copy has the same id)."""
    return f"{_QUEUE}{message_id}"


def worker_owner(token: str) -> str:
    """A worker owns the job under this token (its name and a per-job nonce)."""
    return f"{_WORKER}{token}"


def is_queue_owner(owner: str) -> bool:
    return owner.startswith(_QUEUE)


def is_worker_owner(owner: str) -> bool:
    return owner.startswith(_WORKER)
