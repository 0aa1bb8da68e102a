"""One way to move a job on: `dispatch` hands it to the queue of a phase, `finish` ends it.

The five phases are five tasks; nothing chains them but this module. Every hand-off to a queue
goes through `dispatch`: a phase handing on to the next (autotrain.worker.context), recovery
sending a training elsewhere or back to configure, the reaper re-queueing the phase of a dead
worker, a parked job given its batch slot, a held job released, a final job retried. It builds
the message, moves the owner to the queue under the message's id with a deadline to confirm the
send (or to `held`, when the user held the job), sends it, and confirms. A message whose send was
never confirmed (its sender died, Redis dropped) is sent again by the reaper with the same id
(`resend`); ownership is taken by message id, so the copy that comes second is ignored. A new
job is born owned by the queue (JobStore.create, autotrain.jobs.queue.submit_job) and only
`send`s.

Every final move goes through `finish`: it ends the job if the expected owner still has it,
revokes a message still waiting in a queue, and passes the job's batch slot on.

Both wait out a Redis outage of `outage_seconds` when the caller needs it (a worker finishing a
phase must never turn a finished phase into a new attempt); 0 tries once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from autotrain.jobs.connection import until_redis_back
from autotrain.jobs.job import Job, JobState
from autotrain.jobs.keys import GPU_QUEUE, PREP_ONGOING_QUEUE, PREP_QUEUE, PRIORITIES
from autotrain.jobs.lease import release_batch_slot
from autotrain.jobs.owners import HELD, NOBODY, PARKED, is_worker_owner, queue_owner
from autotrain.jobs.store import JobStore
from autotrain.spec import JobSpec

__all__ = [
    "dispatch",
    "finish",
    "resend",
    "send",
    "dispatch_parked",
    "pass_batch_slot_on",
    "new_message",
    "PHASES",
    "waiting_state",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# phase -> (task name, the state a job shows while it waits for that phase)
PHASES: dict[str, tuple[str, JobState]] = {
    "validate": ("autotrain.validate", JobState.QUEUED),
    "prepare": ("autotrain.prepare", JobState.QUEUED),
    "configure": ("autotrain.configure", JobState.QUEUED),
    "train": ("autotrain.train", JobState.WAITING_GPU),
    "report": ("autotrain.report", JobState.REPORTING),
}


def waiting_state(phase: str) -> JobState:
    return PHASES[phase][1]


def dispatch(
    store: JobStore,
    job: Job,
    phase: str,
    *,
    expected: str,
    confirm_seconds: float,
    outage_seconds: float = 0.0,
    state: JobState | None | Literal["waiting"] = "waiting",
    hold: bool = False,
    reopen: bool = False,
    now: float | None = None,
    lease_expired_before: float | None = None,
    history: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Hand `job` from `expected` to the queue of `phase`; False when `expected` lost it.

    `state`: the job's state from now ("waiting": the one it shows while it waits for `phase`;
    None: unchanged). `hold`: a job the user held goes to `held` instead, out of every queue
    until released. `reopen`: the job is final and a user retries it (JobStore.reopen, which
    takes any final job, so `expected` is NOBODY; raises NameInUse when another job took its
    name). `lease_expired_before`: the reaper's guard (the
    worker's lease must have lapsed). `history`: an entry added once the move is made. `fields`
    are set in the same move (a `queue` routes the training to that queue).
    """
    now = time.time() if now is None else now
    if "queue" in fields:  # placement: the training goes to the queue of a GPU that fits
        job = job.model_copy(update={"queue": fields["queue"]})
    message = message_for(job, phase)
    held = hold and job.held
    owner = HELD if held else queue_owner(message["id"])
    new_state = waiting_state(phase) if state == "waiting" else state
    fields.update(phase=phase, next_task=None if held else message, worker=None,
                  task_ids=[*job.task_ids[-9:], message["id"]])  # fmt: skip
    deadline = None if held else now + confirm_seconds

    def move() -> int:
        if reopen:
            assert new_state is not None and deadline is not None
            store.reopen(job.id, owner=owner, state=new_state, dispatch_until=deadline, **fields)
            return 1
        return store.move(job.id, expected=expected, owner=owner, state=new_state,
                          dispatch_until=deadline, lease_expired_before=lease_expired_before,
                          **fields)  # fmt: skip

    if _patiently(move, outage_seconds, f"handing {job.id} on to {phase}") != 1:
        log.warning("%s: not handed on to %s (no longer %s's)", job.id, phase, expected or "nobody")
        return False
    if history:
        _patiently(lambda: store.add_history(job.id, **history), outage_seconds, "recording")
    if held:
        entry = {"attempt": job.attempt, "event": "held", "phase": phase}
        _patiently(lambda: store.add_history(job.id, **entry), outage_seconds, "recording")
        return True
    _patiently(lambda: send(store, job.id, message), outage_seconds, f"sending {job.id}")
    return True


def finish(
    store: JobStore,
    job: Job,
    state: JobState,
    *,
    expected: str,
    outage_seconds: float = 0.0,
    now: float | None = None,
    lease_expired_before: float | None = None,
    **fields: Any,
) -> bool:
    """End `job` in a final `state` if `expected` still owns it; False when it did not.

    A message of its that waits in a queue is revoked (no worker even picks it up), and its
    batch slot goes to the first job its batch parked.
    """
    finished_at = time.time() if now is None else now
    moved = _patiently(
        lambda: store.move(job.id, expected=expected, owner=NOBODY, state=state,
                           finished_at=finished_at, lease_expired_before=lease_expired_before,
                           **fields),
        outage_seconds, f"finishing {job.id}",
    )  # fmt: skip
    if moved != 1:
        return False
    if job.next_task and not is_worker_owner(expected):
        from autotrain.jobs.celery_app import app  # Celery only where a message is revoked

        app.control.revoke(job.next_task["id"])
    pass_batch_slot_on(store, job, outage_seconds)
    return True


def resend(store: JobStore, job: Job, confirm_seconds: float, now: float | None = None) -> bool:
    """Send a hand-off's message again, same id, when its send was never confirmed; False when
    the queue no longer owns the job through that message (nothing to send)."""
    message = job.next_task
    owner = queue_owner(message["id"]) if message else None
    if owner is None or job.owner != owner:
        return False
    # It stays in the dispatch set until the send is confirmed: a lost send is tried again.
    deadline = (time.time() if now is None else now) + confirm_seconds
    if store.move(job.id, expected=owner, owner=owner, dispatch_until=deadline) != 1:
        return False
    send(store, job.id, message)
    return True


def send(store: JobStore, job_id: str, message: dict[str, Any]) -> None:
    """Publish a phase message (again, if need be: same id) and confirm it was sent."""
    from autotrain.jobs.celery_app import app  # Celery only where a message is sent

    # Flower shows argsrepr: say which job it is, not only its id.
    app.send_task(message["name"], args=[job_id], task_id=message["id"], queue=message["queue"],
                  priority=message.get("priority", PRIORITIES["normal"]),
                  argsrepr=f"({job_id!r},) {message.get('label', '')}".rstrip())  # fmt: skip
    owner = queue_owner(message["id"])
    store.move(job_id, expected=owner, owner=owner)  # confirmed: leaves the dispatch set


def pass_batch_slot_on(store: JobStore, job: Job, outage_seconds: float = 0.0) -> None:
    """A job of a batch ended (or was held): its slot goes to the first parked job of the batch.

    Each step waits out a Redis outage on its own: once released, the slot already belongs to the
    parked job, which must then be sent, not the slot released again.
    """
    batch_id = job.spec.batch_id
    if batch_id:
        following = _patiently(lambda: release_batch_slot(store.redis, batch_id, job.id),
                               outage_seconds, f"releasing the batch slot of {job.id}")  # fmt: skip
        if following:
            _patiently(lambda: dispatch_parked(store, following), outage_seconds,
                       f"sending {following}")  # fmt: skip


def dispatch_parked(store: JobStore, job_id: str, confirm_seconds: float = 30.0) -> bool:
    """Send `train` for a job its batch had parked, now that it has a slot.

    A held job keeps its place out of the batch's way: it goes to `held` and the slot goes on to
    the next parked job. False when nothing was sent.
    """
    job = store.get(job_id)
    if job.held:
        if dispatch(store, job, "train", expected=PARKED, state=None, hold=True,
                    confirm_seconds=confirm_seconds):  # fmt: skip
            pass_batch_slot_on(store, job)
        return False
    return dispatch(store, job, "train", expected=PARKED, confirm_seconds=confirm_seconds)


def new_message(phase: str, train_queue: str, label: str = "", priority: int = 1) -> dict:
    """A phase message: its task, a new id, its queue, its label for Flower, its priority."""
    if phase == "train":
        queue = train_queue
    else:
        queue = PREP_QUEUE if phase == "validate" else PREP_ONGOING_QUEUE
    return {"name": PHASES[phase][0], "id": str(uuid.uuid4()), "queue": queue, "label": label,
            "priority": priority}  # fmt: skip


def message_for(job: Job, phase: str) -> dict:
    """The message of `phase` for `job`: its queue, its label for Flower, its priority."""
    return new_message(phase, job.queue or GPU_QUEUE, label(job.spec), job.priority)


def label(spec: JobSpec) -> str:
    """`dataset=cat profile=FluxLORA`: what a task is about, for Flower."""
    return f"dataset={spec.name} profile={spec.profile}"


def _patiently(action: Callable[[], T], outage_seconds: float, what: str) -> T:
    """`action`, waiting out a Redis outage of `outage_seconds` when that is more than 0."""
    return until_redis_back(action, outage_seconds, what) if outage_seconds > 0 else action()
